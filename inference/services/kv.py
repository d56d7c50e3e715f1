"""KV prefix lifecycle: promotion of hot packs, the (idempotent) build, demotion of cold prefixes.

A prefix is derived data: the packs' current memories rendered as quoted records (never canaries, never
format characters) and run through the model once. Each artifact records which memories it was built
from (`memory_sources`: ids and hashes, not text), so an erasure can find and delete it
(`inference.services.purge`).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.utils import timezone

from accounts.models import Namespace
from core.errors import NotFound
from governance.audit import audit_record
from inference import conf
from inference.models import (
    ArtifactStatus,
    BaseModel,
    DecisionAction,
    Form,
    InstalledAdapter,
    KVArtifact,
    PackUsage,
    SchedulerDecision,
)
from inference.selectors import (
    block_for,
    kv_artifact_find,
    memory_sources,
    pack_memories,
    packs_content_key,
)
from inference.services.registry import worker_module, worker_payload
from vault.models import MemCube

if TYPE_CHECKING:
    from inference.scheduler import Schedule

logger = logging.getLogger(__name__)


def kv_promote(*, model: BaseModel, schedule: Schedule) -> None:
    """Request a build of the prefix the scheduler found hot (once: a pending build is not repeated)."""
    promotion = schedule.promotion
    assert promotion is not None
    artifact = kv_artifact_find(
        base_model=model,
        content_key=promotion.content_key,
        adapter_sha256=promotion.adapter_sha256,
        dtype=conf.model_dtype(),
    )
    if artifact is None:
        artifact = KVArtifact.objects.create(
            base_model=model,
            model_fingerprint=model.fingerprint,
            content_key=promotion.content_key,
            adapter_sha256=promotion.adapter_sha256,
            dtype=conf.model_dtype(),
            namespace_keys=[ns.key for ns in promotion.namespaces],
            status=ArtifactStatus.PENDING,
        )
        artifact.namespaces.set(promotion.namespaces)
    elif artifact.model_fingerprint == model.fingerprint and artifact.status in (
        ArtifactStatus.BUILDING,
        ArtifactStatus.PENDING,
    ):
        return  # already requested; a duplicate build would only redo the same work
    else:  # demoted earlier (the packs earned their way back), or built for the model's previous files
        KVArtifact.objects.filter(pk=artifact.pk).update(
            status=ArtifactStatus.PENDING, error="", model_fingerprint=model.fingerprint
        )
    artifact_id = str(artifact.id)

    def enqueue() -> None:
        from inference.tasks import kv_artifact_build_task

        kv_artifact_build_task.delay(artifact_id)

    transaction.on_commit(enqueue)


def _current_packs(artifact: KVArtifact) -> list[tuple[Namespace, list[MemCube]]] | None:
    """The artifact's packs with their memories as they are now; None if a pack is gone."""
    namespaces = {ns.key: ns for ns in artifact.namespaces.all()}
    if any(key not in namespaces for key in artifact.namespace_keys):
        return None
    return [(namespaces[key], pack_memories(namespace=namespaces[key])) for key in artifact.namespace_keys]


def kv_artifact_build(*, artifact_id: Any) -> KVArtifact:
    """Build (or confirm) one KV prefix. Idempotent: a ready artifact whose file exists is left alone.

    The packs are read again before the file is kept: if their content changed while the model ran (an
    edit, or an erasure), the file is deleted rather than recorded.
    """
    with transaction.atomic():
        artifact = (
            KVArtifact.objects.select_for_update().select_related("base_model").filter(pk=artifact_id).first()
        )
        if artifact is None:
            raise NotFound("KV artifact not found.")
        if (
            artifact.status == ArtifactStatus.READY
            and artifact.file_path
            and Path(artifact.file_path).is_file()
            and artifact.model_fingerprint == artifact.base_model.fingerprint
        ):
            return artifact
        KVArtifact.objects.filter(pk=artifact.pk).update(status=ArtifactStatus.BUILDING, error="")
    model = artifact.base_model
    packs = _current_packs(artifact)
    if packs is None or packs_content_key(packs=packs) != artifact.content_key:
        return _demote_changed(artifact)
    cubes = [c for _, pack in packs for c in pack]
    # Recorded before the model runs: a purge during the build must find this artifact.
    KVArtifact.objects.filter(pk=artifact.pk).update(memory_sources=memory_sources(cubes))
    adapter = (
        InstalledAdapter.objects.filter(
            base_model=model, sha256=artifact.adapter_sha256, status=ArtifactStatus.READY
        ).first()
        if artifact.adapter_sha256
        else None
    )
    path = conf.artifact_dir() / "kv" / model.fingerprint[:16] / f"{artifact.id}.safetensors"
    payload = {
        **worker_payload(model),
        "path": str(path),
        "prefix_blocks": [block_for(c).__dict__ for c in cubes],
        "adapter": {"path": adapter.path, "sha256": adapter.sha256} if adapter else None,
    }
    try:
        info = worker_module().kv_build(payload)
    except Exception as exc:
        logger.exception("KV build %s failed", artifact.id)
        KVArtifact.objects.filter(pk=artifact.pk).update(status=ArtifactStatus.FAILED, error=str(exc)[:2000])
        artifact.refresh_from_db()
        return artifact
    with transaction.atomic():
        locked = KVArtifact.objects.select_for_update().filter(pk=artifact.pk).first()
        now_packs = _current_packs(artifact) if locked is not None else None
        if locked is None or now_packs is None or packs_content_key(packs=now_packs) != artifact.content_key:
            path.unlink(missing_ok=True)  # purged or changed while building: keep nothing derived
            if locked is None:
                return artifact
            return _demote_changed(artifact)
        KVArtifact.objects.filter(pk=artifact.pk).update(
            status=ArtifactStatus.READY,
            file_path=str(path),
            token_ids_sha256=info["token_ids_sha256"],
            num_tokens=info["num_tokens"],
            file_bytes=info["file_bytes"],
            file_sha256=info["file_sha256"],
            build_seconds=info["build_s"],
            model_fingerprint=info["model_fingerprint"],
            error="",
        )
        audit_record(
            actor=None,
            operation="inference.kv.build",
            object_type="kv_artifact",
            object_ids=[str(artifact.id)],
            details={
                "namespaces": artifact.namespace_keys,
                "memories": len(cubes),
                "tokens": info["num_tokens"],
                "bytes": info["file_bytes"],
                "model_fingerprint": model.fingerprint,
            },
        )
    artifact.refresh_from_db()
    return artifact


def _demote_changed(artifact: KVArtifact) -> KVArtifact:
    KVArtifact.objects.filter(pk=artifact.pk).update(
        status=ArtifactStatus.DEMOTED,
        error="the packs changed before the build ran; a new request will promote their current content",
    )
    artifact.refresh_from_db()
    return artifact


def kv_artifacts_demote_cold(*, now: Any = None) -> int:
    """Delete prefixes unused for MEMHUB_KV_DEMOTE_AFTER_S; their packs go back to plaintext and must be
    used `MEMHUB_KV_PROMOTE_AFTER` times again to be promoted."""
    moment = now or timezone.now()
    cutoff = moment - timedelta(seconds=conf.kv_demote_after_s())
    cold = KVArtifact.objects.filter(status=ArtifactStatus.READY).filter(
        last_used_at__lt=cutoff
    ) | KVArtifact.objects.filter(
        status=ArtifactStatus.READY, last_used_at__isnull=True, updated_at__lt=cutoff
    )
    demoted = 0
    for artifact in cold.distinct():
        with transaction.atomic():
            locked = (
                KVArtifact.objects.select_for_update()
                .filter(pk=artifact.pk, status=ArtifactStatus.READY)
                .first()
            )
            if locked is None:
                continue
            if locked.file_path:
                Path(locked.file_path).unlink(missing_ok=True)
            KVArtifact.objects.filter(pk=locked.pk).update(status=ArtifactStatus.DEMOTED, file_path="")
            namespaces = list(locked.namespaces.all())
            PackUsage.objects.filter(base_model=locked.base_model, namespace__in=namespaces).update(uses=0)
            idle = f"last used {locked.last_used_at.isoformat()}" if locked.last_used_at else "never used"
            SchedulerDecision.objects.bulk_create(
                [
                    SchedulerDecision(
                        base_model=locked.base_model,
                        namespace=ns,
                        kv_artifact=locked,
                        form=Form.PLAINTEXT,
                        action=DecisionAction.DEMOTE,
                        reason=f"cold KV prefix removed ({idle}); pack back to plaintext",
                    )
                    for ns in namespaces
                ]
            )
            audit_record(
                actor=None,
                operation="inference.kv.demote",
                object_type="kv_artifact",
                object_ids=[str(locked.id)],
                details={"namespaces": locked.namespace_keys},
            )
            demoted += 1
    return demoted


def kv_schedule_for_namespace(*, namespace: Namespace, user: Any, current: BaseModel) -> list[str]:
    """Request KV prefix builds of one installed pack, from its own (watermarked) memories, for the base
    models its holder uses: the served one, and any other registered model the holder's packs were used
    with whose files are still there. A pack too large for a prefix is skipped. Returns artifact ids."""
    from inference.scheduler import estimate_tokens

    cubes = pack_memories(namespace=namespace)
    if not cubes:
        return []
    if sum(estimate_tokens(c.title + c.text) for c in cubes) > conf.kv_max_prefix_tokens():
        return []
    used = PackUsage.objects.filter(namespace__owner_user=user).values_list("base_model_id", flat=True)
    models = [current] + [
        m for m in BaseModel.objects.filter(pk__in=list(used)).exclude(pk=current.pk) if Path(m.path).is_dir()
    ]
    key = packs_content_key(packs=[(namespace, cubes)])
    ids: list[str] = []
    for model in models:
        artifact = kv_artifact_find(
            base_model=model, content_key=key, adapter_sha256="", dtype=conf.model_dtype()
        )
        if artifact is None:
            artifact = KVArtifact.objects.create(
                base_model=model,
                model_fingerprint=model.fingerprint,
                content_key=key,
                adapter_sha256="",
                dtype=conf.model_dtype(),
                namespace_keys=[namespace.key],
                status=ArtifactStatus.PENDING,
            )
            artifact.namespaces.set([namespace])
        elif artifact.status == ArtifactStatus.READY or artifact.status == ArtifactStatus.BUILDING:
            ids.append(str(artifact.id))
            continue
        artifact_id = str(artifact.id)

        def enqueue(artifact_id: str = artifact_id) -> None:
            from inference.tasks import kv_artifact_build_task

            kv_artifact_build_task.delay(artifact_id)

        transaction.on_commit(enqueue)
        ids.append(artifact_id)
    return ids
