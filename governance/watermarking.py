"""Watermarking on the platform: per-source keys, per-installation assignments, embedding into the copies
an installation receives, and detection of which installation leaked a text.

The algorithm lives in `governance.watermark` (plain Python). Here:
- `WatermarkKey`: one secret per source (publisher) namespace, made on first use;
- `watermark_assign(...)`: called by the marketplace's install path; the installation's watermark id is
  what its memories carry in `MemCube.watermark_id`;
- `watermark_embed(...)`: the installation's copy of the items to import (keyed lexical variants, a
  zero-width layer, and a few canary memories);
- `watermark_detect(...)`: leaked text in; the most likely installation, its score and the probability
  that an innocent installation scores as high (Bonferroni-corrected over every candidate) out.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import IntegrityError, transaction

from accounts.models import Namespace
from core.errors import ApplicationError, Conflict, NotFound, PermissionDenied
from governance.audit import audit_record
from governance.models import WatermarkAssignment, WatermarkKey
from governance.policy import Action, Subject, authorize, namespace_actions
from vault.models import MemoryKind

DEFAULT_ALPHA = 1e-3
DEFAULT_CANARIES = 3
MAX_LEAK_CHARS = 500_000
WATERMARK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


def _wm() -> Any:
    import governance.watermark as wm  # numpy, safetensors and the lexicon load on first use

    return wm


def watermark_key(namespace: Namespace) -> bytes:
    """The namespace's watermark secret, made on first use."""
    row = WatermarkKey.objects.filter(namespace=namespace).first()
    if row is None:
        try:
            with transaction.atomic():
                row = WatermarkKey.objects.create(namespace=namespace, key_hex=secrets.token_hex(32))
        except IntegrityError:  # made concurrently: use theirs
            row = WatermarkKey.objects.get(namespace=namespace)
    return bytes.fromhex(row.key_hex)


@transaction.atomic
def watermark_assign(
    *,
    source_namespace: Namespace,
    installation_id: str,
    installation_namespace: Namespace | None = None,
    canaries: int = DEFAULT_CANARIES,
) -> WatermarkAssignment:
    """Register an installation's watermark (idempotent). `installation_id` is the id its copies are keyed
    by and carry in `MemCube.watermark_id` (the marketplace's `Installation.watermark_id`)."""
    if not isinstance(installation_id, str) or not WATERMARK_ID.match(installation_id):
        raise ApplicationError("A watermark id is 1-64 letters, digits, '.', '_', ':' or '-'.")
    if not 0 <= canaries <= 10:
        raise ApplicationError("'canaries' must be between 0 and 10.")
    existing = WatermarkAssignment.objects.filter(watermark_id=installation_id).first()
    if existing is not None:
        if existing.source_namespace_id != source_namespace.pk:
            raise Conflict(f"Watermark id '{installation_id}' is assigned under another namespace.")
        return existing
    watermark_key(source_namespace)
    assignment = WatermarkAssignment(
        watermark_id=installation_id,
        source_namespace=source_namespace,
        installation_namespace=installation_namespace,
        canaries=canaries,
    )
    assignment.full_clean(exclude=["source_namespace", "installation_namespace"])
    assignment.save()
    audit_record(
        actor=None,
        operation="watermark.assign",
        namespace=source_namespace,
        object_type="installation",
        object_ids=[installation_id],
        details={"installation_namespace": getattr(installation_namespace, "key", ""), "canaries": canaries},
    )
    return assignment


# Every install of a pack builds the same vocabulary from the same texts: keep the last few packs'.
_VOCABULARY_CACHE: dict[str, tuple[str, ...]] = {}
_VOCABULARY_CACHE_SIZE = 8


def _pack_vocabulary(texts: list[str]) -> tuple[str, ...]:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    key = digest.hexdigest()
    vocabulary = _VOCABULARY_CACHE.get(key)
    if vocabulary is None:
        vocabulary = tuple(_wm().pack_vocabulary(texts))
        if len(_VOCABULARY_CACHE) >= _VOCABULARY_CACHE_SIZE:
            _VOCABULARY_CACHE.pop(next(iter(_VOCABULARY_CACHE)))
        _VOCABULARY_CACHE[key] = vocabulary
    return vocabulary


def watermark_embed(*, assignment: WatermarkAssignment, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The installation's copy of memory items (dicts as `memory_import_batch` takes them): plaintext
    texts watermarked, plus `assignment.canaries` canary memories written in the pack's own nouns and
    dressed like the first plaintext item (same tags, source and licence). Canary items carry
    `"canary": True`, which the vault keeps as `MemCube.is_canary` (out of search and prompts, never shown
    in API output). Other kinds pass through unchanged. Items are not modified in place."""
    wm = _wm()
    key = watermark_key(assignment.source_namespace)
    out: list[dict[str, Any]] = []
    template: dict[str, Any] | None = None
    originals: list[str] = []
    for item in items:
        item = dict(item)
        if item.get("kind", MemoryKind.PLAINTEXT) == MemoryKind.PLAINTEXT and item.get("text"):
            originals.append(item["text"])
            item["text"] = wm.watermark_text(item["text"], key=key, installation_id=assignment.watermark_id)
            template = template or item
        out.append(item)
    if assignment.canaries and template is not None:
        for text in wm.canary_memories(
            key=key,
            installation_id=assignment.watermark_id,
            count=assignment.canaries,
            vocabulary=_pack_vocabulary(originals),
        ):
            out.append(
                {
                    "kind": MemoryKind.PLAINTEXT,
                    "text": text,
                    "canary": True,
                    **{k: template[k] for k in ("tags", "source", "licence", "language") if k in template},
                }
            )
    return out


@dataclass
class Attribution:
    installation_id: str | None  # set only when the evidence clears alpha
    most_likely: WatermarkAssignment | None
    score: float = 0.0
    matches: int = 0
    slots: int = 0
    p_value: float = 1.0
    adjusted_p_value: float = 1.0  # probability that an innocent installation scores as high
    alpha: float = DEFAULT_ALPHA
    candidates: int = 0
    layers: dict[str, Any] = field(default_factory=dict)
    ranking: list[dict[str, Any]] = field(default_factory=list)

    @property
    def accused(self) -> bool:
        return self.installation_id is not None


def _sources(actor: Subject, namespace_keys: Sequence[str] | None) -> list[Namespace]:
    if namespace_keys:
        found = {ns.key: ns for ns in Namespace.objects.filter(key__in=namespace_keys)}
        out = []
        for key in dict.fromkeys(namespace_keys):
            ns = found.get(key)
            if ns is None:
                raise NotFound(f"Namespace '{key}' not found.")
            authorize(subject=actor, action=Action.ADMIN, namespace=ns)
            out.append(ns)
        return out
    with_assignments = Namespace.objects.filter(
        pk__in=WatermarkAssignment.objects.values("source_namespace_id")
    ).select_related("organization")
    return [ns for ns in with_assignments if Action.ADMIN in namespace_actions(actor, ns)]


def watermark_detect(
    *, actor: Subject, text: str, namespace_keys: Sequence[str] | None = None, alpha: float = DEFAULT_ALPHA
) -> Attribution:
    """Attribute leaked text to one installation of the caller's source namespaces (those named, or every
    one the caller administers), or to nobody. Needs admin rights on those namespaces."""
    if not isinstance(text, str) or not text.strip():
        raise ApplicationError("'text' must not be empty.")
    if len(text) > MAX_LEAK_CHARS:
        raise ApplicationError(f"'text' takes at most {MAX_LEAK_CHARS} characters.", code="too_large")
    if not 0.0 < alpha < 1.0:
        raise ApplicationError("'alpha' must lie between 0 and 1.")
    if not actor.has_scope("governance"):
        raise PermissionDenied("This API token lacks the 'governance' scope.")
    sources = _sources(actor, namespace_keys)
    wm = _wm()
    groups: dict[tuple[Any, int], list[WatermarkAssignment]] = {}
    for a in (
        WatermarkAssignment.objects.filter(source_namespace__in=sources)
        .select_related("source_namespace", "installation_namespace")
        .order_by("created_at", "id")
    ):
        groups.setdefault((a.source_namespace_id, a.canaries), []).append(a)
    total = sum(len(g) for g in groups.values())
    result = Attribution(None, None, alpha=alpha, candidates=total)
    by_id: dict[str, WatermarkAssignment] = {}
    best: tuple[float, int, Any, Any] | None = None  # (p, -matches, attribution, candidate score)
    ranking: list[tuple[float, dict[str, Any]]] = []
    observations: dict[Any, Any] = {}
    for (ns_id, canaries), assignments in groups.items():
        key = watermark_key(assignments[0].source_namespace)
        if ns_id not in observations:
            observations[ns_id] = wm.observe(text, key=key)
        by_id.update({a.watermark_id: a for a in assignments})
        att = wm.detect_text(
            text,
            key=key,
            candidates=[a.watermark_id for a in assignments],
            alpha=alpha,
            canaries=canaries,
            observation=observations[ns_id],
        )
        for c in att.ranking:
            ranking.append(
                (
                    c.p_value,
                    {
                        "installation_id": c.installation_id,
                        "matches": c.matches,
                        "slots": c.slots,
                        "p_value": c.p_value,
                        "canary_hit": c.canary_hit,
                    },
                )
            )
        if att.ranking:
            top = att.ranking[0]
            if best is None or (top.p_value, -top.matches) < best[:2]:
                best = (top.p_value, -top.matches, att, top)
    if best is not None:
        _, _, att, top = best
        result.most_likely = by_id[top.installation_id]
        result.score, result.matches, result.slots = top.score, top.matches, top.slots
        result.p_value = top.p_value
        result.adjusted_p_value = min(1.0, top.p_value * max(1, total))
        result.layers = att.layers
        result.installation_id = top.installation_id if result.adjusted_p_value <= alpha else None
    result.ranking = [r for _, r in sorted(ranking, key=lambda pr: (pr[0], -pr[1]["matches"]))[:5]]
    digest = hashlib.sha256(text.encode()).hexdigest()
    for ns in sources:
        audit_record(
            actor=actor,
            operation="watermark.detect",
            namespace=ns,
            object_type="installation",
            object_ids=[result.installation_id] if result.installation_id else [],
            details={
                "text_sha256": digest,
                "chars": len(text),
                "candidates": total,
                "adjusted_p_value": result.adjusted_p_value,
                "accused": result.accused,
            },
        )
    return result
