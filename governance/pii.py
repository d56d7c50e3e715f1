"""De-identification on the platform: stored PII reports, redaction and pseudonymisation as new memory
versions, a publisher's explicit acceptance of a finding, and the publish gate.

The algorithms live in `governance.deid` (plain Python); this module gives them tenancy, storage,
versioning and audit. A memory finding's id names the memory, the hash of the text it was found in, its
span and its type, so an acceptance stays valid exactly as long as that text does.
"""

from __future__ import annotations

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
from governance.models import PiiAcceptance, PiiScanReport, PseudonymKey
from governance.policy import Action, Subject, authorize
from vault.models import IndexOp, MemCube, MemoryKind, MemoryState, VersionOperation
from vault.services import index_enqueue, memory_version_write

SCAN_MODES = tuple(m.value for m in deid.Mode)
RESOLVE_ACTIONS = ("accept", "redact", "pseudonymize")
MAX_TEXTS = 1000
MAX_MEMORIES = 10_000
MAX_TOTAL_CHARS = 5_000_000
GATE_FINDINGS_SHOWN = 20


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


def _rewrite(*, actor: Subject, cube: MemCube, text: str, reason: str) -> int:
    cube.text = text
    memory_version_write(cube, actor=actor, operation=VersionOperation.OVERWRITE, reason=reason[:300])
    index_enqueue([cube.id], IndexOp.UPSERT)
    return cube.version


@dataclass
class PiiScanResult:
    report: PiiScanReport
    texts: list[str] | None = None  # transformed texts of a text scan in redact / pseudonymize mode


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
) -> PiiScanResult:
    """Scan given texts (an upload) or the plaintext memories of a namespace, store the report.

    `redact` / `pseudonymize` on memories write a new version of each memory with findings (frozen ones
    refuse: 409, nothing written); on texts they return the transformed texts (texts are never stored).
    """
    if mode not in SCAN_MODES:
        raise ApplicationError(f"Unknown mode '{mode}'; expected one of {', '.join(SCAN_MODES)}.")
    threshold = _unit("threshold", threshold, blocking_threshold())
    min_score = _unit("min_score", min_score, deid.DEFAULT_MIN_SCORE)
    if texts is not None and memory_ids is not None:
        raise ApplicationError("Give 'texts' or 'memories', not both.")
    ns = _namespace(actor=actor, key=namespace_key, action=Action.WRITE)
    subjects: list[dict[str, Any]] | None = None
    cubes: list[MemCube] = []
    if texts is not None:
        if not texts:
            raise ApplicationError("'texts' must hold at least one text.")
        if len(texts) > MAX_TEXTS:
            raise ApplicationError(f"At most {MAX_TEXTS} texts per scan.", code="too_large")
        if sum(len(t) for t in texts) > MAX_TOTAL_CHARS:
            raise ApplicationError(f"At most {MAX_TOTAL_CHARS} characters per scan.", code="too_large")
        scanned = list(texts)
    else:
        cubes = _memories(namespace=ns, memory_ids=memory_ids, lock=mode != "report")
        scanned = [c.text for c in cubes]
        subjects = [
            {"memory_id": str(c.id), "version": c.version, "content_sha256": c.content_sha256} for c in cubes
        ]
    rep = deid.report(scanned, min_score=min_score)
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
        if texts is not None:
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
                    actor=actor, cube=cubes[i], text=new_text, reason=f"pii {mode}"
                )
        if pseudo_row is not None and pseudonymizer is not None:
            pseudo_row.state = pseudonymizer.state()
            pseudo_row.save(update_fields=["state", "updated_at"])
    rewritten = [f["id"] for f in data["findings"] if f.get("memory_id") in applied]
    report = PiiScanReport.objects.create(
        namespace=ns,
        created_by=actor.user if actor.is_user else None,
        source=PiiScanReport.Source.TEXTS if texts is not None else PiiScanReport.Source.MEMORIES,
        mode=mode,
        threshold=threshold,
        min_score=min_score,
        report=data,
        subjects=subjects or [],
        applied=applied,
        resolved=rewritten,
    )
    view = pii_report_view(report)
    audit_record(
        actor=actor,
        operation="pii.scan",
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
    return PiiScanResult(report, out_texts)


# --- reading reports ----------------------------------------------------------------------------------


@dataclass
class PiiReportView:
    report: PiiScanReport
    findings: list[dict[str, Any]] = field(default_factory=list)  # each with a `status`
    blocking: int = 0

    @property
    def ok(self) -> bool:
        return self.blocking == 0


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
            applied[mid] = _rewrite(actor=actor, cube=cube, text=new_text, reason=f"pii {action}")
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


@transaction.atomic
def pii_gate_check(
    *,
    actor: Subject,
    namespace_key: str,
    memory_ids: Sequence[Any] | None = None,
    threshold: float | None = None,
) -> PiiReportView:
    """Scan the memories about to be published (all plaintext memories of the namespace, or the given
    ones) as they are now and store the report (source `gate`). Findings the publisher accepted for the
    same text stay accepted; the view's `blocking` counts what is left at or above the threshold."""
    threshold = _unit("threshold", threshold, blocking_threshold())
    ns = _namespace(actor=actor, key=namespace_key, action=Action.WRITE)
    cubes = _memories(namespace=ns, memory_ids=memory_ids, lock=False)
    subjects = [
        {"memory_id": str(c.id), "version": c.version, "content_sha256": c.content_sha256} for c in cubes
    ]
    rep = deid.report([c.text for c in cubes], min_score=deid.DEFAULT_MIN_SCORE)
    report = PiiScanReport.objects.create(
        namespace=ns,
        created_by=actor.user if actor.is_user else None,
        source=PiiScanReport.Source.GATE,
        mode="report",
        threshold=threshold,
        min_score=deid.DEFAULT_MIN_SCORE,
        report=_report_dict(rep, subjects),
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
            "findings": rep.total,
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
    threshold remain unresolved. Call it before opening the publish transaction: a refusal raised inside
    that transaction rolls the stored gate report back with it."""
    view = pii_gate_check(
        actor=actor, namespace_key=namespace_key, memory_ids=memory_ids, threshold=threshold
    )
    if not view.ok:
        pii_publish_gate_refusal(view)
    return view


def pii_publish_gate_refusal(view: PiiReportView) -> None:
    """Raise the gate's 409 for a view with blocking findings."""
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
