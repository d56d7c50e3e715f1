"""Governance reads: the audit log query (LogQuery) and its exports."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connection
from django.db.models import Q, QuerySet

from accounts.models import Namespace
from core.errors import ApplicationError, NotFound, PermissionDenied
from core.exceptions import deny_target
from core.timeparse import parse_instant
from governance.models import AuditEvent
from governance.policy import Action, Subject, audit_visible_q, namespace_actions
from vault.models import MemoryKind

EXPORT_COLUMNS = (
    "seq",
    "chain",
    "chain_seq",
    "at",
    "actor",
    "operation",
    "namespace",
    "object_type",
    "object_ids",
    "memory_kind",
    "details",
    "prev_hash",
    "hash",
)
MAX_OPERATIONS = 20


@dataclass
class AuditFilter:
    since: datetime | None = None
    until: datetime | None = None
    actors: list[str] = field(default_factory=list)
    operations: list[str] = field(default_factory=list)  # exact, or a prefix ending in '*'
    memory_kind: str = ""
    namespace: str = ""
    memory: str = ""


def _when(name: str, raw: str) -> datetime:
    parsed = parse_instant(raw)
    if parsed is None:
        raise ApplicationError(
            f"'{name}' must be an ISO-8601 date-time, e.g. 2024-05-01T00:00:00Z.", code="invalid_filter"
        )
    return parsed


def audit_filter_parse(
    *,
    since: str | None = None,
    until: str | None = None,
    actors: list[str] | None = None,
    operations: list[str] | None = None,
    memory_kind: str | None = None,
    namespace: str | None = None,
    memory: str | None = None,
) -> AuditFilter:
    f = AuditFilter(actors=[a for a in (actors or []) if a], namespace=namespace or "", memory=memory or "")
    if since:
        f.since = _when("from", since)
    if until:
        f.until = _when("to", until)
    if f.since and f.until and f.since >= f.until:
        raise ApplicationError("'from' must be earlier than 'to'.", code="invalid_filter")
    ops = [o for o in (operations or []) if o]
    if len(ops) > MAX_OPERATIONS:
        raise ApplicationError(f"At most {MAX_OPERATIONS} 'operation' values.", code="invalid_filter")
    for op in ops:
        if "*" in op[:-1] or not op.replace(".", "").replace("_", "").rstrip("*").isalnum():
            raise ApplicationError(
                f"'{op}' is not an operation name (e.g. memory.read or memory.*).", code="invalid_filter"
            )
    f.operations = ops
    if memory_kind:
        if memory_kind not in MemoryKind.values:
            raise ApplicationError(
                f"Unknown memory_kind '{memory_kind}'; expected one of {', '.join(MemoryKind.values)}.",
                code="invalid_filter",
            )
        f.memory_kind = memory_kind
    return f


def _memory_q(memory_id: str) -> Q:
    if connection.vendor == "postgresql":
        return Q(object_ids__contains=[memory_id])
    return Q(object_ids__icontains=json.dumps(memory_id))


def audit_list(*, actor: Subject, f: AuditFilter, ascending: bool = False) -> QuerySet[AuditEvent]:
    """Entries the caller may see (the policy's `audit_visible_q`), filtered; newest first by default."""
    if not actor.has_scope("governance"):
        raise PermissionDenied("This API token lacks the 'governance' scope.")
    qs = AuditEvent.objects.filter(audit_visible_q(actor))
    if f.namespace:
        ns = Namespace.objects.filter(key=f.namespace).first()
        actions = namespace_actions(actor, ns) if ns else set()
        if ns is None:
            raise NotFound(f"Namespace '{f.namespace}' not found.")
        if Action.READ not in actions:
            # The owners see who tried to read their log; the caller sees the same 404 as for no namespace.
            raise deny_target(NotFound(f"Namespace '{f.namespace}' not found."), namespace=ns)
        if Action.ADMIN not in actions:
            raise deny_target(
                PermissionDenied(f"Only the owners and admins of '{f.namespace}' see its audit log."),
                namespace=ns,
            )
        qs = qs.filter(namespace_key=f.namespace)
    if f.since:
        qs = qs.filter(at__gte=f.since)
    if f.until:
        qs = qs.filter(at__lt=f.until)
    if f.actors:
        qs = qs.filter(actor_label__in=f.actors)
    if f.operations:
        op_q = Q()
        for op in f.operations:
            op_q |= Q(operation__startswith=op[:-1]) if op.endswith("*") else Q(operation=op)
        qs = qs.filter(op_q)
    if f.memory_kind:
        qs = qs.filter(memory_kind=f.memory_kind)
    if f.memory:
        qs = qs.filter(_memory_q(f.memory))
    return qs.order_by("seq" if ascending else "-seq")


def audit_row(event: AuditEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "chain": event.chain,
        "chain_seq": event.chain_seq,
        "at": event.at.isoformat(),
        "actor": event.actor_label,
        "operation": event.operation,
        "namespace": event.namespace_key,
        "object_type": event.object_type,
        "object_ids": event.object_ids,
        "memory_kind": event.memory_kind,
        "details": event.details,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


def audit_export_jsonl(qs: QuerySet[AuditEvent]) -> Iterator[str]:
    for event in qs.iterator(chunk_size=1000):
        yield json.dumps(audit_row(event), sort_keys=True, default=str) + "\n"


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    # A spreadsheet would run a cell starting with one of these as a formula (CSV injection).
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def audit_export_csv(qs: QuerySet[AuditEvent]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def flush() -> str:
        out = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate(0)
        return out

    writer.writerow(EXPORT_COLUMNS)
    yield flush()
    for event in qs.iterator(chunk_size=1000):
        row = audit_row(event)
        row["object_ids"] = " ".join(row["object_ids"])
        writer.writerow(
            [
                _cell(row[c]) if c in ("actor", "details", "object_ids", "namespace") else row[c]
                for c in EXPORT_COLUMNS
            ]
        )
        yield flush()
