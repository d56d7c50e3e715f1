"""How far the index lags the database: due, waiting and dead-lettered outbox rows, and the last error."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand
from django.utils import timezone

from vault.models import IndexOutbox
from vault.selectors import index_dead_letters


class Command(BaseCommand):
    help = (
        "Report the index outbox as JSON: pending rows (waiting ones are backing off after a failure), "
        "dead letters (retry them with `vault_reindex --retry-dead-letters` or the admin API). "
        "Exits non-zero with --fail-if-pending when behind or when there are dead letters."
    )

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--fail-if-pending", action="store_true")
        parser.add_argument("--dead-letters", type=int, default=5, help="how many dead letters to show")

    def handle(self, *args: Any, **opts: Any) -> None:
        now = timezone.now()
        pending = IndexOutbox.objects.filter(processed_at__isnull=True, dead_lettered_at__isnull=True)
        oldest = pending.order_by("id").first()
        failing = pending.exclude(last_error="").order_by("-last_attempt_at", "-id").first()
        dead = index_dead_letters()
        report = {
            "pending": pending.count(),
            "waiting_retry": pending.filter(next_attempt_at__gt=now).count(),
            "oldest_pending_age_s": round((now - oldest.created_at).total_seconds(), 1) if oldest else 0,
            "last_error": failing.last_error[:500] if failing else "",
            "dead_letters": dead.count(),
            "dead_letter_samples": [
                {
                    "id": row.id,
                    "cube_id": str(row.cube_id),
                    "op": row.op,
                    "attempts": row.attempts,
                    "error": row.last_error[:300],
                    "dead_lettered_at": row.dead_lettered_at.isoformat() if row.dead_lettered_at else None,
                }
                for row in dead[: max(0, int(opts["dead_letters"]))]
            ],
        }
        self.stdout.write(json.dumps(report))
        if opts["fail_if_pending"] and (report["pending"] or report["dead_letters"]):
            raise SystemExit(1)
