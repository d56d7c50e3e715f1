"""Memory lifecycle: generated -> activated -> merged / archived / expired, and freezing.

Every state change is a new immutable version (operation `lifecycle` or `merge`), an index outbox row
(archived, expired and merged memories leave the hot index; a restore puts them back) and an audit entry.
A frozen memory refuses every change but `unfreeze` with 409; so does a transition its state does not
allow. The periodic sweeps (TTL expiry, archival of cold memories) are idempotent: they re-check each
memory under its row lock, skip frozen ones, and running them twice changes nothing the second time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from core.errors import ApplicationError, Conflict, NotFound
from governance.audit import audit_record
from governance.policy import Action, Subject, authorize, authorize_memory
from vault.models import LIVE_STATES, MemCube, MemoryKind, MemoryState, Sensitivity, VersionOperation
from vault.services import memory_frozen_set, memory_lock, memory_merge_write, memory_state_set

logger = logging.getLogger(__name__)

S = MemoryState
# action -> (states it may start from, state it leads to)
TRANSITIONS: dict[str, tuple[frozenset[str], str]] = {
    "activate": (frozenset({S.GENERATED}), S.ACTIVATED),
    "archive": (frozenset({S.GENERATED, S.ACTIVATED, S.MERGED}), S.ARCHIVED),
    "restore": (frozenset({S.ARCHIVED, S.EXPIRED, S.MERGED}), S.ACTIVATED),
    "expire": (frozenset({S.GENERATED, S.ACTIVATED, S.MERGED, S.ARCHIVED}), S.EXPIRED),
}
FLAG_ACTIONS = ("freeze", "unfreeze")
LIFECYCLE_ACTIONS = (*TRANSITIONS, *FLAG_ACTIONS)
MAX_MERGE_SOURCES = 100
SWEEP_CHUNK = 500
SENSITIVITY_ORDER: list[str] = [
    Sensitivity.PUBLIC,
    Sensitivity.INTERNAL,
    Sensitivity.CONFIDENTIAL,
    Sensitivity.RESTRICTED,
]


def archive_after_days() -> int:
    return int(getattr(settings, "MEMHUB_ARCHIVE_AFTER_DAYS", 90))


@transaction.atomic
def memory_transition(
    *,
    actor: Subject,
    cube_id: Any,
    action: str,
    expected_version: int | None = None,
    reason: str = "",
    expires_at: datetime | None = None,
) -> MemCube:
    """Apply one lifecycle action. Needs admin rights on the memory's namespace.

    `restore` brings an archived, expired or merged memory back to `activated` (and into the index); an
    expired one gets `expires_at` (which must lie ahead) or none, so the TTL sweep does not take it again.
    """
    if action not in LIFECYCLE_ACTIONS:
        raise ApplicationError(
            f"Unknown lifecycle action '{action}'; expected one of {', '.join(LIFECYCLE_ACTIONS)}."
        )
    now = timezone.now()
    if expires_at is not None and (action != "restore" or expires_at <= now):
        raise ApplicationError("'expires_at' goes with 'restore' and must lie in the future.")
    cube = memory_lock(
        actor=actor,
        cube_id=cube_id,
        action=Action.ADMIN,
        expected_version=expected_version,
        allow_frozen=True,
    )
    before = {"state": cube.state, "frozen": cube.frozen}
    if action in FLAG_ACTIONS:
        want = action == "freeze"
        if cube.frozen == want:
            raise Conflict(
                f"Memory is already {'frozen' if want else 'not frozen'}.", code="invalid_transition"
            )
        # Freezing is a governance flag, not content: no new version, but audited.
        memory_frozen_set(cube=cube, frozen=want)
    else:
        if cube.frozen:
            raise Conflict("Memory is frozen; unfreeze it before changing it.", code="frozen")
        sources, target = TRANSITIONS[action]
        if cube.state not in sources:
            raise Conflict(
                f"Cannot {action} a memory in state '{cube.state}'.",
                code="invalid_transition",
                extra={"state": cube.state, "allowed_from": sorted(sources)},
            )
        new_expiry: Any = cube.expires_at
        if (
            action == "restore"
            and cube.state == S.EXPIRED
            and (cube.expires_at is None or cube.expires_at <= now)
        ):
            new_expiry = expires_at
        elif action == "restore" and expires_at is not None:
            new_expiry = expires_at
        memory_state_set(
            actor=actor,
            cube=cube,
            state=target,
            operation=VersionOperation.LIFECYCLE,
            reason=reason or action,
            expires_at=new_expiry,
        )
    audit_record(
        actor=actor,
        operation=f"memory.{action}",
        namespace=cube.namespace,
        object_type="memory",
        object_ids=[str(cube.id)],
        memory_kind=cube.kind,
        details={
            "from": before,
            "to": {"state": cube.state, "frozen": cube.frozen},
            "version": cube.version,
            "reason": reason,
        },
    )
    return cube


def _most_sensitive(values: Iterable[str]) -> str:
    ranks = [SENSITIVITY_ORDER.index(v) for v in values if v in SENSITIVITY_ORDER]
    return SENSITIVITY_ORDER[max(ranks)] if ranks else str(Sensitivity.INTERNAL)


@transaction.atomic
def memory_merge(
    *, actor: Subject, source_ids: list[Any], data: dict[str, Any] | None = None, reason: str = ""
) -> MemCube:
    """Merge several live plaintext memories of one namespace into one new memory.

    The new memory's text is `data['text']` or the sources' texts in the given order; tags and entities
    are unioned unless given; it inherits the most restrictive sensitivity and the earliest expiry. Each
    source becomes `merged` with `merged_into` pointing at the new memory and leaves the hot index.
    """
    data = dict(data or {})
    ids = list(dict.fromkeys(str(i) for i in source_ids))
    if len(ids) < 2:
        raise ApplicationError("A merge needs at least two distinct memories.")
    if len(ids) > MAX_MERGE_SOURCES:
        raise ApplicationError(f"A merge takes at most {MAX_MERGE_SOURCES} memories.", code="too_large")
    locked = {
        str(c.id): c
        for c in MemCube.objects.select_for_update(of=("self",))
        .select_related("namespace")
        .filter(pk__in=ids)
        .exclude(state=S.DELETED)
        .order_by("id")
    }
    cubes = []
    for cid in ids:
        cube = locked.get(cid)
        if cube is None:
            raise NotFound(f"Memory {cid} not found.", extra={"id": cid})
        authorize_memory(subject=actor, action=Action.READ, cube=cube)
        cubes.append(cube)
    namespace = cubes[0].namespace
    if any(c.namespace_id != namespace.id for c in cubes):
        raise ApplicationError("Merged memories must all live in one namespace.")
    # The merge creates a memory in the namespace, so it takes namespace write rights, not just ACL ones.
    authorize(subject=actor, action=Action.WRITE, namespace=namespace)
    frozen = [str(c.id) for c in cubes if c.frozen]
    if frozen:
        raise Conflict("Frozen memories cannot be merged.", code="frozen", extra={"ids": frozen})
    not_live = [str(c.id) for c in cubes if c.state not in LIVE_STATES]
    if not_live:
        raise Conflict(
            "Only live (generated or activated) memories can be merged.",
            code="invalid_transition",
            extra={"ids": not_live},
        )
    if any(c.kind != MemoryKind.PLAINTEXT for c in cubes):
        raise ApplicationError("Only plaintext memories can be merged.")
    licences = {c.licence for c in cubes if c.licence}
    if len(licences) > 1:
        raise ApplicationError(
            "The memories carry different licences and cannot be merged into one.",
            extra={"licences": sorted(licences)},
        )
    expiries = [c.expires_at for c in cubes if c.expires_at]
    item: dict[str, Any] = {
        "kind": MemoryKind.PLAINTEXT,
        "text": data.get("text") or "\n\n".join(c.text for c in cubes),
        "title": data.get("title", cubes[0].title),
        "tags": data["tags"] if "tags" in data else list(dict.fromkeys(t for c in cubes for t in c.tags)),
        "entities": list(dict.fromkeys(e for c in cubes for e in c.entities)),
        "metadata": {**data.get("metadata", {}), "merged_from": ids},
        "source": {"merged_from": ids},
        "semantic_type": data.get("semantic_type", cubes[0].semantic_type),
        "language": cubes[0].language,
        "sensitivity": _most_sensitive(c.sensitivity for c in cubes),
        "priority": max(c.priority for c in cubes),
        "licence": next(iter(licences), ""),
        "expires_at": min(expiries) if expiries else None,
    }
    merged = memory_merge_write(
        actor=actor,
        namespace=namespace,
        sources=cubes,
        data=item,
        reason=reason or f"merge of {len(ids)} memories",
    )
    audit_record(
        actor=actor,
        operation="memory.merge",
        namespace=namespace,
        object_type="memory",
        object_ids=[str(merged.id), *ids],
        memory_kind=MemoryKind.PLAINTEXT,
        details={"merged_into": str(merged.id), "sources": ids, "reason": reason},
    )
    return merged


# --- periodic sweeps ----------------------------------------------------------------------------------


def _sweep(*, ids: list[Any], target: str, still_due: Any, label: str, details: dict[str, Any]) -> int:
    """Move the given memories to `target`, chunk by chunk, re-checking each under its row lock."""
    actor = Subject.system(label)
    done = 0
    for start in range(0, len(ids), SWEEP_CHUNK):
        chunk = ids[start : start + SWEEP_CHUNK]
        with transaction.atomic():
            rows = (
                MemCube.objects.select_for_update(of=("self",), skip_locked=True)
                .select_related("namespace")
                .filter(pk__in=chunk)
                .order_by("id")
            )
            by_ns: dict[Any, list[MemCube]] = {}
            for cube in rows:
                if cube.frozen or not still_due(cube):
                    continue  # changed since it was selected (restored, frozen, touched): leave it
                memory_state_set(
                    actor=actor, cube=cube, state=target, operation=VersionOperation.LIFECYCLE, reason=label
                )
                by_ns.setdefault(cube.namespace, []).append(cube)
            for ns, cubes in by_ns.items():
                audit_record(
                    actor=actor,
                    operation=f"memory.{'expire' if target == S.EXPIRED else 'archive'}",
                    namespace=ns,
                    object_type="memory",
                    object_ids=[str(c.id) for c in cubes],
                    details={**details, "count": len(cubes)},
                )
                done += len(cubes)
    return done


def lifecycle_expire_due(
    *, now: datetime | None = None, cube_ids: list[Any] | None = None, limit: int = 10_000
) -> int:
    """TTL expiry: memories whose `expires_at` has passed become `expired` and leave the hot index."""
    now = now or timezone.now()
    qs = MemCube.objects.filter(expires_at__lte=now, frozen=False).exclude(state__in=[S.EXPIRED, S.DELETED])
    if cube_ids is not None:
        qs = qs.filter(pk__in=cube_ids)
    ids = list(qs.order_by("expires_at", "id").values_list("pk", flat=True)[:limit])
    return _sweep(
        ids=ids,
        target=S.EXPIRED,
        label="ttl-expiry",
        details={"sweep": "ttl", "now": now.isoformat()},
        still_due=lambda c: (
            c.expires_at is not None and c.expires_at <= now and c.state not in (S.EXPIRED, S.DELETED)
        ),
    )


def lifecycle_archive_cold(
    *,
    now: datetime | None = None,
    cube_ids: list[Any] | None = None,
    days: int | None = None,
    limit: int = 10_000,
) -> int:
    """Archive live memories nobody has read for `days` (MEMHUB_ARCHIVE_AFTER_DAYS, default 90): they
    leave the hot index and stay restorable. A memory never read counts from its creation."""
    now = now or timezone.now()
    days = archive_after_days() if days is None else days
    if days < 1:
        raise ApplicationError("'days' must be at least 1.")
    cutoff = now - timedelta(days=days)
    qs = (
        MemCube.objects.filter(state__in=LIVE_STATES, frozen=False)
        .annotate(touched=Coalesce("last_accessed_at", "created_at"))
        .filter(touched__lt=cutoff)
        .exclude(Q(expires_at__isnull=False) & Q(expires_at__lte=now))
    )  # those expire instead
    if cube_ids is not None:
        qs = qs.filter(pk__in=cube_ids)
    ids = list(qs.order_by("touched", "id").values_list("pk", flat=True)[:limit])
    return _sweep(
        ids=ids,
        target=S.ARCHIVED,
        label="cold-archival",
        details={"sweep": "cold", "days": days, "now": now.isoformat()},
        still_due=lambda c: c.state in LIVE_STATES and (c.last_accessed_at or c.created_at) < cutoff,
    )
