"""Hooks the vault exposes to the layers above it (a callback registry, not an import of theirs).

Apps that derive artifacts from memory text (KV caches, adapter training records, distillation inputs)
register a purge hook in their `AppConfig.ready()`; `vault.services.memory_purge` calls every hook after
it has removed the text from the vault, so derived copies of an erased memory go too.

The marketplace registers a use gate and a use meter: licensed (installation) memory is checked and
counted where it is used (search, lists, reads, chat, KV prefixes, adapters).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

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


# --- use gates and meters -------------------------------------------------------------------------------
#
# Memory in an installation namespace is licensed: the marketplace decides, at the moment of use, whether
# the caller may use it (licence status and expiry, seat, quota, form) and counts what was used. The vault
# (and inference) ask through these registries, so neither imports the marketplace.

# A gate: (actor, installation namespaces, form) -> {namespace id: the error refusing it}. Namespaces
# left out of the answer are allowed. The errors are ApplicationErrors (402) with a clear message.
UseGate = Callable[..., dict[Any, Exception]]
# A meter: (actor, {namespace id: count}, kind) -> {namespace id: count granted}. `kind` is one of
# retrievals, chats, kv_uses, adapter_uses; retrievals may be granted in part (a quota running out).
UseMeter = Callable[..., dict[Any, int]]

_use_gates: list[UseGate] = []
_use_meters: list[UseMeter] = []

FORM_PLAINTEXT = "plaintext"


def register_use_gate(fn: UseGate) -> None:
    if fn not in _use_gates:
        _use_gates.append(fn)


def unregister_use_gate(fn: UseGate) -> None:
    if fn in _use_gates:
        _use_gates.remove(fn)


def register_use_meter(fn: UseMeter) -> None:
    if fn not in _use_meters:
        _use_meters.append(fn)


def unregister_use_meter(fn: UseMeter) -> None:
    if fn in _use_meters:
        _use_meters.remove(fn)


def _licensed(namespaces: Iterable[Any]) -> list[Any]:
    from accounts.models import NamespaceKind

    return [ns for ns in namespaces if getattr(ns, "kind", None) == NamespaceKind.INSTALLATION]


def use_refusals(
    *, actor: Any, namespaces: Iterable[Any], form: str = FORM_PLAINTEXT
) -> dict[Any, Exception]:
    """Which of `namespaces` the caller may not use in `form` now, each with the error saying why. Only
    installation namespaces are asked about. A gate that raises is not caught: the read fails rather
    than hand out licensed memory unchecked."""
    licensed = _licensed(namespaces)
    if not licensed or not _use_gates:
        return {}
    refused: dict[Any, Exception] = {}
    for fn in list(_use_gates):
        for ns_id, error in fn(actor=actor, namespaces=licensed, form=form).items():
            refused.setdefault(ns_id, error)
    return refused


def use_record(*, actor: Any, counts: Mapping[Any, int], kind: str) -> dict[Any, int]:
    """Meter uses per namespace id; returns how many were granted per namespace (all, when no meter
    is registered or the namespace is not licensed)."""
    wanted = {k: v for k, v in counts.items() if v}
    granted = dict(wanted)
    for fn in list(_use_meters):
        for ns_id, n in fn(actor=actor, counts=wanted, kind=kind).items():
            granted[ns_id] = min(granted.get(ns_id, n), n)
    return granted
