"""Marketplace Celery tasks (autodiscovered as `marketplace.tasks`), a module per area."""

from marketplace.tasks import catalog, ingest, installs, licences, payments, releases

__all__ = ["catalog", "ingest", "installs", "licences", "payments", "releases"]
