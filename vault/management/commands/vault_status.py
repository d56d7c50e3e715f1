"""How far the index lags the database: pending outbox rows, the oldest one, and the last error."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand
from django.utils import timezone

from vault.models import IndexOutbox


class Command(BaseCommand):
    help = "Report index outbox backlog as JSON (non-zero exit with --fail-if-pending when behind)."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--fail-if-pending", action="store_true")

    def handle(self, *args: Any, **opts: Any) -> None:
        pending = IndexOutbox.objects.filter(processed_at__isnull=True)
        oldest = pending.order_by("id").first()
        failing = pending.exclude(last_error="").order_by("-id").first()
        report = {
            "pending": pending.count(),
            "oldest_pending_age_s": round((timezone.now() - oldest.created_at).total_seconds(), 1)
            if oldest
            else 0,
            "last_error": failing.last_error[:500] if failing else "",
        }
        self.stdout.write(json.dumps(report))
        if opts["fail_if_pending"] and report["pending"]:
            raise SystemExit(1)
