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


def audit_record(*, actor: Any, operation: str, namespace: Any = None, object_type: str = "",
                 object_ids: list[str] | None = None, memory_kind: str = "",
                 details: dict[str, Any] | None = None) -> AuditEvent:
    """Append one entry. `actor` is a policy Subject, a user, or None (the system)."""
    user = getattr(actor, "user", actor)
    label = getattr(user, "username", "") or ("system" if user is None else str(user))
    with transaction.atomic():
        head, _ = AuditChainHead.objects.select_for_update().get_or_create(pk=1)
        event = AuditEvent(
            seq=head.seq + 1, at=timezone.now(),
            actor=user if getattr(user, "pk", None) and getattr(user, "is_authenticated", False) else None,
            actor_label=label, operation=operation, namespace=namespace,
            namespace_key=getattr(namespace, "key", ""),
            organization_id=getattr(namespace, "organization_id", None),
            owner_user_id=getattr(namespace, "owner_user_id", None),
            object_type=object_type, object_ids=list(object_ids or [])[:1000], memory_kind=memory_kind,
            details=details or {}, prev_hash=head.hash,
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


def audit_verify(*, chunk: int = 2000) -> ChainBreak | None:
    """Walk the chain in order; report the first entry whose link or content does not check out."""
    prev_hash, expected_seq = GENESIS, 1
    events: Iterator[AuditEvent] = AuditEvent.objects.order_by("seq").iterator(chunk_size=chunk)
    for event in events:
        if event.seq != expected_seq:
            return ChainBreak(expected_seq, f"entry {expected_seq} is missing (next entry is {event.seq})")
        if event.prev_hash != prev_hash:
            return ChainBreak(event.seq, "previous-hash link does not match the entry before it")
        if event_hash(event) != event.hash:
            return ChainBreak(event.seq, "entry content does not match its hash (edited)")
        prev_hash, expected_seq = event.hash, expected_seq + 1
    head = AuditChainHead.objects.filter(pk=1).first()
    if head and head.seq != expected_seq - 1:
        return ChainBreak(expected_seq, f"chain ends at {expected_seq - 1} but the head says {head.seq} "
                                        "(entries removed from the end)")
    return None
