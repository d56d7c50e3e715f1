"""Append-only, hash-chained audit log."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from governance.models import AuditChainHead, AuditEvent

GENESIS = "0" * 64


def _canonical(event: AuditEvent) -> bytes:
    body = {
        "seq": event.seq,
        "at": event.at.isoformat(),
        "actor": str(event.actor_id) if event.actor_id else None,
        "actor_label": event.actor_label,
        "operation": event.operation,
        "namespace_key": event.namespace_key,
        "object_type": event.object_type,
        "object_ids": event.object_ids,
        "memory_kind": event.memory_kind,
        "details": event.details,
        "prev_hash": event.prev_hash,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()


def event_hash(event: AuditEvent) -> str:
    return hashlib.sha256(_canonical(event)).hexdigest()


def _actor_fields(actor: Any) -> tuple[Any, str, dict[str, Any]]:
    """(user row or None, label, context details) for a policy Subject, a user, or None (the system)."""
    from governance.policy import Subject

    if isinstance(actor, Subject):
        user = actor.user if actor.is_user else None
        extra: dict[str, Any] = dict(actor.context.as_dict())
        extra.pop("operation", None)
        if actor.token_id:
            extra["token"] = str(actor.token_id)
        return user, actor.label, extra
    if actor is None:
        return None, "system", {}
    user = actor if getattr(actor, "pk", None) and getattr(actor, "is_authenticated", False) else None
    return user, getattr(actor, "username", "") or str(actor), {}


def audit_record(
    *,
    actor: Any,
    operation: str,
    namespace: Any = None,
    object_type: str = "",
    object_ids: list[str] | None = None,
    memory_kind: str = "",
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one entry. `actor` is a policy Subject, a user, or None (the system). The subject's
    context (purpose, licence, installation) and API token id are kept with the entry."""
    user, label, context = _actor_fields(actor)
    with transaction.atomic():
        head, _ = AuditChainHead.objects.select_for_update().get_or_create(pk=1)
        event = AuditEvent(
            seq=head.seq + 1,
            at=timezone.now(),
            actor=user,
            actor_label=label[:200],
            operation=operation,
            namespace=namespace,
            namespace_key=getattr(namespace, "key", ""),
            organization_id=getattr(namespace, "organization_id", None),
            owner_user_id=getattr(namespace, "owner_user_id", None),
            object_type=object_type,
            object_ids=[str(i) for i in list(object_ids or [])[:1000]],
            memory_kind=memory_kind,
            details={**context, **(details or {})},
            prev_hash=head.hash,
        )
        event.hash = event_hash(event)
        event.save()
        head.seq, head.hash = event.seq, event.hash
        head.save(update_fields=["seq", "hash"])
    return event


@dataclass(frozen=True)
class ChainBreak:
    seq: int
    problem: str


def audit_verify(*, chunk: int = 2000, anchor: tuple[int, str] | None = None) -> ChainBreak | None:
    """Walk the chain in order; report the first entry whose link or content does not check out.

    A chain that is internally consistent can still have been rewritten wholesale by someone who
    recomputed every hash; `anchor` (a seq and the hash published for it earlier, e.g. from
    `audit_head`) catches that: the entry at that seq must still carry that hash."""
    prev_hash, expected_seq = GENESIS, 1
    events: Iterator[AuditEvent] = AuditEvent.objects.order_by("seq").iterator(chunk_size=chunk)
    for event in events:
        if event.seq != expected_seq:
            return ChainBreak(expected_seq, f"entry {expected_seq} is missing (next entry is {event.seq})")
        if event.prev_hash != prev_hash:
            return ChainBreak(
                event.seq,
                "previous-hash link does not match the entry before it "
                "(an entry was removed, inserted or moved)",
            )
        if event_hash(event) != event.hash:
            return ChainBreak(event.seq, "entry content does not match its hash (edited)")
        if anchor is not None and event.seq == anchor[0] and event.hash != anchor[1]:
            return ChainBreak(event.seq, "entry hash differs from the published anchor (chain rewritten)")
        prev_hash, expected_seq = event.hash, expected_seq + 1
    last = expected_seq - 1
    head = AuditChainHead.objects.filter(pk=1).first()
    if head and head.seq != last:
        return ChainBreak(
            last + 1, f"chain ends at {last} but the head says {head.seq} (entries removed from the end)"
        )
    if head and last and head.hash != prev_hash:
        return ChainBreak(last, "the last entry's hash differs from the head's (chain rewritten)")
    if anchor is not None and anchor[0] > last:
        return ChainBreak(last + 1, f"the anchor names entry {anchor[0]} but the chain ends at {last}")
    return None


def audit_head() -> tuple[int, str]:
    """The chain's current (seq, hash): publish it somewhere else to anchor later verifications."""
    head = AuditChainHead.objects.filter(pk=1).first()
    return (head.seq, head.hash) if head else (0, GENESIS)
