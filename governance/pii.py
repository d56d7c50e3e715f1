"""De-identification on the platform: stored PII reports, redaction and pseudonymisation as new memory
versions, a publisher's explicit acceptance of a finding, and the publish gate.

Scanning loads spaCy, Presidio and the NER model, so it runs in the Celery worker, never in the web
process: a scan request stores a `pending` report and queues `governance.tasks.pii_scan_run`; the
worker fills the report in. The gate reuses completed scans of the same texts and queues the rest.

The algorithms live in `governance.deid` (plain Python); this module gives them tenancy, storage,
versioning and audit. A memory finding's id names the memory, the hash of the text it was found in, its
span and its type, so an acceptance stays valid exactly as long as that text does.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet

from accounts.models import Namespace
from core.errors import ApplicationError, Conflict, NotFound
from governance import deid
from governance.audit import audit_record
from governance.deid import ner as deid_ner
from governance.deid.report import REPORT_VERSION
from governance.models import PiiAcceptance, PiiScanReport, PseudonymKey
from governance.policy import Action, Context, Subject, SubjectKind, authorize
from vault.models import MemCube, MemoryKind, MemoryState
from vault.services import memory_rewrite

SCAN_MODES = tuple(m.value for m in deid.Mode)
RESOLVE_ACTIONS = ("accept", "redact", "pseudonymize")
MAX_TEXTS = 1000
MAX_MEMORIES = 10_000
MAX_TOTAL_CHARS = 5_000_000
GATE_FINDINGS_SHOWN = 20
REPORTS_REUSED = 200  # the newest completed reports of a namespace the gate looks through


def blocking_threshold() -> float:
    return float(getattr(settings, "MEMHUB_PII_BLOCKING_THRESHOLD", deid.DEFAULT_BLOCKING_THRESHOLD))


def _namespace(*, actor: Subject, key: str, action: Action) -> Namespace:
    ns = Namespace.objects.filter(key=key).select_related("organization", "owner_user").first()
    if ns is None:
        raise NotFound(f"Namespace '{key}' not found.")
    authorize(subject=actor, action=action, namespace=ns)
    return ns


def _unit(name: str, value: float | None, default: float) -> float:
    if value is None:
        return default
    if not 0.0 <= value <= 1.0:
        raise ApplicationError(f"'{name}' must be between 0 and 1.")
    return float(value)


def _memory_finding_id(subject: dict[str, Any], f: dict[str, Any]) -> str:
    return f"{subject['memory_id']}:{subject['content_sha256'][:16]}:{f['start']}:{f['end']}:{f['type']}"


def _pseudonymizer(namespace: Namespace) -> tuple[PseudonymKey, deid.Pseudonymizer]:
    row = PseudonymKey.objects.select_for_update().filter(namespace=namespace).first()
    if row is None:
        row = PseudonymKey.objects.create(namespace=namespace, key_hex=secrets.token_hex(32))
    return row, deid.Pseudonymizer(bytes.fromhex(row.key_hex), row.state or None)


def _memories(*, namespace: Namespace, memory_ids: Sequence[Any] | None, lock: bool) -> list[MemCube]:
    qs = MemCube.objects.filter(namespace=namespace, kind=MemoryKind.PLAINTEXT).exclude(
        state=MemoryState.DELETED
    )
    if lock:
        qs = qs.select_for_update(of=("self",))
    if memory_ids is not None:
        wanted = list(dict.fromkeys(str(i) for i in memory_ids))
        found = {str(c.id): c for c in qs.filter(pk__in=wanted)}
        missing = [i for i in wanted if i not in found]
        if missing:
            raise NotFound(
                f"Memory {missing[0]} not found in namespace '{namespace.key}'.",
                extra={"missing": missing[:20]},
            )
        return [found[i] for i in wanted]
    cubes = list(qs.order_by("created_at", "id")[: MAX_MEMORIES + 1])
    if len(cubes) > MAX_MEMORIES:
        raise ApplicationError(
            f"The namespace holds more than {MAX_MEMORIES} memories; scan them in batches with 'memories'.",
            code="too_large",
        )
    return cubes


def _report_dict(rep: deid.PiiReport, subjects: list[dict[str, Any]] | None) -> dict[str, Any]:
    data = rep.to_dict()
    for f in data["findings"]:
        f["type"] = str(f["type"])
        if subjects is not None:
            subject = subjects[f["text_index"]]
            f["memory_id"] = subject["memory_id"]
            f["id"] = _memory_finding_id(subject, f)
    data["counts"] = {str(k): v for k, v in data["counts"].items()}
    data["max_score"] = {str(k): v for k, v in data["max_score"].items()}
    return data


def _rewrite(*, actor: Subject, cube: MemCube, text: str, reason: str, found: Sequence[deid.Finding]) -> int:
    """A de-identified version, written by the vault. The values found are erased from every earlier
    version too: a redaction that left the original in history would redact nothing."""
    erase = [cube.text[f.start : f.end] for f in found]
    return memory_rewrite(actor=actor, cube=cube, text=text, reason=reason, erase=erase)


@dataclass(frozen=True)
class _Stored:
    """What a pending report keeps until the worker has scanned it."""

    report: dict[str, Any]
    subjects: list[dict[str, Any]]


def detector_fingerprint() -> dict[str, Any]:
    """What produces findings here, read without loading a model: the gate reuses only reports made by
    the same detector (a report from before NER was configured says nothing about names)."""
    setting = deid.ner_setting()
    return {
        "report_version": REPORT_VERSION,
        "ner": setting,
        "ner_model": deid_ner.model_version() if setting == deid.DEFAULT_NER else None,
    }


def _actor_record(actor: Subject) -> dict[str, Any]:
    """Enough of the caller to act as them in the worker: user (the report's `created_by`), kind,
    scopes, token and stated purpose, so a token's limits hold for the work done on its behalf."""
    return {
        "kind": str(actor.kind),
        "system_label": actor.system_label,
        "scopes": sorted(actor.scopes),
        "token_id": str(actor.token_id) if actor.token_id is not None else None,
        "context": dataclasses.asdict(actor.context),
    }


def _actor_from(report: PiiScanReport) -> Subject:
    rec = report.report.get("actor") or {}
    context_fields = {f.name for f in dataclasses.fields(Context)}
    return Subject(
        user=report.created_by,
        kind=SubjectKind(rec.get("kind", SubjectKind.USER)),
        system_label=rec.get("system_label", ""),
        scopes=frozenset(rec.get("scopes", ())),
        token_id=rec.get("token_id"),
        context=Context(**{k: v for k, v in (rec.get("context") or {}).items() if k in context_fields}),
    )


def _pending(actor: Subject, **extra: Any) -> dict[str, Any]:
    return {
        "status": "pending",
        "texts_scanned": 0,
        "total": 0,
        "counts": {},
        "max_score": {},
        "findings": [],
        "actor": _actor_record(actor),
        **extra,
    }


def _enqueue_scan(report_id: Any) -> None:
    """Hand the scan to the worker once the report row is committed. Under an eager Celery (tests, a
    one-process setup that asks for it) the task runs here and now instead, so that the caller's own
    transaction sees the finished report: eager means in this process by definition, and at commit
    would be too late for the caller that is waiting on the answer."""
    from governance.tasks import pii_scan_run

    if pii_scan_run.app.conf.task_always_eager:
        pii_scan_run.delay(str(report_id))
    else:
        transaction.on_commit(lambda: pii_scan_run.delay(str(report_id)))


@transaction.atomic
def pii_scan(
    *,
    actor: Subject,
    namespace_key: str,
    mode: str = "report",
    texts: Sequence[str] | None = None,
    memory_ids: Sequence[Any] | None = None,
    threshold: float | None = None,
    min_score: float | None = None,
) -> PiiScanReport:
    """Queue a scan of given texts (an upload) or of the plaintext memories of a namespace; the worker
    fills the stored report in (`status`: pending, then done or failed).

    Input is checked here (4xx, nothing written). `redact` / `pseudonymize` on memories write a new
    version of each memory with findings; frozen memories refuse (409, nothing written). Texts are held
    in the report only until the worker has scanned them; in redact / pseudonymize mode the transformed
    texts are kept with the report for the caller to fetch."""
    if mode not in SCAN_MODES:
        raise ApplicationError(f"Unknown mode '{mode}'; expected one of {', '.join(SCAN_MODES)}.")
    threshold = _unit("threshold", threshold, blocking_threshold())
    min_score = _unit("min_score", min_score, deid.DEFAULT_MIN_SCORE)
    if texts is not None and memory_ids is not None:
        raise ApplicationError("Give 'texts' or 'memories', not both.")
    ns = _namespace(actor=actor, key=namespace_key, action=Action.WRITE)
    if texts is not None:
        if not texts:
            raise ApplicationError("'texts' must hold at least one text.")
        if len(texts) > MAX_TEXTS:
            raise ApplicationError(f"At most {MAX_TEXTS} texts per scan.", code="too_large")
        if sum(len(t) for t in texts) > MAX_TOTAL_CHARS:
            raise ApplicationError(f"At most {MAX_TOTAL_CHARS} characters per scan.", code="too_large")
        stored = _Stored(_pending(actor, input_texts=list(texts)), [])
    else:
        cubes = _memories(namespace=ns, memory_ids=memory_ids, lock=False)
        if mode != "report":
            frozen = [str(c.id) for c in cubes if c.frozen]
            if frozen:
                raise Conflict(
                    "Frozen memories cannot be rewritten; unfreeze them or leave them out of 'memories'. "
                    "Nothing was changed.",
                    code="frozen",
                    extra={"ids": frozen[:20]},
                )
        stored = _Stored(_pending(actor), [{"memory_id": str(c.id)} for c in cubes])
    report = PiiScanReport.objects.create(
        namespace=ns,
        created_by=actor.user if actor.is_user else None,
        source=PiiScanReport.Source.TEXTS if texts is not None else PiiScanReport.Source.MEMORIES,
        mode=mode,
        threshold=threshold,
        min_score=min_score,
        report=stored.report,
        subjects=stored.subjects,
    )
    _enqueue_scan(report.pk)
    report.refresh_from_db()
    return report


def pii_scan_inline(**kwargs: Any) -> PiiScanReport:
    """`pii_scan`, run to completion in this process: for management commands and the worker, never the
    web process (it loads the NER). The queued task, if any, finds the report done and leaves it."""
    report = pii_scan(**kwargs)
    if report.report.get("status") == "pending":
        pii_scan_execute(report_id=report.pk)
        report.refresh_from_db()
    return report


def pii_scan_execute(*, report_id: Any) -> str:
    """The worker's half of a scan (idempotent: a report that is no longer pending is left alone).
    Returns the report's status. A refusal (rights withdrawn, a memory frozen meanwhile) marks the report
    failed and writes nothing else; an unexpected error marks it failed and is raised for the logs."""
    try:
        return _scan_run(report_id)
    except ApplicationError as exc:
        _scan_fail(report_id, code=exc.code, message=exc.message, extra=exc.extra)
        return "failed"
    except Exception as exc:
        _scan_fail(report_id, code="scan_error", message=f"The scan failed ({type(exc).__name__}).")
        raise


@transaction.atomic
def _scan_fail(report_id: Any, *, code: str, message: str, extra: dict[str, Any] | None = None) -> None:
    report = PiiScanReport.objects.select_for_update().filter(pk=report_id).first()
    if report is None or report.report.get("status") != "pending":
        return
    data = {k: v for k, v in report.report.items() if k != "input_texts"}
    data.update(status="failed", error={"code": code, "message": message, "extra": extra or {}})
    report.report = data
    report.save(update_fields=["report"])


@transaction.atomic
def _scan_run(report_id: Any) -> str:
    report = (
        PiiScanReport.objects.select_for_update(of=("self",))
        .select_related("namespace", "created_by")
        .filter(pk=report_id)
        .first()
    )
    if report is None or report.report.get("status") != "pending":
        return "missing" if report is None else str(report.report.get("status", "done"))
    actor = _actor_from(report)
    ns = report.namespace
    mode = report.mode
    authorize(subject=actor, action=Action.WRITE, namespace=ns)  # rights may have gone since the request
    subjects: list[dict[str, Any]] | None = None
    cubes: list[MemCube] = []
    from_texts = report.source == PiiScanReport.Source.TEXTS
    if from_texts:
        scanned = [str(t) for t in report.report.get("input_texts", [])]
    else:
        wanted = [s["memory_id"] for s in report.subjects]
        qs = MemCube.objects.filter(namespace=ns, kind=MemoryKind.PLAINTEXT, pk__in=wanted).exclude(
            state=MemoryState.DELETED
        )
        if mode != "report":
            qs = qs.select_for_update(of=("self",))
        found_cubes = {str(c.id): c for c in qs}
        cubes = [found_cubes[i] for i in wanted if i in found_cubes]  # deleted since the request: skipped
        scanned = [c.text for c in cubes]
        subjects = [
            {"memory_id": str(c.id), "version": c.version, "content_sha256": c.content_sha256} for c in cubes
        ]
    rep = deid.report(scanned, min_score=report.min_score)
    data = _report_dict(rep, subjects)
    by_text: dict[int, list[deid.Finding]] = {}
    for f in rep.findings:
        by_text.setdefault(f.text_index, []).append(
            deid.Finding(f.start, f.end, f.type, f.score, f.recognizer)
        )
    applied: dict[str, int] = {}
    out_texts: list[str] | None = None
    if mode != "report":
        pseudo_row, pseudonymizer = _pseudonymizer(ns) if mode == "pseudonymize" else (None, None)
        if from_texts:
            out_texts = [
                deid.apply(t, mode, pseudonymizer=pseudonymizer, findings=by_text.get(i, []))[0]
                for i, t in enumerate(scanned)
            ]
        else:
            frozen = [str(cubes[i].id) for i in by_text if cubes[i].frozen]
            if frozen:
                raise Conflict(
                    "Frozen memories hold findings; unfreeze them first. Nothing was changed.",
                    code="frozen",
                    extra={"ids": frozen},
                )
            for i, found in sorted(by_text.items()):
                new_text = deid.apply(scanned[i], mode, pseudonymizer=pseudonymizer, findings=found)[0]
                applied[str(cubes[i].id)] = _rewrite(
                    actor=actor, cube=cubes[i], text=new_text, reason=f"pii {mode}", found=found
                )
        if pseudo_row is not None and pseudonymizer is not None:
            pseudo_row.state = pseudonymizer.state()
            pseudo_row.save(update_fields=["state", "updated_at"])
    data.update(status="done", detector=detector_fingerprint(), actor=report.report.get("actor"))
    if out_texts is not None:
        data["texts"] = out_texts
    report.report = data
    report.subjects = subjects or []
    report.applied = applied
    report.resolved = [f["id"] for f in data["findings"] if f.get("memory_id") in applied]
    report.save(update_fields=["report", "subjects", "applied", "resolved"])
    view = pii_report_view(report)
    audit_record(
        actor=actor,
        operation="pii.gate.scan" if report.source == PiiScanReport.Source.GATE else "pii.scan",
        namespace=ns,
        object_type="pii_report",
        object_ids=[str(report.id), *applied.keys()],
        details={
            "mode": mode,
            "source": report.source,
            "texts": rep.texts_scanned,
            "findings": rep.total,
            "counts": data["counts"],
            "blocking": view.blocking,
            "rewritten": len(applied),
        },
    )
    return "done"


# --- reading reports ----------------------------------------------------------------------------------


@dataclass
class PiiReportView:
    report: PiiScanReport
    findings: list[dict[str, Any]] = field(default_factory=list)  # each with a `status`
    blocking: int = 0

    @property
    def status(self) -> str:
        """pending (queued for the worker), done or failed; reports from before scans ran in the worker
        were done when stored."""
        return str(self.report.report.get("status", "done"))

    @property
    def ok(self) -> bool:
        return self.status == "done" and self.blocking == 0


def pii_report_view(report: PiiScanReport) -> PiiReportView:
    """The report with each finding's current status: open, accepted, resolved (rewritten) or stale (the
    memory's text changed since). `blocking` counts open findings at or above the report's threshold."""
    findings = [dict(f) for f in report.report.get("findings", [])]
    if report.source == PiiScanReport.Source.TEXTS:
        accepted = set(report.resolved)
        for f in findings:
            f["status"] = (
                "accepted" if f["id"] in accepted else "resolved" if report.mode != "report" else "open"
            )
    else:
        ids = [f["id"] for f in findings]
        accepted = set(
            PiiAcceptance.objects.filter(namespace_id=report.namespace_id, finding_id__in=ids).values_list(
                "finding_id", flat=True
            )
        )
        current_rows = dict(
            MemCube.objects.filter(pk__in={f["memory_id"] for f in findings})
            .exclude(state=MemoryState.DELETED)
            .values_list("id", "content_sha256")
        )
        current = {str(k): v for k, v in current_rows.items()}
        subjects = {s["memory_id"]: s for s in report.subjects}
        resolved = set(report.resolved)
        for f in findings:
            mid = f["memory_id"]
            if f["id"] in accepted:
                f["status"] = "accepted"
            elif f["id"] in resolved:
                f["status"] = "resolved"
            elif current.get(mid) != subjects[mid]["content_sha256"]:
                f["status"] = "stale"
            else:
                f["status"] = "open"
    blocking = sum(1 for f in findings if f["status"] == "open" and f["score"] >= report.threshold)
    return PiiReportView(report, findings, blocking)


def pii_report_get(*, actor: Subject, report_id: Any) -> PiiScanReport:
    report = PiiScanReport.objects.select_related("namespace", "created_by").filter(pk=report_id).first()
    if report is None:
        raise NotFound("PII report not found.")
    try:
        authorize(subject=actor, action=Action.READ, namespace=report.namespace)
    except NotFound:
        raise NotFound("PII report not found.") from None
    return report


def pii_report_list(*, actor: Subject, namespace_key: str) -> QuerySet[PiiScanReport]:
    ns = _namespace(actor=actor, key=namespace_key, action=Action.READ)
    return (
        PiiScanReport.objects.filter(namespace=ns)
        .select_related("namespace", "created_by")
        .order_by("-created_at", "id")
    )


# --- resolving findings -------------------------------------------------------------------------------


@transaction.atomic
def pii_resolve(
    *, actor: Subject, report_id: Any, action: str, finding_ids: Sequence[str], reason: str = ""
) -> PiiScanReport:
    """Resolve findings of a report: `accept` ("not personal data", recorded with who and why), or
    `redact` / `pseudonymize` just those spans in their memories (a new version each)."""
    if action not in RESOLVE_ACTIONS:
        raise ApplicationError(f"Unknown action '{action}'; expected one of {', '.join(RESOLVE_ACTIONS)}.")
    wanted = list(dict.fromkeys(finding_ids))
    if not wanted:
        raise ApplicationError("Name at least one finding in 'findings'.")
    report = (
        PiiScanReport.objects.select_for_update()
        .filter(pk=pii_report_get(actor=actor, report_id=report_id).pk)
        .select_related("namespace")
        .get()
    )
    ns = report.namespace
    authorize(subject=actor, action=Action.WRITE, namespace=ns)
    view = pii_report_view(report)
    by_id = {f["id"]: f for f in view.findings}
    unknown = [i for i in wanted if i not in by_id]
    if unknown:
        raise ApplicationError(
            f"Finding '{unknown[0]}' is not in this report.", extra={"unknown": unknown[:20]}
        )
    chosen = [by_id[i] for i in wanted]
    stale = [f["id"] for f in chosen if f["status"] == "stale"]
    if stale:
        raise Conflict(
            "The memory changed since this scan; scan it again.",
            code="stale_finding",
            extra={"findings": stale[:20]},
        )
    if action == "accept":
        if report.source == PiiScanReport.Source.TEXTS:
            report.resolved = list(dict.fromkeys([*report.resolved, *wanted]))
            report.save(update_fields=["resolved"])
        else:
            existing = set(
                PiiAcceptance.objects.filter(namespace=ns, finding_id__in=wanted).values_list(
                    "finding_id", flat=True
                )
            )
            PiiAcceptance.objects.bulk_create(
                [
                    PiiAcceptance(
                        namespace=ns,
                        finding_id=i,
                        accepted_by=actor.user if actor.is_user else None,
                        reason=reason[:300],
                        report=report,
                    )
                    for i in wanted
                    if i not in existing
                ]
            )
    else:
        if report.source == PiiScanReport.Source.TEXTS:
            raise ApplicationError(
                "Texts are not stored; scan them again with mode 'redact' or 'pseudonymize'."
            )
        open_ones = [f for f in chosen if f["status"] == "open"]
        by_memory: dict[str, list[deid.Finding]] = {}
        for f in open_ones:
            by_memory.setdefault(f["memory_id"], []).append(
                deid.Finding(f["start"], f["end"], f["type"], f["score"], f["recognizer"])
            )
        cubes = {
            str(c.id): c
            for c in MemCube.objects.select_for_update(of=("self",)).filter(
                pk__in=list(by_memory), namespace=ns
            )
        }
        frozen = [mid for mid in by_memory if cubes[mid].frozen]
        if frozen:
            raise Conflict(
                "Frozen memories hold these findings; unfreeze them first.",
                code="frozen",
                extra={"ids": frozen},
            )
        pseudo_row, pseudonymizer = _pseudonymizer(ns) if action == "pseudonymize" else (None, None)
        applied = dict(report.applied)
        for mid, found in by_memory.items():
            cube = cubes[mid]
            new_text = deid.apply(cube.text, action, pseudonymizer=pseudonymizer, findings=found)[0]
            applied[mid] = _rewrite(
                actor=actor, cube=cube, text=new_text, reason=f"pii {action}", found=found
            )
        if pseudo_row is not None and pseudonymizer is not None:
            pseudo_row.state = pseudonymizer.state()
            pseudo_row.save(update_fields=["state", "updated_at"])
        report.applied = applied
        report.resolved = list(dict.fromkeys([*report.resolved, *(f["id"] for f in open_ones)]))
        report.save(update_fields=["applied", "resolved"])
    audit_record(
        actor=actor,
        operation=f"pii.{action}",
        namespace=ns,
        object_type="pii_report",
        object_ids=[str(report.id)],
        details={"findings": wanted[:100], "reason": reason[:300]},
    )
    return report


# --- the publish gate ---------------------------------------------------------------------------------


def _scanned_findings(*, namespace: Namespace, cubes: Sequence[MemCube]) -> dict[str, list[dict[str, Any]]]:
    """Findings of completed scans that cover a memory's current text: memory id -> its findings at or
    above the gate's minimum score. Memories absent from the result need a scan."""
    want = {str(c.id): c.content_sha256 for c in cubes}
    detector = detector_fingerprint()
    out: dict[str, list[dict[str, Any]]] = {}
    reports = PiiScanReport.objects.filter(
        namespace=namespace,
        source__in=[PiiScanReport.Source.MEMORIES, PiiScanReport.Source.GATE],
        min_score__lte=deid.DEFAULT_MIN_SCORE,
    ).order_by("-created_at", "-id")[:REPORTS_REUSED]
    for r in reports:
        data = r.report
        if data.get("status") != "done" or data.get("detector") != detector:
            continue
        covered = {
            s["memory_id"]
            for s in r.subjects
            if s["memory_id"] not in out and want.get(s["memory_id"]) == s.get("content_sha256")
        }
        if not covered:
            continue
        for mid in covered:
            out[mid] = []
        for f in data.get("findings", []):
            if f.get("memory_id") in covered and f["score"] >= deid.DEFAULT_MIN_SCORE:
                out[f["memory_id"]].append(f)
        if len(out) == len(want):
            break
    return out


@transaction.atomic
def pii_gate_check(
    *,
    actor: Subject,
    namespace_key: str,
    memory_ids: Sequence[Any] | None = None,
    threshold: float | None = None,
) -> PiiReportView:
    """The gate over the memories about to be published (all plaintext memories of the namespace, or the
    given ones) as they are now. The web process scans nothing: findings come from completed scans of
    the same texts by the same detector; memories without one are queued for the worker and the view
    returned is that scan's, `pending` until it is done (publish again then). With every memory
    covered, the gate stores its report (source `gate`) and the view's `blocking` counts the findings at
    or above the threshold that the publisher has not accepted for the same text."""
    threshold = _unit("threshold", threshold, blocking_threshold())
    ns = _namespace(actor=actor, key=namespace_key, action=Action.WRITE)
    cubes = _memories(namespace=ns, memory_ids=memory_ids, lock=False)
    known = _scanned_findings(namespace=ns, cubes=cubes)
    missing = [c for c in cubes if str(c.id) not in known]
    if missing:
        scan = PiiScanReport.objects.create(
            namespace=ns,
            created_by=actor.user if actor.is_user else None,
            source=PiiScanReport.Source.GATE,
            mode="report",
            threshold=threshold,
            min_score=deid.DEFAULT_MIN_SCORE,
            report=_pending(actor),
            subjects=[{"memory_id": str(c.id)} for c in missing],
        )
        _enqueue_scan(scan.pk)
        known = _scanned_findings(namespace=ns, cubes=cubes)
        if any(str(c.id) not in known for c in cubes):
            scan.refresh_from_db()
            return pii_report_view(scan)
    subjects = [
        {"memory_id": str(c.id), "version": c.version, "content_sha256": c.content_sha256} for c in cubes
    ]
    findings: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    max_score: dict[str, float] = {}
    for index, cube in enumerate(cubes):
        for f in known[str(cube.id)]:
            entry = {k: v for k, v in f.items() if k != "status"} | {"text_index": index}
            findings.append(entry)
            counts[entry["type"]] = counts.get(entry["type"], 0) + 1
            max_score[entry["type"]] = max(max_score.get(entry["type"], 0.0), float(entry["score"]))
    report = PiiScanReport.objects.create(
        namespace=ns,
        created_by=actor.user if actor.is_user else None,
        source=PiiScanReport.Source.GATE,
        mode="report",
        threshold=threshold,
        min_score=deid.DEFAULT_MIN_SCORE,
        report={
            "version": REPORT_VERSION,
            "status": "done",
            "texts_scanned": len(cubes),
            "min_score": deid.DEFAULT_MIN_SCORE,
            "total": len(findings),
            "counts": dict(sorted(counts.items())),
            "max_score": dict(sorted(max_score.items())),
            "findings": findings,
            "detector": detector_fingerprint(),
            "actor": _actor_record(actor),
        },
        subjects=subjects,
    )
    view = pii_report_view(report)
    audit_record(
        actor=actor,
        operation="pii.gate",
        namespace=ns,
        object_type="pii_report",
        object_ids=[str(report.id)],
        details={
            "memories": len(cubes),
            "findings": len(findings),
            "blocking": view.blocking,
            "passed": view.ok,
            "threshold": threshold,
        },
    )
    return view


def pii_publish_gate(
    *,
    actor: Subject,
    namespace_key: str,
    memory_ids: Sequence[Any] | None = None,
    threshold: float | None = None,
) -> PiiReportView:
    """For the marketplace's publish path: returns the gate's view when nothing blocks, raises 409
    `pii_unresolved` (naming the stored report and the first findings) while findings at or above the
    threshold remain unresolved, `pii_scan_pending` while the worker is still scanning (publish again
    when the named report is done) and `pii_scan_failed` when that scan failed. Call it before opening
    the publish transaction: a refusal raised inside that transaction rolls the stored report back."""
    view = pii_gate_check(
        actor=actor, namespace_key=namespace_key, memory_ids=memory_ids, threshold=threshold
    )
    if not view.ok:
        pii_publish_gate_refusal(view)
    return view


def pii_publish_gate_refusal(view: PiiReportView) -> None:
    """Raise the gate's 409 for a view that does not let publishing through."""
    if view.status == "pending":
        raise Conflict(
            f"The memories are being scanned for personal data (report {view.report.id}); publish again "
            "when the report is done.",
            code="pii_scan_pending",
            extra={"report": str(view.report.id)},
        )
    if view.status == "failed":
        error = view.report.report.get("error") or {}
        raise Conflict(
            f"The personal-data scan failed: {error.get('message', 'unknown error')} Scan again.",
            code="pii_scan_failed",
            extra={"report": str(view.report.id), "error": error},
        )
    blocking = [f for f in view.findings if f["status"] == "open" and f["score"] >= view.report.threshold]
    raise Conflict(
        f"Publishing is refused: {view.blocking} personal-data finding(s) at or above "
        f"{view.report.threshold:g} are unresolved. Redact, pseudonymize or accept them.",
        code="pii_unresolved",
        extra={
            "report": str(view.report.id),
            "blocking": view.blocking,
            "findings": [
                {k: f[k] for k in ("id", "memory_id", "type", "score", "preview")}
                for f in blocking[:GATE_FINDINGS_SHOWN]
            ],
        },
    )
