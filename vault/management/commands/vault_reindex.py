"""Rebuild the Milvus index from the database, the source of truth; or retry dead-lettered outbox rows."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from vault.services import index_dead_letters_retry, index_outbox_process, vault_reindex


class Command(BaseCommand):
    help = (
        "Rebuild the vector/full-text index from the database (--drop: start from an empty collection). "
        "With --retry-dead-letters, give dead-lettered outbox rows fresh attempts and process them instead."
    )

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--drop", action="store_true", help="drop the collection first")
        parser.add_argument("--batch-size", type=int, default=512)
        parser.add_argument(
            "--retry-dead-letters", action="store_true", help="retry dead-lettered outbox rows (after a fix)"
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["retry_dead_letters"]:
            retried = index_dead_letters_retry()
            applied = index_outbox_process()
            self.stdout.write(
                self.style.SUCCESS(f"Retried {retried} dead letters; {applied} outbox rows applied.")
            )
            return
        total = vault_reindex(drop=bool(opts["drop"]), batch_size=int(opts["batch_size"]))
        self.stdout.write(self.style.SUCCESS(f"Reindexed {total} live memories."))
