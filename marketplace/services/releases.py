"""Marketplace writes (releases): immutable, signed releases of a pack, their cards, evaluation questions.

A release freezes the exact MemCube versions of the pack's live items into a canonical manifest
(`marketplace.manifest`), signed with the instance key (`core.signing`); its id is the manifest's
SHA-256. Nothing publishes until the de-identification gate passes. The pack card is measured here, not
typed by the publisher; its recall@10 needs the search index, so when the index still lags behind the
pack's memories the evaluation is `pending` and a Celery task finishes it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from core.errors import ApplicationError, Conflict, NotFound
from core.signing import instance_signer
from governance.audit import audit_record
from governance.pii import PiiReportView, pii_publish_gate
from governance.policy import Action, Subject, decide
from marketplace import card as cards
from marketplace.hooks import PackEvent, run_pack_hooks
from marketplace.manifest import (
    MAX_VERSION_CHARS,
    manifest_build,
    manifest_item,
    manifest_sha256,
    manifest_sign,
    semver_key,
)
from marketplace.models import EvaluationQuestion, Pack, PackRelease
from marketplace.services.common import require_publisher_admin
from vault.models import LIVE_STATES, IndexOutbox, MemCube, MemCubeVersion, MemoryKind

logger = logging.getLogger(__name__)

MAX_NOTES_CHARS = 20_000
MAX_QUESTIONS = 200
MAX_QUESTION_CHARS = 2_000
MAX_ANSWERS = 50
EVAL_FETCH = 50  # hits asked of the search per question before keeping the release's own
EVAL_INLINE_MAX = 20  # more questions than this are scored by the worker, not in the publish request


# --- versions -----------------------------------------------------------------------------------------


def _latest(pack: Pack) -> PackRelease | None:
    releases = list(pack.releases.all())
    return max(releases, key=lambda r: semver_key(r.version)) if releases else None


def _check_version(pack: Pack, version: str) -> None:
    """400 for a version that is not SemVer; 409 for one that exists or does not follow the latest."""
    try:
        key = semver_key(version)
    except ValueError:
        raise ApplicationError(
            f"'{version[:60]}' is not a semantic version (e.g. 1.2.0 or 1.2.0-beta.1; at most "
            f"{MAX_VERSION_CHARS} characters, no build metadata).",
            extra={"field": "version"},
            code="invalid_version",
        ) from None
    if pack.releases.filter(version=version).exists():
        raise Conflict(
            f"Release {version} exists; releases are immutable, publish a new version.",
            code="version_exists",
        )
    latest = _latest(pack)
    if latest is not None and key <= semver_key(latest.version):
        raise Conflict(
            f"Version {version} does not follow the latest release {latest.version}; publish a higher "
            "version.",
            code="version_not_increasing",
            extra={"latest": latest.version},
        )


# --- content ------------------------------------------------------------------------------------------


def _pack_cubes(pack: Pack) -> list[MemCube]:
    """The pack's live content: its items' MemCubes that are live now."""
    # One PackItem per (pack, cube) (a unique constraint), so the join yields each cube once.
    return list(
        MemCube.objects.filter(pack_items__pack=pack, state__in=LIVE_STATES, is_canary=False).order_by(
            "pack_items__position", "id"
        )
    )


def _current_versions(cubes: Sequence[MemCube]) -> list[MemCubeVersion]:
    """Each cube's current version row (the one the release freezes)."""
    return list(
        MemCubeVersion.objects.filter(cube_id__in=[c.pk for c in cubes], version=F("cube__version"))
        .select_related("cube")
        .order_by("cube__provenance_id")
    )


def _base_model(v: MemCubeVersion) -> str:
    meta = v.blob_meta or {}
    return str(
        meta.get("base_model")
        or meta.get("base_model_name_or_path")
        or meta.get("base_model_architecture")
        or (v.metadata or {}).get("base_model")
        or ""
    )


def _gate_subject(actor: Subject, pack: Pack) -> Subject:
    """Who the de-identification gate runs as. A publisher member who is not a member of the owning
    organization publishes by their publisher role, not by namespace rights: the gate then runs as the
    platform, labelled with the member's name, and the release itself is audited as the member."""
    if decide(subject=actor, action=Action.WRITE, namespace=pack.publisher.namespace).allowed:
        return actor
    return Subject.system(f"release-gate:{actor.label}", purpose=actor.context.purpose).with_context(
        operation="pack.release"
    )


# --- publishing ---------------------------------------------------------------------------------------


def release_publish(*, actor: Subject, pack: Pack, version: str, notes: str = "") -> PackRelease:
    """Publish an immutable release of the pack's live items, once the PII gate lets it through.

    The gate runs (and stores its report) before the release transaction, so a refusal (409
    `pii_unresolved`, with the report id and the blocking findings) keeps the report the publisher needs
    to resolve the findings."""
    require_publisher_admin(actor=actor, publisher=pack.publisher)
    if not isinstance(version, str):
        raise ApplicationError("'version' must be a string.", extra={"field": "version"})
    if not isinstance(notes, str) or len(notes) > MAX_NOTES_CHARS:
        raise ApplicationError(
            f"'notes' must be Markdown text of at most {MAX_NOTES_CHARS} characters.",
            extra={"field": "notes"},
        )
    _check_version(pack, version)
    cubes = _pack_cubes(pack)
    if not cubes:
        raise ApplicationError(
            "The pack has no live memories to release; add content first.", code="empty_pack"
        )
    plaintext = [c for c in cubes if c.kind == MemoryKind.PLAINTEXT]
    view = pii_publish_gate(
        actor=_gate_subject(actor, pack),
        namespace_key=pack.publisher.namespace.key,
        memory_ids=[c.id for c in plaintext],
    )
    checked = {str(c.id): c.content_sha256 for c in plaintext}
    release = _release_create(actor=actor, pack=pack, version=version, notes=notes, checked=checked, pii=view)
    if release.card.get("evaluation", {}).get("status") == "pending":
        # robust: the release is committed by now; a broker hiccup must not turn it into an error (the
        # card then stays `pending`, and the failure is logged).
        transaction.on_commit(lambda: _card_evaluation_enqueue(release.pk), robust=True)
    return release


@transaction.atomic
def _release_create(
    *,
    actor: Subject,
    pack: Pack,
    version: str,
    notes: str,
    checked: dict[str, str],
    pii: PiiReportView,
) -> PackRelease:
    # One publisher at a time per pack: the version order and the gated content are re-checked under
    # the lock, so two racing publishes cannot both pass or ship text the gate did not see. Only the
    # pack row, and NO KEY: locking the joined namespace row too would stall every insert that refers
    # to it (audit entries, PII reports) and deadlock against a gate holding the audit chain head.
    pack = (
        Pack.objects.select_for_update(no_key=True, of=("self",))
        .select_related("publisher__namespace")
        .get(pk=pack.pk)
    )
    _check_version(pack, version)
    cubes = _pack_cubes(pack)
    now = {str(c.id): c.content_sha256 for c in cubes if c.kind == MemoryKind.PLAINTEXT}
    if now != checked or not cubes:
        raise Conflict(
            "The pack's content changed while it was checked for personal data; publish again.",
            code="content_changed",
        )
    versions = _current_versions(cubes)
    if len(versions) != len(cubes):
        raise Conflict("A memory changed while the release was built; publish again.", code="content_changed")
    signer = instance_signer()
    manifest = manifest_build(
        origin_instance=str(getattr(settings, "MEMHUB_INSTANCE_NAME", "") or ""),
        key_id=signer.key_id,
        publisher=pack.publisher.slug,
        pack=pack.slug,
        title=pack.title,
        version=version,
        created_at=timezone.now(),
        changelog=notes,
        licence={
            "name": pack.licence,
            "price_model": pack.price_model,
            "seats": pack.seats,
            "licence_days": pack.licence_days,
            "quota_per_period": pack.quota_per_period,
            "forms": pack.forms,
            "federation_allowed": pack.federation_allowed,
        },
        base_models=pack.base_models or [],
        items=[
            manifest_item(
                provenance_id=v.cube.provenance_id,
                version=v.version,
                kind=v.kind,
                content_sha256=v.content_sha256,
                blob_sha256=v.blob_sha256,
                model_fingerprint=v.model_fingerprint,
                base_model=_base_model(v),
            )
            for v in versions
        ],
    )
    digest = manifest_sha256(manifest)
    questions = list(pack.evaluation_questions.order_by("id"))
    card = cards.card_compute(versions=versions, pii=cards.pii_summary(pii), questions=len(questions))
    card["computed_at"] = manifest["created_at"]
    if questions:
        card["evaluation"]["question_ids"] = [q.pk for q in questions]
    release = PackRelease(
        pack=pack,
        version=version,
        notes=notes,
        manifest=manifest,
        manifest_sha256=digest,
        signature=manifest_sign(manifest, signer.sign),
        signing_key_id=signer.key_id,
        card=card,
    )
    release.full_clean(validate_constraints=False)  # the unique version is the database's to enforce
    try:
        with transaction.atomic():
            release.save()
    except IntegrityError:
        raise Conflict(
            f"Release {version} exists; releases are immutable, publish a new version.",
            code="version_exists",
        ) from None
    release.memory_versions.set(versions)
    if questions and len(questions) <= EVAL_INLINE_MAX:
        # The index may already hold every memory (the usual case: content was added a while ago).
        _evaluate(release=release, final=False)
    audit_record(
        actor=actor,
        operation="pack.release",
        namespace=pack.publisher.namespace,
        object_type="pack",
        object_ids=[str(pack.id), str(release.id)],
        details={
            "version": version,
            "manifest_sha256": digest,
            "signing_key_id": signer.key_id,
            "memories": len(versions),
            "pii_report": str(pii.report.id),
        },
    )
    from marketplace.services.catalog import catalog_sync_enqueue

    pack_id = pack.id
    transaction.on_commit(lambda: catalog_sync_enqueue(pack_id))
    # The feed records the release in this transaction (feeds registers the hook).
    run_pack_hooks(PackEvent(kind="release.published", pack_id=str(pack.pk), release_id=str(release.pk)))
    return release


# --- the card's evaluation ----------------------------------------------------------------------------


def _card_evaluation_enqueue(release_id: Any) -> None:
    from marketplace.tasks.releases import release_card_evaluate_task

    release_card_evaluate_task.delay(str(release_id))


def _index_state(release: PackRelease) -> str:
    """`current` when the index has applied every outbox row of the release's memories, `failed` when
    one went to the dead letters, else `lagging`."""
    cube_ids = list(release.memory_versions.values_list("cube_id", flat=True))
    rows = IndexOutbox.objects.filter(cube_id__in=cube_ids, processed_at__isnull=True)
    if rows.filter(dead_lettered_at__isnull=False).exists():
        return "failed"
    return "lagging" if rows.exists() else "current"


def _evaluate(*, release: PackRelease, final: bool) -> str:
    """Fill in the card's recall@10 if the index is ready (the release row is locked by the caller)."""
    from vault.selectors import memory_search

    evaluation = dict(release.card.get("evaluation") or {})
    if evaluation.get("status") != "pending":
        return str(evaluation.get("status", "none"))
    state = _index_state(release)
    if state != "current":
        if state == "lagging" and not final:
            return "pending"
        evaluation.update(
            status="failed",
            reason=(
                "The search index could not take some of the release's memories."
                if state == "failed"
                else "The search index did not catch up with the release's memories in time."
            ),
        )
        release.card = {**release.card, "evaluation": evaluation}
        release.save(update_fields=["card"])
        return "failed"
    released = {m["provenance_id"] for m in release.manifest.get("memories", [])}
    ns_key = release.pack.publisher.namespace.key
    # The platform searches, not the publisher: the same ranking every buyer's search uses, over the
    # publisher's namespace, keeping only this release's memories (other packs share the namespace).
    searcher = Subject.system("pack-card").with_context(operation="pack.card.evaluate")
    top_k = min(EVAL_FETCH, settings.VAULT_SEARCH_MAX_TOP_K)
    ids = evaluation.get("question_ids") or []
    per_question = []
    for q in EvaluationQuestion.objects.filter(pk__in=ids).order_by("id"):
        hits = memory_search(actor=searcher, query=q.question, namespace_keys=[ns_key], top_k=top_k).results
        retrieved = [str(h.memory.provenance_id) for h in hits if str(h.memory.provenance_id) in released]
        answers = [str(a) for a in q.answer_provenance_ids]
        recall, found = cards.recall_at_k(retrieved=retrieved, answers=answers, k=cards.RECALL_K)
        per_question.append(
            {
                "question": q.pk,
                "recall": round(recall, 4),
                "answers": len(set(answers)),
                "found": len(found),
                "answers_not_in_release": sum(1 for a in set(answers) if a not in released),
            }
        )
    evaluation.update(
        status="done",
        questions=len(per_question),
        recall_at_10=(
            round(sum(p["recall"] for p in per_question) / len(per_question), 4) if per_question else None
        ),
        per_question=per_question,
        evaluated_at=timezone.now().isoformat(),
    )
    release.card = {**release.card, "evaluation": evaluation}
    release.save(update_fields=["card"])
    return "done"


@transaction.atomic
def release_card_evaluate(*, release_id: Any, final: bool = False) -> str:
    """Score the release's evaluation questions (recall@10) once the index holds its memories.
    Idempotent: returns `done` (now or before), `pending` (the index still lags: try again later),
    `failed` (the index refused a memory, or `final` and it still lags), or `none` (no questions)."""
    release = (
        PackRelease.objects.select_for_update(of=("self",))
        .select_related("pack__publisher__namespace")
        .filter(pk=release_id)
        .first()
    )
    if release is None:
        return "missing"
    return _evaluate(release=release, final=final)


# --- diffs --------------------------------------------------------------------------------------------


def release_diff(*, old: PackRelease | None, new: PackRelease) -> dict[str, list[str]]:
    """What upgrading from `old` (None: nothing installed) to `new` changes, by provenance id: `added`
    (only in new), `removed` (only in old), `changed` (in both, another version or content hash),
    `unchanged`. Each list is sorted."""

    def items(release: PackRelease | None) -> dict[str, tuple[Any, Any]]:
        if release is None:
            return {}
        return {
            str(m["provenance_id"]): (m.get("version"), m.get("content_sha256"))
            for m in release.manifest.get("memories", [])
        }

    before, after = items(old), items(new)
    both = before.keys() & after.keys()
    return {
        "added": sorted(after.keys() - before.keys()),
        "changed": sorted(p for p in both if before[p] != after[p]),
        "removed": sorted(before.keys() - after.keys()),
        "unchanged": sorted(p for p in both if before[p] == after[p]),
    }


# --- evaluation questions -----------------------------------------------------------------------------


def _clean_question(*, pack: Pack, question: Any, answers: Any) -> tuple[str, list[str]]:
    if not isinstance(question, str) or not question.strip():
        raise ApplicationError("'question' must be a non-empty text.", extra={"field": "question"})
    if len(question) > MAX_QUESTION_CHARS:
        raise ApplicationError(
            f"'question' must be at most {MAX_QUESTION_CHARS} characters.", extra={"field": "question"}
        )
    if not isinstance(answers, list) or not 1 <= len(answers) <= MAX_ANSWERS:
        raise ApplicationError(
            f"'answer_provenance_ids' must list 1 to {MAX_ANSWERS} provenance ids of the pack's memories.",
            extra={"field": "answer_provenance_ids"},
        )
    wanted = list(dict.fromkeys(str(a).lower() for a in answers))
    known = {
        str(p)
        for p in MemCube.objects.filter(pack_items__pack=pack, state__in=LIVE_STATES).values_list(
            "provenance_id", flat=True
        )
    }
    unknown = [a for a in wanted if a not in known]
    if unknown:
        raise ApplicationError(
            f"'{unknown[0][:64]}' is not the provenance id of a live memory of this pack.",
            extra={"field": "answer_provenance_ids", "unknown": unknown[:20]},
            code="unknown_answer",
        )
    return question.strip(), wanted


@transaction.atomic
def evaluation_question_create(
    *, actor: Subject, pack: Pack, question: str, answer_provenance_ids: list[str]
) -> EvaluationQuestion:
    """A question the pack answers, with the memories (provenance ids) that answer it."""
    require_publisher_admin(actor=actor, publisher=pack.publisher)
    text, answers = _clean_question(pack=pack, question=question, answers=answer_provenance_ids)
    # the cap holds under concurrency (NO KEY: the question's own insert still refers to the pack)
    Pack.objects.select_for_update(no_key=True).filter(pk=pack.pk).first()
    if pack.evaluation_questions.count() >= MAX_QUESTIONS:
        raise ApplicationError(
            f"A pack has at most {MAX_QUESTIONS} evaluation questions; delete one first.", code="too_many"
        )
    row = EvaluationQuestion(pack=pack, question=text, answer_provenance_ids=answers)
    row.full_clean()
    row.save()
    audit_record(
        actor=actor,
        operation="pack.evaluation_question.create",
        namespace=pack.publisher.namespace,
        object_type="evaluation_question",
        object_ids=[str(row.pk)],
        details={"pack": str(pack.id), "answers": len(answers)},
    )
    return row


def _question(pack: Pack, question_id: Any) -> EvaluationQuestion:
    row = EvaluationQuestion.objects.select_for_update().filter(pack=pack, pk=question_id).first()
    if row is None:
        raise NotFound(f"Evaluation question {question_id} not found in this pack.")
    return row


@transaction.atomic
def evaluation_question_update(
    *,
    actor: Subject,
    pack: Pack,
    question_id: Any,
    question: str | None = None,
    answer_provenance_ids: list[str] | None = None,
) -> EvaluationQuestion:
    require_publisher_admin(actor=actor, publisher=pack.publisher)
    row = _question(pack, question_id)
    text, answers = _clean_question(
        pack=pack,
        question=row.question if question is None else question,
        answers=row.answer_provenance_ids if answer_provenance_ids is None else answer_provenance_ids,
    )
    row.question, row.answer_provenance_ids = text, answers
    row.full_clean()
    row.save(update_fields=["question", "answer_provenance_ids"])
    audit_record(
        actor=actor,
        operation="pack.evaluation_question.update",
        namespace=pack.publisher.namespace,
        object_type="evaluation_question",
        object_ids=[str(row.pk)],
        details={"pack": str(pack.id), "answers": len(answers)},
    )
    return row


@transaction.atomic
def evaluation_question_delete(*, actor: Subject, pack: Pack, question_id: Any) -> None:
    require_publisher_admin(actor=actor, publisher=pack.publisher)
    row = _question(pack, question_id)
    pk = row.pk
    row.delete()
    audit_record(
        actor=actor,
        operation="pack.evaluation_question.delete",
        namespace=pack.publisher.namespace,
        object_type="evaluation_question",
        object_ids=[str(pk)],
        details={"pack": str(pack.id)},
    )
