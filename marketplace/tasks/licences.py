"""Celery tasks: licences. Tasks take ids and call a service imported inside the body; each is idempotent."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="marketplace.tasks.licences.licence_sweep")
def licence_sweep() -> dict[str, int]:
    """Periodic: expired licences become EXPIRED, past-due ones past their grace SUSPENDED (idempotent)."""
    from marketplace.services.licences import licence_sweep as sweep

    return sweep()
