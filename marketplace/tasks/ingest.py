"""Celery tasks: ingest. Tasks take ids and call a service imported inside the body; each is idempotent."""

from __future__ import annotations
