"""Celery tasks for the `inference` queue (routed by CELERY_TASK_ROUTES "inference.tasks.*").

They take ids (or a plain JSON payload for generation), call a service, and are safe to run twice:
a ready artifact or finished job is left alone. In production one worker per GPU consumes this queue
(`celery -A config worker -Q inference -c 1`); the model is loaded once per worker process.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task


@shared_task(name="inference.tasks.kv_artifact_build_task", acks_late=True)
def kv_artifact_build_task(artifact_id: str) -> str:
    from core.errors import NotFound
    from inference.services import kv_artifact_build

    try:
        return str(kv_artifact_build(artifact_id=artifact_id).status)
    except NotFound:  # deleted before the task ran (an erasure took it): nothing to build
        return "gone"


@shared_task(name="inference.tasks.installation_artifacts_task", acks_late=True)
def installation_artifacts_task(installation_id: str) -> dict[str, Any]:
    """A marketplace installation became ready: its adapters, watermarked, and its KV prefix builds."""
    from inference.services.adapters import installation_artifacts_sync

    return installation_artifacts_sync(installation_id=installation_id)


@shared_task(name="inference.tasks.kv_demote_cold_task")
def kv_demote_cold_task() -> int:
    from inference.services import kv_artifacts_demote_cold

    return kv_artifacts_demote_cold()


@shared_task(name="inference.tasks.distillation_run_task", acks_late=True)
def distillation_run_task(job_id: str) -> str:
    from core.errors import NotFound
    from inference.services import distillation_run

    try:
        return str(distillation_run(job_id=job_id).status)
    except NotFound:
        return "gone"


@shared_task(name="inference.tasks.chat_generate_task")
def chat_generate_task(payload: dict[str, Any]) -> dict[str, Any]:
    """Generation for a request the web process scheduled (queue mode). Returns the worker summary."""
    from inference.worker import chat_run

    return chat_run(payload)
