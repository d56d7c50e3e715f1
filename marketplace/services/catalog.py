"""The catalog: listings in the search index (owned by the catalog work; this is its entry point)."""

from __future__ import annotations

from typing import Any


def catalog_sync_enqueue(pack_id: Any) -> None:
    """Bring the pack's listing entry in the search index up to date (after create, edit or release)."""
