"""Celery tasks: catalog. Tasks take ids and call a service imported inside the body; each is idempotent."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="marketplace.tasks.catalog.catalog_sync", ignore_result=True)
def catalog_sync_task(pack_id: str) -> None:
    """Bring one pack's catalog entry up to date. Safe to run twice: it writes what the pack says now."""
    from marketplace.services.catalog import catalog_sync

    catalog_sync(pack_id=pack_id)


@shared_task(name="marketplace.tasks.catalog.catalog_reindex", ignore_result=True)
def catalog_reindex_task() -> dict[str, int]:
    """Re-sync every catalog entry and rating aggregate (a periodic repair; safe to run any time)."""
    from marketplace.services.catalog import catalog_reindex

    return catalog_reindex()
