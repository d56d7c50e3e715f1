"""`manage.py audit_anchor`: sign every audit chain's head now (Celery beat does it periodically)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from governance.audit import audit_anchor_create, audit_anchor_latest


class Command(BaseCommand):
    help = (
        "Write a signed anchor over every audit chain's head (the Merkle root, signed with the instance key)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--force", action="store_true", help="Anchor even if nothing was written since the last anchor."
        )

    def handle(self, *args: object, **options: object) -> None:
        try:
            anchor = audit_anchor_create(force=bool(options.get("force")))
        except RuntimeError as exc:
            raise CommandError(str(exc)) from exc
        if anchor is None:
            latest = audit_anchor_latest()
            self.stdout.write(
                f"Nothing new since anchor #{latest.id}."
                if latest
                else "Nothing to anchor: the log is empty."
            )
            return
        self.stdout.write(
            f"Anchor #{anchor.id}: {anchor.chains} chains, {anchor.entries} entries, root {anchor.root}, "
            f"signed by {anchor.key_id}."
        )
