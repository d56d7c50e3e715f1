"""Publishing to a feed: memory updates and retractions by the publisher, and the marketplace's own
changes (a release, new terms, a withdrawal) recorded through `marketplace.hooks`.

Every write here appends its entry in the transaction that makes the change, so the feed never tells of
a change that did not happen, and never misses one that did. A pack memory is authored as the studio
authors it (`marketplace.services.studio`): a MemCube in the publisher's namespace that is a `PackItem`
of the pack; an update is a new version of that MemCube (its history keeps the old one), and its
`provenance_id` is what every installation copy shares with it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction

from core.errors import ApplicationError, NotFound
from feeds.models import EntryKind, FeedEntry
from feeds.services.log import entry_append
from governance.audit import audit_record
from governance.policy import Subject
from marketplace.hooks import PackEvent
from marketplace.models import Pack, PackItem, PackRelease
from marketplace.services.common import require_publisher_admin
from vault.models import IndexOp, MemCube, MemoryKind, MemoryState, VersionOperation
from vault.services import CONTENT_FIELDS, GOVERNANCE_FIELDS, index_enqueue, memory_version_write

MAX_REASON_CHARS = 300
# What an entry tells of a memory: its content, as every subscriber's vault needs it to apply the update.
ENTRY_MEMORY_FIELDS = (
    "kind",
    "text",
    "title",
    "tags",
    "metadata",
    "source",
    "semantic_type",
    "language",
    "entities",
    "valid_from",
    "valid_to",
    "blob_uri",
    "blob_sha256",
    "model_fingerprint",
    "blob_meta",
)
UPSERT_FIELDS = frozenset((*CONTENT_FIELDS, *GOVERNANCE_FIELDS, "provenance_id"))


def json_safe(value: Any) -> Any:
    """A value as JSON carries it (datetimes as ISO 8601, decimals and uuids as strings)."""
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def _invalid(field: str, message: str, code: str = "invalid") -> ApplicationError:
    return ApplicationError(message, extra={"field": field}, code=code)


def memory_entry_data(cube: MemCube) -> dict[str, Any]:
    """The `data` of a `memory.upserted` entry: the memory's content as the publisher wrote it."""
    data: dict[str, Any] = {
        "provenance_id": str(cube.provenance_id),
        "version": cube.version,
        "content_sha256": cube.content_sha256,
    }
    for f in ENTRY_MEMORY_FIELDS:
        if (
            f in ("blob_uri", "blob_sha256", "model_fingerprint", "blob_meta")
            and cube.kind == MemoryKind.PLAINTEXT
        ):
            continue
        value = getattr(cube, f)
        data[f] = value.isoformat() if isinstance(value, (datetime, date)) else json_safe(value)
    return data


def _pack_item(pack: Pack, provenance_id: Any) -> PackItem | None:
    """The pack's item for a memory, by its provenance id (or, for convenience, the MemCube's own id)."""
    try:
        pid = uuid.UUID(str(provenance_id))
    except (ValueError, TypeError, AttributeError):
        raise _invalid("provenance_id", "'provenance_id' must be a UUID.") from None
    items = PackItem.objects.select_related("cube").filter(
        pack=pack, cube__namespace_id=pack.publisher.namespace_id
    )
    return items.filter(cube__provenance_id=pid).first() or items.filter(cube_id=pid).first()


def _prepared(pack: Pack, memory: Mapping[str, Any]) -> dict[str, Any]:
    """The item as the studio checks it (known fields, non-empty text, source naming the pack), with
    its messages addressed to this one memory."""
    from marketplace.services.studio import pack_item_prepare

    try:
        return pack_item_prepare(pack, {k: v for k, v in memory.items() if k != "provenance_id"}, 0)
    except ApplicationError as exc:
        message = exc.message.removeprefix("Item 0: ")
        extra = {k: v for k, v in (exc.extra or {}).items() if k != "index"}
        raise ApplicationError(message, extra=extra, status=exc.status, code=exc.code) from exc


@transaction.atomic
def feed_memory_upsert(*, actor: Subject, pack: Pack, memory: dict[str, Any]) -> FeedEntry:
    """Publish a memory update to the pack's feed: a new memory (a new pack item) or, with the
    `provenance_id` of one of the pack's items, a new version of it. Either way the change and its
    `memory.upserted` entry commit together."""
    require_publisher_admin(actor=actor, publisher=pack.publisher)
    if not isinstance(memory, Mapping):
        raise _invalid("memory", "'memory' must be an object with the memory's fields.")
    unknown = sorted(set(memory) - UPSERT_FIELDS)
    if unknown:
        raise _invalid(unknown[0], f"Unknown field '{unknown[0]}'.")
    memory = _dates_parsed(memory)
    pid = memory.get("provenance_id")
    if pid is None:
        from marketplace.services.studio import pack_author

        fresh = _without_provenance(memory)
        _prepared(pack, fresh)  # the studio's checks, with messages about this one memory
        cube = pack_author(actor=actor, pack=pack, items=[fresh])[0]
    else:
        item = _pack_item(pack, pid)
        if item is None:
            raise NotFound(f"Memory '{pid}' is not an item of this pack.")
        cube = _revise(actor=actor, pack=pack, cube_id=item.cube_id, memory=memory)
    return entry_append(
        pack=pack,
        kind=EntryKind.MEMORY_UPSERTED,
        data=memory_entry_data(cube),
        provenance_id=cube.provenance_id,
        tags=list(cube.tags or []),
        text=cube.text if cube.kind == MemoryKind.PLAINTEXT else "",
    )


def _dates_parsed(memory: Mapping[str, Any]) -> dict[str, Any]:
    """`valid_from`/`valid_to` as datetimes (ISO 8601 strings accepted), checked in order: the vault
    compares them only once they are datetimes."""
    from django.utils import timezone as tz
    from django.utils.dateparse import parse_datetime

    out = dict(memory)
    for f in ("valid_from", "valid_to"):
        value = out.get(f)
        if value is None or isinstance(value, datetime):
            continue
        parsed = parse_datetime(value) if isinstance(value, str) else None
        if parsed is None:
            raise _invalid(f, f"'{f}' must be an ISO 8601 date-time.")
        out[f] = parsed if tz.is_aware(parsed) else tz.make_aware(parsed, UTC)
    vf, vt = out.get("valid_from"), out.get("valid_to")
    if isinstance(vf, datetime) and isinstance(vt, datetime) and vt <= vf:
        raise _invalid("valid_to", "'valid_to' must be later than 'valid_from'.")
    return out


def _without_provenance(memory: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in memory.items() if k != "provenance_id"}


def _revise(*, actor: Subject, pack: Pack, cube_id: Any, memory: Mapping[str, Any]) -> MemCube:
    """A new version of the publisher's memory with the given fields changed (the others kept)."""
    from vault.services import memory_content_validate

    cube = MemCube.objects.select_for_update().get(pk=cube_id)
    if cube.state not in (MemoryState.GENERATED, MemoryState.ACTIVATED):
        raise ApplicationError(
            f"Memory '{cube.provenance_id}' is {cube.state}; publish it as a new memory instead.",
            extra={"field": "provenance_id"},
            code="not_live",
        )
    fields = _without_provenance(memory)
    # The studio's checks, on the fields given plus what the memory says now (a plaintext memory keeps
    # non-empty text whether or not the update touches it).
    prepared = _prepared(
        pack, {**fields, "text": fields.get("text", cube.text), "kind": fields.get("kind", cube.kind)}
    )
    merged = {f: getattr(cube, f) for f in (*CONTENT_FIELDS, *GOVERNANCE_FIELDS)}
    merged.update({f: prepared.get(f, fields[f]) for f in fields})
    try:
        memory_content_validate(merged)
    except ApplicationError as exc:
        raise ApplicationError(exc.message, extra={"field": _field_of(exc.message)}, status=400) from exc
    changed = [f for f in fields if getattr(cube, f) != merged[f]]
    if not changed:
        return cube
    for f in changed:
        setattr(cube, f, merged[f])
    from django.core.exceptions import ValidationError

    try:
        memory_version_write(
            cube, actor=actor, operation=VersionOperation.OVERWRITE, reason=f"feed update of {pack}"
        )
    except ValidationError as exc:
        name = next(iter(getattr(exc, "error_dict", {}) or {"memory": None}))
        raise _invalid(name, f"'{name}': {exc.messages[0]}") from exc
    index_enqueue([cube.id], IndexOp.UPSERT)
    audit_record(
        actor=actor,
        operation="memory.update",
        namespace=pack.publisher.namespace,
        object_type="memory",
        object_ids=[str(cube.id)],
        memory_kind=cube.kind,
        details={"fields": sorted(changed), "pack": str(pack), "via": "feed", "version": cube.version},
    )
    return cube


def _field_of(message: str) -> str:
    for f in ("valid_to", "text", "kind", "tags", "blob_uri"):
        if f in message:
            return f
    return "memory"


@transaction.atomic
def feed_memory_retract(*, actor: Subject, pack: Pack, provenance_id: Any, reason: str = "") -> FeedEntry:
    """Retract a memory: the publisher's memory is archived (out of search, its history kept), it leaves
    the pack's content, and the `memory.retracted` entry tells every subscriber to archive their copy."""
    require_publisher_admin(actor=actor, publisher=pack.publisher)
    if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS:
        raise _invalid("reason", f"'reason' is text of at most {MAX_REASON_CHARS} characters.")
    item = _pack_item(pack, provenance_id)
    if item is None:
        raise NotFound(f"Memory '{provenance_id}' is not an item of this pack.")
    from vault.services import memory_state_set

    cube = MemCube.objects.select_for_update().get(pk=item.cube_id)
    if cube.state != MemoryState.ARCHIVED:
        memory_state_set(
            actor=actor,
            cube=cube,
            state=MemoryState.ARCHIVED,
            reason=f"retracted from {pack}" + (f": {reason}" if reason else ""),
        )
    item.delete()
    audit_record(
        actor=actor,
        operation="pack.items.retract",
        namespace=pack.publisher.namespace,
        object_type="memory",
        object_ids=[str(cube.id)],
        memory_kind=cube.kind,
        details={"pack": str(pack), "provenance_id": str(cube.provenance_id), "reason": reason},
    )
    return entry_append(
        pack=pack,
        kind=EntryKind.MEMORY_RETRACTED,
        data={"provenance_id": str(cube.provenance_id), "reason": reason},
        provenance_id=cube.provenance_id,
        tags=list(cube.tags or []),
        text=cube.text if cube.kind == MemoryKind.PLAINTEXT else "",
    )


def pack_event_hook(event: PackEvent) -> None:
    """The marketplace's changes, as feed entries in the marketplace's transaction (an error here
    undoes the change: the feed tells of every change and of nothing else)."""
    pack = Pack.objects.select_related("publisher").get(pk=event.pack_id)
    if event.kind == EntryKind.RELEASE_PUBLISHED:
        release = PackRelease.objects.get(pk=event.release_id)
        memories = release.manifest.get("memories", []) if isinstance(release.manifest, dict) else []
        entry_append(
            pack=pack,
            kind=EntryKind.RELEASE_PUBLISHED,
            data={
                "release": str(release.pk),
                "release_id": release.manifest_sha256,
                "version": release.version,
                "manifest_sha256": release.manifest_sha256,
                "notes": release.notes,
                "counts": {"memories": len(memories)},
            },
        )
    elif event.kind == EntryKind.TERMS_CHANGED:
        entry_append(
            pack=pack, kind=EntryKind.TERMS_CHANGED, data={"changed": json_safe(dict(event.details or {}))}
        )
    elif event.kind == EntryKind.PACK_WITHDRAWN:
        entry_append(pack=pack, kind=EntryKind.PACK_WITHDRAWN, data={"listed": False})
