"""Plaintext pack -> LoRA adapter, trained in the background with progress (MemOS's distillation path).

The training text is the pack's live memories (never canaries, format characters stripped), assembled
when the job runs and never stored. The job records which memories it trained on (`memory_sources`: ids
and hashes), so an erasure can retire the adapter derived from them (`inference.services.purge`).
"""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

from django.db import transaction
from django.utils import timezone

from core.errors import ApplicationError, NotFound
from governance.audit import audit_record
from governance.policy import Subject
from inference import conf
from inference.models import BaseModel, DistillationJob, JobStatus
from inference.prompting import clean_memory_text
from inference.selectors import memory_sources, pack_memories
from inference.services.adapters import adapter_namespace, adapter_register
from inference.services.registry import base_model_required, worker_module, worker_payload
from vault.models import LIVE_STATES, MemCube

logger = logging.getLogger(__name__)

DISTILL_FIELDS: dict[str, tuple[type, float, float]] = {
    "steps": (int, 1, 0),
    "rank": (int, 1, 0),
    "alpha": (int, 1, 4096),
    "learning_rate": (float, 1e-7, 1),
    "seq_len": (int, 16, 0),
    "batch_size": (int, 1, 64),
    "seed": (int, 0, 2**31),
}


def _distill_config(raw: dict[str, Any], model: BaseModel) -> dict[str, Any]:
    limits = {"steps": conf.distill_max_steps(), "rank": conf.lora_max_rank(), "seq_len": model.max_positions}
    unknown = sorted(set(raw) - set(DISTILL_FIELDS))
    if unknown:
        raise ApplicationError(
            f"Unknown distillation option '{unknown[0]}'; known: {', '.join(DISTILL_FIELDS)}."
        )
    config: dict[str, Any] = {}
    for key, value in raw.items():
        kind, low, high = DISTILL_FIELDS[key]
        high = limits.get(key, high)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (kind is int and not isinstance(value, int))
        ):
            raise ApplicationError(
                f"Distillation option '{key}' must be a{'n integer' if kind is int else ' number'}."
            )
        if not low <= value <= high:
            raise ApplicationError(f"Distillation option '{key}' must be between {low} and {high}.")
        config[key] = kind(value)
    return config


def distillation_text(cubes: list[MemCube]) -> str:
    """The training text: what the model would see of these memories in a prompt, nothing more."""
    return "\n\n".join(clean_memory_text(f"{c.title}\n{c.text}").strip() for c in cubes)


@transaction.atomic
def distillation_start(
    *, subject: Subject, namespace_key: str, config: dict[str, Any] | None = None
) -> DistillationJob:
    namespace = adapter_namespace(subject=subject, namespace_key=namespace_key)
    model = base_model_required()
    cfg = _distill_config(config or {}, model)
    if not pack_memories(namespace=namespace):
        raise ApplicationError(f"Namespace '{namespace_key}' has no plaintext memories to distil.")
    job = DistillationJob.objects.create(
        namespace=namespace,
        base_model=model,
        config=cfg,
        requested_by=subject.user if subject.is_user else None,
        total_steps=cfg.get("steps", 60),
    )
    audit_record(
        actor=subject,
        operation="inference.distill.start",
        namespace=namespace,
        object_type="distillation",
        object_ids=[str(job.id)],
        details={"config": cfg},
    )
    job_id = str(job.id)

    def enqueue() -> None:
        from inference.tasks import distillation_run_task

        distillation_run_task.delay(job_id)

    transaction.on_commit(enqueue)
    return job


def _sources_still_current(sources: list[dict[str, str]]) -> bool:
    """Are the memories a job trained on still there, unchanged and live (no erasure meanwhile)?"""
    ids = [s["id"] for s in sources]
    current = dict(
        MemCube.objects.filter(pk__in=ids, state__in=LIVE_STATES).values_list("id", "content_sha256")
    )
    return all(current.get(uuid.UUID(s["id"])) == s["content_sha256"] for s in sources)


def distillation_run(*, job_id: Any, progress_every: int = 1) -> DistillationJob:
    """Train the adapter and install it for the job's namespace. Idempotent: a finished job is left as is;
    a job found running (a redelivered task after a crash) starts over."""
    with transaction.atomic():
        job = (
            DistillationJob.objects.select_for_update()
            .select_related("namespace", "base_model")
            .filter(pk=job_id)
            .first()
        )
        if job is None:
            raise NotFound("Distillation job not found.")
        if job.status in (JobStatus.SUCCEEDED, JobStatus.PURGED):
            return job
        cubes = pack_memories(namespace=job.namespace)
        sources = memory_sources(cubes)
        # Recorded before training starts: a purge during training must find this job.
        DistillationJob.objects.filter(pk=job.pk).update(
            status=JobStatus.RUNNING,
            started_at=timezone.now(),
            step=0,
            progress=0.0,
            error="",
            memory_sources=sources,
        )
    text = distillation_text(cubes)
    out_dir = conf.artifact_dir() / "distill" / str(job.id)

    def progress(step: int, total: int, loss: float) -> None:
        if step % progress_every and step != total:
            return
        fields: dict[str, Any] = {"step": step, "total_steps": total, "progress": step / total, "loss": loss}
        if step == 1:
            fields["first_loss"] = loss
        DistillationJob.objects.filter(pk=job.pk).update(**fields)

    try:
        result = worker_module().distill(
            {
                **worker_payload(job.base_model),
                "text": text,
                "out_dir": str(out_dir),
                "config": job.config,
                "source": {"namespace": job.namespace.key, "job": str(job.id)},
            },
            progress,
        )
        if not _sources_still_current(sources):
            raise ApplicationError(
                "Memories of the pack were changed or erased while the adapter trained; the adapter was "
                "discarded. Start a new distillation to train on the pack as it is now."
            )
        adapter = adapter_register(
            subject=None,
            namespace=job.namespace,
            model=job.base_model,
            staging=Path(result["adapter_dir"]),
            name=f"distilled {job.namespace.key}",
            declared_base=job.base_model.fingerprint,
            source="distillation",
        )
    except Exception as exc:
        logger.exception("distillation %s failed", job.id)
        DistillationJob.objects.filter(pk=job.pk).update(
            status=JobStatus.FAILED, error=str(exc)[:2000], finished_at=timezone.now()
        )
        job.refresh_from_db()
        return job
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    finished = DistillationJob.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(
        status=JobStatus.SUCCEEDED,
        progress=1.0,
        adapter=adapter,
        finished_at=timezone.now(),
        source_tokens=result["tokens"],
        source_memories=len(cubes),
        loss=result["final_loss"],
        first_loss=result["first_loss"],
    )
    if not finished:  # an erasure retired the job while it trained: its adapter must not serve
        from inference.services.purge import adapters_retire

        adapters_retire(adapters=[adapter], reason="trained while its source memories were erased")
    job.refresh_from_db()
    return job
