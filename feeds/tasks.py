"""Celery tasks of the delivery engine. They take ids, call the engine imported inside the body, and are
safe to run twice (a second drain finds the destination leased or nothing due)."""

from __future__ import annotations

from typing import Any

from celery import shared_task


@shared_task(
    name="feeds.tasks.delivery_drain_task",
    acks_late=True,  # a worker killed mid-drain leaves the message to be delivered again
    reject_on_worker_lost=True,  # ... also when only its pool process died
    ignore_result=True,
)
def delivery_drain_task(destination_id: str) -> dict[str, Any]:
    """Send what is due for one destination, in order."""
    from feeds.delivery.engine import destination_drain

    return destination_drain(destination_id=destination_id)


@shared_task(
    name="feeds.tasks.delivery_drain_batch_task",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def delivery_drain_batch_task(destination_ids: list[str]) -> int:
    """Drain several destinations one after the other (a fan-out sends a few of these rather than a
    message per destination). Each keeps its own lease and order; returns the attempts made."""
    from feeds.delivery.engine import destination_drain

    return sum(int(destination_drain(destination_id=d)["attempts"]) for d in destination_ids)


@shared_task(name="feeds.tasks.delivery_sweep", ignore_result=True)
def delivery_sweep() -> int:
    """Beat's safety net: a drain for every destination with due work that no worker holds."""
    from feeds.delivery.engine import deliveries_sweep

    return deliveries_sweep()
