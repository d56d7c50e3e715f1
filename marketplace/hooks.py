"""Hooks the marketplace exposes to the layers above it (inference, feeds, MIP): a callback registry.

Inference registers in its `AppConfig.ready()` to load a pack's LoRA adapters and schedule KV builds when
an installation becomes ready, and to drop them when it is suspended or removed; the marketplace never
imports inference.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstallationEvent:
    """`kind`: ready (installed or upgraded), suspended (licence no longer usable), resumed, removed."""

    kind: str
    installation_id: str
    namespace_id: str
    reason: str = ""


InstallationHook = Callable[[InstallationEvent], None]

_hooks: list[InstallationHook] = []


def register_installation_hook(fn: InstallationHook) -> None:
    """Register `fn` for every installation event; registering twice keeps one entry."""
    if fn not in _hooks:
        _hooks.append(fn)


def unregister_installation_hook(fn: InstallationHook) -> None:
    if fn in _hooks:
        _hooks.remove(fn)


def run_installation_hooks(event: InstallationEvent) -> None:
    """Run every hook; a failing hook does not stop the others, and the first error is raised after."""
    errors: list[Exception] = []
    for fn in list(_hooks):
        try:
            fn(event)
        except Exception as exc:
            logger.exception("installation hook %r failed for %s", fn, event)
            errors.append(exc)
    if errors:
        raise errors[0]


# --- pack events (feeds) ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PackEvent:
    """A change on a pack that its feed records. `kind`: `release.published` (with `release_id`),
    `terms.changed` (with the changed fields and their new values in `details`), `pack.withdrawn`
    (the publisher unlisted it). Raised inside the transaction that makes the change."""

    kind: str
    pack_id: str
    release_id: str = ""
    details: dict | None = None


PackHook = Callable[[PackEvent], None]

_pack_hooks: list[PackHook] = []


def register_pack_hook(fn: PackHook) -> None:
    """Register `fn` for every pack event; registering twice keeps one entry."""
    if fn not in _pack_hooks:
        _pack_hooks.append(fn)


def unregister_pack_hook(fn: PackHook) -> None:
    if fn in _pack_hooks:
        _pack_hooks.remove(fn)


def run_pack_hooks(event: PackEvent) -> None:
    """Run every hook in the caller's transaction. Unlike installation hooks, an error propagates: the
    feed entry is written with the change or the change does not happen."""
    for fn in list(_pack_hooks):
        fn(event)
