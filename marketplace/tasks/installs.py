"""Celery tasks: installs. Tasks take ids and call a service imported inside the body; each is idempotent."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="marketplace.tasks.installs.installation_run_task", acks_late=True)
def installation_run_task(installation_id: str) -> str:
    """Copy a release into its installation (a rerun copies only what is missing); returns the status."""
    from core.errors import NotFound
    from marketplace.services.installs import installation_run

    try:
        return str(installation_run(installation_id=installation_id).status)
    except NotFound:
        return "gone"
