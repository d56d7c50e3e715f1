"""Rebuild the Milvus index from the database, the source of truth."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from vault.services import vault_reindex


class Command(BaseCommand):
    help = (
        "Rebuild the vector/full-text index from the database (use --drop to start from an empty collection)."
    )

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--drop", action="store_true", help="drop the collection first")
        parser.add_argument("--batch-size", type=int, default=512)

    def handle(self, *args: Any, **opts: Any) -> None:
        total = vault_reindex(drop=bool(opts["drop"]), batch_size=int(opts["batch_size"]))
        self.stdout.write(self.style.SUCCESS(f"Reindexed {total} live memories."))
