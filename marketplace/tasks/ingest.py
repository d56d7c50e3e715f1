"""Celery tasks: ingest. Tasks take ids and call a service imported inside the body; each is idempotent."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="marketplace.tasks.ingest.pack_upload_process", ignore_result=True)
def pack_upload_process_task(upload_id: str) -> str:
    """Turn a pending pack upload into memories (a second run finds it claimed or finished and stops)."""
    from marketplace.services.studio import pack_upload_process

    return str(pack_upload_process(upload_id=upload_id).status)
