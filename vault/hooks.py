"""Hooks the vault exposes to the layers above it (a callback registry, not an import of theirs).

Apps that derive artifacts from memory text (KV caches, adapter training records, distillation inputs)
register a purge hook in their `AppConfig.ready()`; `vault.services.memory_purge` calls every hook after
it has removed the text from the vault, so derived copies of an erased memory go too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PurgeEvent:
    """Which memories were erased. Carries identities and hashes only, never the erased text."""

    namespace_id: str
    cube_ids: tuple[str, ...]
    provenance_ids: tuple[str, ...]
    content_sha256s: tuple[str, ...]


PurgeHook = Callable[[PurgeEvent], None]

_purge_hooks: list[PurgeHook] = []


def register_purge_hook(fn: PurgeHook) -> None:
    """Register `fn` to run on every purge. Registering the same function twice keeps one entry
    (`ready()` may run more than once, e.g. in tests)."""
    if fn not in _purge_hooks:
        _purge_hooks.append(fn)


def unregister_purge_hook(fn: PurgeHook) -> None:
    """Remove a hook registered earlier (a test's, say); one never registered is ignored."""
    if fn in _purge_hooks:
        _purge_hooks.remove(fn)


def run_purge_hooks(event: PurgeEvent) -> None:
    """Run every registered hook. A failing hook must not leave the others unrun, and an erasure that
    left a derived copy behind must not pass silently: every hook runs, then the first error is raised."""
    errors: list[Exception] = []
    for fn in list(_purge_hooks):
        try:
            fn(event)
        except Exception as exc:
            logger.exception("purge hook %r failed for cubes %s", fn, event.cube_ids)
            errors.append(exc)
    if errors:
        raise errors[0]
