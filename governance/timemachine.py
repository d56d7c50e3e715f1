"""Time machine: snapshot a namespace, compare two points in time, roll a namespace back.

Everything is derived from the immutable version history: the state of a namespace at time T is, for
each memory created by then, its latest version written by then (memories whose version at T is
`deleted` are absent). A snapshot pins those (memory, version) pairs under a name. A rollback never
rewrites history: it writes new versions (operation `restore`) that copy the pinned content and state,
and soft-deletes (new `delete` versions) memories that did not exist at that point.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import Namespace, NamespaceKind
from core.errors import ApplicationError, Conflict, NotFound
from core.timeparse import parse_instant
from governance.audit import audit_record
from governance.models import Snapshot, SnapshotEntry
from governance.policy import Action, Subject, authorize
from vault.hooks import use_record, use_refusals
from vault.models import MemCube, MemCubeVersion, MemoryState, VersionOperation
from vault.selectors import history_visible, memories_purged
from vault.services import CONTENT_FIELDS, memory_reads_record, memory_restore, memory_state_set

COMPARED_FIELDS = (*CONTENT_FIELDS, "state")
MAX_DIFF_ITEMS = 1000

Pairs = dict[str, int]  # memory id -> version


@dataclass(frozen=True)
class Point:
    """A point in a namespace's history: a snapshot, a timestamp, or now (both None)."""

    snapshot: Snapshot | None = None
    at: datetime | None = None

    def describe(self) -> dict[str, Any]:
        if self.snapshot is not None:
            return {
                "snapshot": str(self.snapshot.id),
                "name": self.snapshot.name,
                "at": self.snapshot.at.isoformat(),
            }
        return {"snapshot": None, "at": self.at.isoformat() if self.at else "now"}


def _namespace(*, actor: Subject, key: str, actions: tuple[Action, ...]) -> Namespace:
    ns = Namespace.objects.filter(key=key).select_related("organization", "owner_user").first()
    if ns is None:
        raise NotFound(f"Namespace '{key}' not found.")
    for action in actions:
        authorize(subject=actor, action=action, namespace=ns)
    _require_usable(actor, ns)
    return ns


def _require_usable(actor: Subject, ns: Namespace) -> None:
    """An installed pack is used on its licence's terms here too (expiry, seat, quota): the time machine
    shows its text, so it is refused with the same 402 as search and reads."""
    refused = use_refusals(actor=actor, namespaces=[ns])
    if refused:
        raise next(iter(refused.values()))


def _not_future(at: datetime, name: str) -> datetime:
    if timezone.is_naive(at):
        at = timezone.make_aware(at)
    if at > timezone.now():
        raise ApplicationError(f"'{name}' lies in the future; the time machine only goes back.")
    return at


def point_parse(*, namespace: Namespace, raw: str | None, name: str) -> Point:
    """'now', a snapshot id of this namespace, or an ISO-8601 timestamp."""
    if raw is None or raw == "" or raw == "now":
        return Point()
    try:
        snapshot_id = uuid.UUID(raw)
    except ValueError:
        parsed = parse_instant(raw)
        if parsed is None:
            raise ApplicationError(
                f"'{name}' must be 'now', a snapshot id or an ISO-8601 date-time.", code="invalid_point"
            ) from None
        return Point(at=_not_future(parsed, name))
    snapshot = Snapshot.objects.filter(pk=snapshot_id, namespace=namespace).first()
    if snapshot is None:
        raise NotFound(f"Snapshot {raw} not found in namespace '{namespace.key}'.")
    return Point(snapshot=snapshot)


def pairs_at(*, namespace: Namespace, at: datetime | None) -> Pairs:
    """The (memory, version) pairs of a namespace at `at` (None: now), deleted memories left out."""
    if at is None:
        return {
            str(cid): v
            for cid, v in MemCube.objects.filter(namespace=namespace)
            .exclude(state=MemoryState.DELETED)
            .values_list("id", "version")
        }
    latest: dict[str, tuple[int, str]] = {}
    rows = (
        MemCubeVersion.objects.filter(cube__namespace=namespace, created_at__lte=at)
        .order_by("cube_id", "version")
        .values_list("cube_id", "version", "state")
    )
    for cid, version, state in rows.iterator(chunk_size=5000):
        latest[str(cid)] = (version, state)  # ordered by version: the last one wins
    return {cid: v for cid, (v, state) in latest.items() if state != MemoryState.DELETED}


def point_pairs(*, namespace: Namespace, point: Point) -> Pairs:
    if point.snapshot is not None:
        return {str(cid): v for cid, v in point.snapshot.entries.values_list("cube_id", "version")}
    return pairs_at(namespace=namespace, at=point.at)


def _versions(pairs: Pairs) -> dict[tuple[str, int], MemCubeVersion]:
    """The version rows named by pairs."""
    found: dict[tuple[str, int], MemCubeVersion] = {}
    ids = list(pairs)
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        qs = MemCubeVersion.objects.filter(
            cube_id__in=[uuid.UUID(c) for c in chunk], version__in={pairs[c] for c in chunk}
        )
        for v in qs:
            if pairs.get(str(v.cube_id)) == v.version:
                found[(str(v.cube_id), v.version)] = v
    return found


def _changed_fields(a: Any, b: Any) -> list[str]:
    return [f for f in COMPARED_FIELDS if getattr(a, f) != getattr(b, f)]


# --- snapshots ----------------------------------------------------------------------------------------


@transaction.atomic
def snapshot_create(
    *, actor: Subject, namespace_key: str, name: str = "", at: datetime | None = None
) -> Snapshot:
    """Pin a namespace's (memory, version) pairs now, or as they were at `at`. Needs admin rights."""
    ns = _namespace(actor=actor, key=namespace_key, actions=(Action.ADMIN,))
    at = _not_future(at, "at") if at is not None else None
    pairs = pairs_at(namespace=ns, at=at)
    when = at or timezone.now()
    snapshot = Snapshot(
        namespace=ns,
        name=name or f"snapshot-{when:%Y%m%dT%H%M%S.%fZ}",
        at=when,
        created_by=actor.user if actor.is_user else None,
        memory_count=len(pairs),
    )
    snapshot.full_clean(exclude=["namespace", "created_by"], validate_unique=False)
    try:
        with transaction.atomic():
            snapshot.save()
    except IntegrityError as exc:
        raise Conflict(f"Namespace '{ns.key}' already has a snapshot named '{snapshot.name}'.") from exc
    SnapshotEntry.objects.bulk_create(
        [SnapshotEntry(snapshot=snapshot, cube_id=cid, version=v) for cid, v in pairs.items()],
        batch_size=2000,
    )
    audit_record(
        actor=actor,
        operation="namespace.snapshot",
        namespace=ns,
        object_type="snapshot",
        object_ids=[str(snapshot.id)],
        details={"name": snapshot.name, "at": when.isoformat(), "memories": len(pairs)},
    )
    return snapshot


def snapshot_list(*, actor: Subject, namespace_key: str) -> QuerySet[Snapshot]:
    ns = _namespace(actor=actor, key=namespace_key, actions=(Action.READ,))
    return (
        Snapshot.objects.filter(namespace=ns).select_related("namespace", "created_by").order_by("-at", "id")
    )


def snapshot_get(*, actor: Subject, snapshot_id: Any) -> Snapshot:
    snapshot = Snapshot.objects.select_related("namespace", "created_by").filter(pk=snapshot_id).first()
    if snapshot is None:
        raise NotFound("Snapshot not found.")
    try:
        authorize(subject=actor, action=Action.READ, namespace=snapshot.namespace)
    except NotFound:
        raise NotFound("Snapshot not found.") from None
    _require_usable(actor, snapshot.namespace)
    return snapshot


# --- diff ---------------------------------------------------------------------------------------------


@dataclass
class Diff:
    namespace: str
    source: dict[str, Any]
    target: dict[str, Any]
    added: list[dict[str, Any]] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)
    changed: list[dict[str, Any]] = field(default_factory=list)
    unchanged: int = 0
    truncated: bool = False


def _summary(v: MemCubeVersion, current: Pairs | None) -> dict[str, Any]:
    """One version in a diff. `current` (the memories' versions now) is given for a reader who may not
    write the namespace: it sees the text of current versions only, never superseded or deleted text."""
    shown = current is None or (current.get(str(v.cube_id)) == v.version and v.state != MemoryState.DELETED)
    return {
        "id": str(v.cube_id),
        "version": v.version,
        "title": v.title if shown else None,
        "state": v.state,
        "text": v.text[:200] if shown else None,
    }


def timemachine_diff(*, actor: Subject, namespace_key: str, source: str | None, target: str | None) -> Diff:
    """What changed in a namespace between two points (snapshot ids, timestamps or 'now')."""
    ns = _namespace(actor=actor, key=namespace_key, actions=(Action.READ,))
    a = point_parse(namespace=ns, raw=source, name="from")
    b = point_parse(namespace=ns, raw=target, name="to")
    pa, pb = point_pairs(namespace=ns, point=a), point_pairs(namespace=ns, point=b)
    va, vb = _versions(pa), _versions(pb)
    current = None if history_visible(actor=actor, namespace=ns) else pairs_at(namespace=ns, at=None)
    diff = Diff(ns.key, a.describe(), b.describe())
    for cid in sorted(set(pb) - set(pa)):
        diff.added.append(_summary(vb[(cid, pb[cid])], current))
    for cid in sorted(set(pa) - set(pb)):
        diff.removed.append(_summary(va[(cid, pa[cid])], current))
    for cid in sorted(set(pa) & set(pb)):
        old, new = va[(cid, pa[cid])], vb[(cid, pb[cid])]
        fields = _changed_fields(old, new) if pa[cid] != pb[cid] else []
        if fields:
            diff.changed.append(
                {
                    "id": cid,
                    "from_version": old.version,
                    "to_version": new.version,
                    "fields": fields,
                    "before": _summary(old, current),
                    "after": _summary(new, current),
                }
            )
        else:
            diff.unchanged += 1
    for name in ("added", "removed", "changed"):
        items = getattr(diff, name)
        if len(items) > MAX_DIFF_ITEMS:
            setattr(diff, name, items[:MAX_DIFF_ITEMS])
            diff.truncated = True
    shown = [item["id"] for name in ("added", "removed", "changed") for item in getattr(diff, name)]
    if shown and ns.kind == NamespaceKind.INSTALLATION:
        # Each licensed memory the diff shows is a retrieval, within what the quota still allows.
        granted = use_record(actor=actor, counts={ns.pk: len(shown)}, kind="retrievals").get(
            ns.pk, len(shown)
        )
        if granted < len(shown):
            keep = set(shown[:granted])
            for name in ("added", "removed", "changed"):
                setattr(diff, name, [i for i in getattr(diff, name) if i["id"] in keep])
            diff.truncated = True
            shown = shown[:granted]
    memory_reads_record(
        actor=actor,
        cubes=list(MemCube.objects.filter(pk__in=shown).select_related("namespace")),
        operation="memory.diff",
        details={"from": diff.source, "to": diff.target},
    )
    return diff


# --- rollback -----------------------------------------------------------------------------------------


@dataclass
class RollbackResult:
    namespace: str
    target: dict[str, Any]
    restored: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    dry_run: bool = False


@transaction.atomic
def timemachine_rollback(
    *,
    actor: Subject,
    namespace_key: str,
    snapshot_id: Any = None,
    at: datetime | None = None,
    reason: str = "",
    dry_run: bool = False,
) -> RollbackResult:
    """Make a namespace read as it did at a snapshot or timestamp, by writing new versions.

    Memories that differ get a `restore` version copying the old content and state (deleted ones come
    back); memories that did not exist then get a `delete` version. Governance settings (ACL, expiry,
    freeze) are not part of history and stay as they are. If any memory that would change is frozen,
    nothing is written (409). Needs write and admin rights on the namespace.
    """
    ns = _namespace(actor=actor, key=namespace_key, actions=(Action.READ, Action.ADMIN, Action.WRITE))
    if (snapshot_id is None) == (at is None):
        raise ApplicationError("Name exactly one of 'snapshot' and 'at'.")
    if snapshot_id is not None:
        point = point_parse(namespace=ns, raw=str(snapshot_id), name="snapshot")
    else:
        point = Point(at=_not_future(at, "at"))  # type: ignore[arg-type]
    target = point_pairs(namespace=ns, point=point)
    rows = {
        str(c.id): c
        for c in MemCube.objects.select_for_update(of=("self",))
        .select_related("namespace")
        .filter(namespace=ns)
        .order_by("id")
    }
    versions = _versions(target)
    purged = memories_purged(namespace=ns)
    result = RollbackResult(ns.key, point.describe(), dry_run=dry_run)
    restore: list[tuple[MemCube, MemCubeVersion]] = []
    remove: list[MemCube] = []
    for cid, cube in rows.items():
        if cid in purged:
            result.unchanged += 1  # erased: a rollback must not bring even its tombstone back
        elif cid in target:
            old = versions[(cid, target[cid])]
            if cube.version == old.version or not _changed_fields(cube, old):
                result.unchanged += 1
            else:
                restore.append((cube, old))
        elif cube.state != MemoryState.DELETED:
            remove.append(cube)
        else:
            result.unchanged += 1
    frozen = [str(c.id) for c in [*(c for c, _ in restore), *remove] if c.frozen]
    if frozen:
        raise Conflict(
            "Frozen memories would change; unfreeze them first. Nothing was rolled back.",
            code="frozen",
            extra={"ids": frozen},
        )
    result.restored = [str(c.id) for c, _ in restore]
    result.removed = [str(c.id) for c in remove]
    if dry_run:
        return result
    why = reason or f"rollback to {point.describe()}"
    for cube, old in restore:
        memory_restore(actor=actor, cube=cube, version=old, reason=why)
    for cube in remove:
        memory_state_set(
            actor=actor, cube=cube, state=MemoryState.DELETED, operation=VersionOperation.DELETE, reason=why
        )
    changed = [*(c for c, _ in restore), *remove]
    audit_record(
        actor=actor,
        operation="namespace.rollback",
        namespace=ns,
        object_type="memory",
        object_ids=[str(c.id) for c in changed],
        details={
            "target": point.describe(),
            "restored": len(restore),
            "removed": len(remove),
            "unchanged": result.unchanged,
            "reason": reason,
        },
    )
    return result
