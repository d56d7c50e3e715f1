"""`manage.py lifecycle_sweep`: run the TTL expiry and cold-archival sweeps now (beat runs them too)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandParser

from governance.lifecycle import lifecycle_archive_cold, lifecycle_expire_due


class Command(BaseCommand):
    help = "Expire memories whose TTL has passed and archive memories nobody has read for a while."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days",
            type=int,
            default=None,
            help="Archive after this many days unread (default MEMHUB_ARCHIVE_AFTER_DAYS or 90).",
        )
        parser.add_argument("--skip-archive", action="store_true")

    def handle(self, *args: object, **options: object) -> None:
        expired = lifecycle_expire_due()
        days = options.get("days")
        archived = 0 if options.get("skip_archive") else lifecycle_archive_cold(days=days)  # type: ignore[arg-type]
        self.stdout.write(f"expired {expired}, archived {archived}")
