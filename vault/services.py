"""Writes to the vault. Every change: policy check, new immutable version, outbox row, audit entry."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import Namespace, NamespaceKind, Organization, Role, User
from core.errors import ApplicationError, Conflict, NotFound
from governance.audit import audit_record
from governance.policy import Action, Subject, authorize, authorize_memory
from vault.hooks import PurgeEvent, run_purge_hooks
from vault.models import (
    LIVE_STATES,
    AclPermission,
    IndexOp,
    IndexOutbox,
    MemCube,
    MemCubeGrant,
    MemCubeVersion,
    MemoryContent,
    MemoryKind,
    MemoryState,
    VersionOperation,
)

logger = logging.getLogger(__name__)

# Fields a caller may set on create and change on update.
CONTENT_FIELDS = (
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
GOVERNANCE_FIELDS = ("expires_at", "priority", "sensitivity", "licence")
UPDATE_MODES = ("overwrite", "append", "merge")
PROVENANCE_IS_SERVERS = "'provenance_id' is assigned by the server; leave it out."
MAX_TAGS = 50


def content_hash(*, kind: str, text: str, blob_sha256: str = "") -> str:
    payload = json.dumps({"kind": kind, "text": text, "blob_sha256": blob_sha256}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _resolve_namespace(*, actor: Subject, namespace_key: str, action: Action) -> Namespace:
    ns = Namespace.objects.filter(key=namespace_key).select_related("organization", "owner_user").first()
    if ns is None:
        raise NotFound(f"Namespace '{namespace_key}' not found.")
    authorize(subject=actor, action=action, namespace=ns)
    return ns


def memory_content_validate(data: dict[str, Any]) -> None:
    kind = data.get("kind", MemoryKind.PLAINTEXT)
    if kind not in MemoryKind.values:
        raise ApplicationError(f"Unknown kind '{kind}'; expected one of {', '.join(MemoryKind.values)}.")
    text = data.get("text", "")
    if len(text) > settings.VAULT_MAX_TEXT_CHARS:
        raise ApplicationError(
            f"Text is {len(text)} characters; the limit is {settings.VAULT_MAX_TEXT_CHARS}.", code="too_large"
        )
    if kind == MemoryKind.PLAINTEXT and not text.strip():
        raise ApplicationError("A plaintext memory needs non-empty 'text'.")
    if kind != MemoryKind.PLAINTEXT:
        missing = [f for f in ("blob_uri", "blob_sha256", "model_fingerprint") if not data.get(f)]
        if missing:
            raise ApplicationError(f"A {kind} memory needs {', '.join(missing)} (the artifact reference).")
    tags = data.get("tags", [])
    if len(tags) > MAX_TAGS:
        raise ApplicationError(f"At most {MAX_TAGS} tags per memory.")
    vf, vt = data.get("valid_from"), data.get("valid_to")
    if isinstance(vf, datetime) and isinstance(vt, datetime) and vt <= vf:
        raise ApplicationError("'valid_to' must be later than 'valid_from'.")


def _snapshot(
    cube: MemCube, *, operation: str, actor: Subject | None, parent: MemCubeVersion | None, reason: str = ""
) -> MemCubeVersion:
    values = {f: getattr(cube, f) for f in (*CONTENT_FIELDS, "content_sha256", "state")}
    return MemCubeVersion(
        cube=cube,
        version=cube.version,
        parent=parent,
        operation=operation,
        actor=actor.user if actor else None,
        reason=reason,
        **values,
    )


def index_enqueue(cube_ids: list[Any], op: str) -> None:
    """Queue index work in the caller's transaction; the worker is nudged once it commits."""
    IndexOutbox.objects.bulk_create([IndexOutbox(cube_id=cid, op=op) for cid in cube_ids])
    transaction.on_commit(_index_kick)


def _build_cube(
    *, actor: Subject, namespace: Namespace, data: dict[str, Any], keep_provenance: bool = False
) -> MemCube:
    """A new memory from `data`. Its provenance id is the server's, a fresh one, unless a system import
    (`keep_provenance`) carries the origin's: a caller must not attach its text to another's provenance."""
    memory_content_validate(data)
    values = {k: data[k] for k in (*CONTENT_FIELDS, *GOVERNANCE_FIELDS) if k in data}
    cube = MemCube(namespace=namespace, owner=actor.user, **values)
    if keep_provenance and data.get("provenance_id"):
        cube.provenance_id = data["provenance_id"]
    cube.content_sha256 = content_hash(kind=cube.kind, text=cube.text, blob_sha256=cube.blob_sha256)
    cube.full_clean(exclude=["namespace", "owner"])
    return cube


@transaction.atomic
def memory_create_batch(*, actor: Subject, namespace_key: str, items: list[dict[str, Any]]) -> list[MemCube]:
    """Create memories in one namespace (or per-item `namespace`), all or nothing."""
    if not items:
        raise ApplicationError("A batch needs at least one memory.")
    if len(items) > settings.VAULT_MAX_BATCH:
        raise ApplicationError(
            f"A batch takes at most {settings.VAULT_MAX_BATCH} memories.", code="too_large"
        )
    namespaces: dict[str, Namespace] = {}
    cubes: list[MemCube] = []
    for i, item in enumerate(items):
        if item.get("provenance_id") is not None:
            raise ApplicationError(
                f"Item {i}: {PROVENANCE_IS_SERVERS}",
                extra={"index": i, "field": "provenance_id"},
                code="read_only_field",
            )
        key = item.get("namespace") or namespace_key
        if key not in namespaces:
            namespaces[key] = _resolve_namespace(actor=actor, namespace_key=key, action=Action.WRITE)
        try:
            cubes.append(_build_cube(actor=actor, namespace=namespaces[key], data=item))
        except ApplicationError as exc:
            raise ApplicationError(
                f"Item {i}: {exc.message}", extra={"index": i, **exc.extra}, code=exc.code, status=exc.status
            ) from exc
    MemCube.objects.bulk_create(cubes)
    MemCubeVersion.objects.bulk_create(
        [_snapshot(c, operation=VersionOperation.CREATE, actor=actor, parent=None) for c in cubes]
    )
    index_enqueue([c.id for c in cubes], IndexOp.UPSERT)
    for ns in namespaces.values():
        ids = [str(c.id) for c in cubes if c.namespace_id == ns.id]
        audit_record(
            actor=actor,
            operation="memory.create",
            namespace=ns,
            object_type="memory",
            object_ids=ids,
            details={"count": len(ids)},
        )
    return cubes


def memory_create(*, actor: Subject, namespace_key: str, data: dict[str, Any]) -> MemCube:
    if data.get("provenance_id") is not None:
        raise ApplicationError(
            PROVENANCE_IS_SERVERS, extra={"field": "provenance_id"}, code="read_only_field"
        )
    return memory_create_batch(actor=actor, namespace_key=namespace_key, items=[data])[0]


def memory_lock(
    *,
    actor: Subject,
    cube_id: Any,
    action: Action = Action.WRITE,
    expected_version: int | None = None,
    allow_frozen: bool = False,
    include_deleted: bool = False,
) -> MemCube:
    """Lock one memory for a change the actor must be allowed (`action`, per-memory ACL included).
    Unreadable or missing: 404. Frozen (unless `allow_frozen`) or a stale `expected_version`: 409."""
    qs = MemCube.objects.select_for_update(of=("self",)).select_related("namespace").filter(pk=cube_id)
    if not include_deleted:
        qs = qs.exclude(state=MemoryState.DELETED)
    cube = qs.first()
    if cube is None:
        raise NotFound("Memory not found.")
    authorize_memory(subject=actor, action=action, cube=cube)
    if cube.frozen and not allow_frozen:
        raise Conflict("Memory is frozen; unfreeze it before changing it.", code="frozen")
    if expected_version is not None and expected_version != cube.version:
        raise Conflict(
            f"Memory is at version {cube.version}, not {expected_version}: it changed since you read it.",
            extra={"current_version": cube.version},
            code="version_conflict",
        )
    return cube


def _head_version(cube: MemCube) -> MemCubeVersion | None:
    return MemCubeVersion.objects.filter(cube=cube, version=cube.version).first()


def memory_version_write(cube: MemCube, *, actor: Subject, operation: str, reason: str = "") -> None:
    """Save `cube` (already changed in memory and locked) as its next immutable version."""
    parent = _head_version(cube)
    cube.version += 1
    cube.content_sha256 = content_hash(kind=cube.kind, text=cube.text, blob_sha256=cube.blob_sha256)
    cube.full_clean(exclude=["namespace", "owner"])
    cube.save()
    _snapshot(cube, operation=operation, actor=actor, parent=parent, reason=reason).save()


# --- writes other apps ask for (lifecycle, time machine, de-identification) ---------------------------
# They take a cube the caller has locked in its transaction (memory_lock, or select_for_update of a set),
# after the caller's own policy decision; the vault does the write: the new version, the index work.

_KEEP: Any = object()


def _index_op_for(state: str) -> str:
    return IndexOp.UPSERT if state in LIVE_STATES else IndexOp.DELETE


def memory_state_set(
    *,
    actor: Subject,
    cube: MemCube,
    state: str,
    operation: str = VersionOperation.LIFECYCLE,
    reason: str = "",
    merged_into: MemCube | None = None,
    expires_at: Any = _KEEP,
) -> MemCube:
    """Move a locked memory to `state` as a new version; live states go (back) into the index, others
    leave it. `merged_into` goes with state `merged`; `expires_at` (when given) is set with the change."""
    if state not in MemoryState.values:
        raise ApplicationError(f"Unknown state '{state}'.")
    cube.state = state
    cube.merged_into = merged_into if state == MemoryState.MERGED else None
    if expires_at is not _KEEP:
        cube.expires_at = expires_at
    memory_version_write(cube, actor=actor, operation=operation, reason=reason[:300])
    index_enqueue([cube.id], _index_op_for(state))
    return cube


def memory_frozen_set(*, cube: MemCube, frozen: bool) -> MemCube:
    """Freeze or unfreeze a locked memory. A governance flag, not content: no new version."""
    cube.frozen = frozen
    cube.save(update_fields=["frozen", "updated_at"])
    return cube


def memory_restore(*, actor: Subject, cube: MemCube, version: MemCubeVersion, reason: str = "") -> MemCube:
    """Make a locked memory say what one of its earlier versions said (content and state), as a new
    `restore` version. History is never rewritten."""
    if version.cube_id != cube.id:
        raise ApplicationError("That version belongs to another memory.")
    for f in (*CONTENT_FIELDS, "state"):
        setattr(cube, f, getattr(version, f))
    if cube.state != MemoryState.MERGED:
        cube.merged_into = None
    memory_version_write(cube, actor=actor, operation=VersionOperation.RESTORE, reason=reason[:300])
    index_enqueue([cube.id], _index_op_for(cube.state))
    return cube


def memory_rewrite(
    *, actor: Subject, cube: MemCube, text: str, reason: str = "", erase: Sequence[str] = ()
) -> int:
    """Replace a locked memory's text with a new `overwrite` version (de-identification). `erase`: the
    values the rewrite removes (found PII); they are also scrubbed from every earlier version, so a
    redaction leaves no original behind in history. Returns the new version number."""
    cube.text = text
    memory_version_write(cube, actor=actor, operation=VersionOperation.OVERWRITE, reason=reason[:300])
    index_enqueue([cube.id], _index_op_for(cube.state))
    values = _erasable(erase)
    if values:
        _scrub_versions(cube, values=values)
    return cube.version


def memory_merge_write(
    *,
    actor: Subject,
    namespace: Namespace,
    sources: Sequence[MemCube],
    data: dict[str, Any],
    reason: str = "",
) -> MemCube:
    """Create the memory that `sources` (locked, checked by the caller) are merged into, and mark each
    source `merged` into it. `data` holds the merged memory's fields."""
    merged = _build_cube(actor=actor, namespace=namespace, data=data)
    if not actor.is_user:
        merged.owner = sources[0].owner
    merged.state = MemoryState.ACTIVATED
    merged.save()
    _snapshot(merged, operation=VersionOperation.MERGE, actor=actor, parent=None, reason=reason[:300]).save()
    index_enqueue([merged.id], IndexOp.UPSERT)
    for cube in sources:
        memory_state_set(
            actor=actor,
            cube=cube,
            state=MemoryState.MERGED,
            operation=VersionOperation.MERGE,
            reason=f"merged into {merged.id}",
            merged_into=merged,
        )
    return merged


# --- erasure ---------------------------------------------------------------------------------------------

ERASED = "[erased]"
# Fields of a version that carry what a memory says; erasure clears them all.
_ERASED_CONTENT: dict[str, Any] = {
    "title": "",
    "tags": [],
    "metadata": {},
    "source": {},
    "entities": [],
    "blob_meta": {},
}


def _erasable(values: Sequence[str]) -> list[str]:
    # Longest first, so a value that contains another is replaced whole.
    return sorted({v for v in values if v and v.strip()}, key=len, reverse=True)


def _scrub(value: Any, values: list[str]) -> Any:
    if isinstance(value, str):
        for v in values:
            value = value.replace(v, ERASED)
        return value
    if isinstance(value, list):
        return [_scrub(v, values) for v in value]
    if isinstance(value, dict):
        return {_scrub(k, values): _scrub(v, values) for k, v in value.items()}
    return value


_SCRUBBED_FIELDS = ("text", "title", "tags", "metadata", "source", "entities", "blob_meta")


def _scrub_versions(cube: MemCube, *, values: list[str]) -> list[str]:
    """Replace `values` wherever they occur in the memory's versions and head. Returns the content hashes
    of the versions it changed, as they were before."""
    changed_hashes: list[str] = []
    for row in [*MemCubeVersion.objects.filter(cube=cube).order_by("version"), cube]:
        before = {f: getattr(row, f) for f in _SCRUBBED_FIELDS}
        after = {f: _scrub(v, values) for f, v in before.items()}
        if after == before:
            continue
        changed_hashes.append(row.content_sha256)
        _rewrite_in_place(row, after)
    return changed_hashes


def _rewrite_in_place(row: MemoryContent, fields: dict[str, Any]) -> None:
    """Overwrite fields of a version (or the head row) where it stands, with its content hash: erasure
    is the one write that changes history instead of adding to it."""
    for f, v in fields.items():
        setattr(row, f, v)
    row.content_sha256 = content_hash(kind=row.kind, text=row.text, blob_sha256=row.blob_sha256)
    if isinstance(row, MemCube):
        MemCube.objects.filter(pk=row.pk).update(content_sha256=row.content_sha256, **fields)
    else:
        row.save(update_fields=[*fields, "content_sha256"])


def _erase_versions(cube: MemCube) -> list[dict[str, Any]]:
    """Replace the content of every version of `cube` by the tombstone. Returns, per version, the hash of
    what it held (never the content)."""
    removed = []
    for row in MemCubeVersion.objects.filter(cube=cube).order_by("version"):
        removed.append({"version": row.version, "content_sha256": row.content_sha256})
        row.text = ERASED
        for f, v in _ERASED_CONTENT.items():
            setattr(row, f, type(v)())
        row.content_sha256 = content_hash(kind=row.kind, text=ERASED, blob_sha256=row.blob_sha256)
        row.save(update_fields=["text", *_ERASED_CONTENT, "content_sha256"])
    return removed


@dataclass(frozen=True)
class _Quoted:
    """What a memory built by merging the purged one may have taken from it."""

    texts: list[str]  # every text any version held: a merge quotes one of them whole
    titles: set[str]
    entities: set[str]


def _quoted(cube: MemCube) -> _Quoted:
    rows = [*MemCubeVersion.objects.filter(cube=cube), cube]
    return _Quoted(
        texts=_erasable([r.text for r in rows if r.text != ERASED]),
        titles={r.title for r in rows if r.title},
        entities={e for r in rows for e in r.entities if isinstance(e, str)},
    )


def _scrub_merged(merged: MemCube, *, quoted: _Quoted, purged_id: str) -> list[str]:
    """Take what `merged` took from the purged memory out of its versions and head: the quoted texts,
    a title it inherited, and the entities no other source of the merge brings. Returns the content hashes
    of the versions it changed, as they were before."""
    others = [str(i) for i in merged.source.get("merged_from") or [] if str(i) != purged_id]
    kept_entities = {
        e for c in MemCube.objects.filter(pk__in=others) for e in c.entities if isinstance(e, str)
    }
    only_purged = quoted.entities - kept_entities
    changed: list[str] = []
    for row in [*MemCubeVersion.objects.filter(cube=merged).order_by("version"), merged]:
        before = {f: getattr(row, f) for f in _SCRUBBED_FIELDS}
        after = {f: _scrub(v, quoted.texts) for f, v in before.items() if f in ("text", "metadata")}
        after["title"] = "" if row.title in quoted.titles else row.title
        after["entities"] = [e for e in row.entities if e not in only_purged]
        if all(after[f] == before[f] for f in after):
            continue
        changed.append(row.content_sha256)
        _rewrite_in_place(row, after)
    return changed


def _merged_from(cube: MemCube) -> list[MemCube]:
    """Memories of the same namespace whose text was built by merging `cube` (they quote its text)."""
    candidates = (
        MemCube.objects.select_for_update(of=("self",))
        .filter(namespace_id=cube.namespace_id, source__has_key="merged_from")
        .exclude(pk=cube.pk)
    )
    return [c for c in candidates if str(cube.id) in (c.source.get("merged_from") or [])]


@transaction.atomic
def memory_update(
    *,
    actor: Subject,
    cube_id: Any,
    expected_version: int | None,
    data: dict[str, Any],
    mode: str = "overwrite",
) -> MemCube:
    """Write a new version. overwrite: given fields replace; append: text appended, tags/entities added;
    merge: tags/entities unioned, metadata merged key by key, text replaced only if given."""
    if mode not in UPDATE_MODES:
        raise ApplicationError(f"Unknown mode '{mode}'; expected one of {', '.join(UPDATE_MODES)}.")
    if expected_version is None:
        raise ApplicationError("'expected_version' is required so concurrent edits are detected.")
    cube = memory_lock(actor=actor, cube_id=cube_id, expected_version=expected_version)
    if "kind" in data and data["kind"] != cube.kind:
        raise ApplicationError("A memory's kind cannot change; create a new memory instead.")
    merged: dict[str, Any] = {f: getattr(cube, f) for f in (*CONTENT_FIELDS, *GOVERNANCE_FIELDS)}
    for key, value in data.items():
        if key not in merged:
            continue
        if mode == "append" and key == "text":
            merged["text"] = f"{cube.text}\n{value}" if cube.text else value
        elif mode in ("append", "merge") and key in ("tags", "entities"):
            merged[key] = list(dict.fromkeys([*merged[key], *value]))
        elif mode in ("append", "merge") and key in ("metadata", "source", "blob_meta"):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    memory_content_validate(merged)
    for key, value in merged.items():
        setattr(cube, key, value)
    memory_version_write(cube, actor=actor, operation=mode)
    index_enqueue([cube.id], IndexOp.UPSERT)
    audit_record(
        actor=actor,
        operation="memory.update",
        namespace=cube.namespace,
        object_type="memory",
        object_ids=[str(cube.id)],
        details={"mode": mode, "version": cube.version, "fields": sorted(data)},
    )
    return cube


@transaction.atomic
def memory_delete(
    *, actor: Subject, cube_id: Any, expected_version: int | None = None, reason: str = ""
) -> MemCube:
    """Soft delete: a new version in state `deleted`; history stays, the index entry goes."""
    cube = memory_lock(actor=actor, cube_id=cube_id, expected_version=expected_version)
    cube.state = MemoryState.DELETED
    memory_version_write(cube, actor=actor, operation=VersionOperation.DELETE, reason=reason)
    index_enqueue([cube.id], IndexOp.DELETE)
    audit_record(
        actor=actor,
        operation="memory.delete",
        namespace=cube.namespace,
        object_type="memory",
        object_ids=[str(cube.id)],
        details={"version": cube.version, "reason": reason},
    )
    return cube


def _erase_cube(cube: MemCube, *, actor: Subject) -> list[dict[str, Any]]:
    """Tombstone every version of a locked memory, delete it as a `purge` version, drop it from the index.
    Returns the hashes of what each version held."""
    removed = _erase_versions(cube)
    cube.text = ERASED
    for f, v in _ERASED_CONTENT.items():
        setattr(cube, f, type(v)())
    cube.state = MemoryState.DELETED
    cube.merged_into = None
    memory_version_write(cube, actor=actor, operation=VersionOperation.PURGE, reason="erasure")
    index_enqueue([cube.id], IndexOp.DELETE)
    return removed


def _installed_copies(cube: MemCube) -> list[MemCube]:
    """Copies of a memory installed from a pack (same provenance, installation namespaces). A buyer's
    copy is the publisher's content under licence: erasing the original erases the copies."""
    if cube.namespace.kind == NamespaceKind.INSTALLATION:
        return []
    return list(
        MemCube.objects.select_for_update(of=("self",))
        .select_related("namespace")
        .filter(provenance_id=cube.provenance_id, namespace__kind=NamespaceKind.INSTALLATION)
        .exclude(pk=cube.pk)
        .order_by("id")
    )


@transaction.atomic
def memory_purge(*, actor: Subject, cube_id: Any, reason: str = "") -> MemCube:
    """Right to erasure. The memory's text (and title, tags, entities, metadata, source) is replaced by a
    tombstone in every version, the memory is deleted and leaves the index; so are the copies installed
    from it; memories merged from it lose the text they quoted; and the purge hooks remove derived
    artifacts (KV caches, adapter training records). Each namespace's audit log gets a `memory.purge`
    tombstone entry holding only hashes of what was removed. Needs admin rights on the namespace (the
    governance scope); a deleted memory can still be purged, a frozen one answers 409."""
    cube = memory_lock(actor=actor, cube_id=cube_id, action=Action.ADMIN, include_deleted=True)
    head = _head_version(cube)
    if head is not None and head.operation == VersionOperation.PURGE:
        raise Conflict("Memory is already purged.", code="already_purged")
    quoted = _quoted(cube)
    # namespace id -> (namespace, [(cube id, removed hashes, how it relates to the purged memory)])
    erased: dict[Any, tuple[Namespace, list[tuple[str, list[str], str]]]] = {}

    def note(ns: Namespace, cid: Any, hashes: list[str], relation: str) -> None:
        erased.setdefault(ns.id, (ns, []))[1].append((str(cid), hashes, relation))

    removed = _erase_cube(cube, actor=actor)
    note(cube.namespace, cube.id, [r["content_sha256"] for r in removed], "purged")
    for copy in _installed_copies(cube):
        hashes = [r["content_sha256"] for r in _erase_cube(copy, actor=actor)]
        note(copy.namespace, copy.id, hashes, "installed copy")
    for other in _merged_from(cube):
        hashes = _scrub_merged(other, quoted=quoted, purged_id=str(cube.id))
        if hashes:
            note(cube.namespace, other.id, hashes, "merged from it")
            index_enqueue([other.id], _index_op_for(other.state))
    for ns, rows in erased.values():
        audit_record(
            actor=actor,
            operation="memory.purge",
            namespace=ns,
            object_type="memory",
            object_ids=[cid for cid, _, _ in rows],
            memory_kind=cube.kind,
            details={
                "tombstone": True,
                "reason": reason[:300],
                "purged": str(cube.id),
                "provenance_id": str(cube.provenance_id),
                "removed": [{"id": cid, "content_sha256s": h, "relation": rel} for cid, h, rel in rows],
            },
        )
    for ns, rows in erased.values():
        run_purge_hooks(
            PurgeEvent(
                namespace_id=str(ns.id),
                cube_ids=tuple(cid for cid, _, _ in rows),
                provenance_ids=(str(cube.provenance_id),),
                content_sha256s=tuple(dict.fromkeys(h for _, hashes, _ in rows for h in hashes)),
            )
        )
    return cube


# --- per-memory ACL -------------------------------------------------------------------------------------


def _acl_principal(
    *, username: str | None, org_slug: str | None, role: str | None
) -> tuple[User | None, Organization | None, str]:
    """(user, org, role) named by a request. An unknown username is (None, None, ''): the caller keeps the
    grant under the name (see MemCubeGrant), so the answer is the same whether the account exists."""
    if bool(username) == bool(org_slug):
        raise ApplicationError("Name exactly one principal: 'user', or 'org' (with an optional 'role').")
    if username:
        if role:
            raise ApplicationError("'role' goes with 'org', not with 'user'.")
        return User.objects.filter(username=username).first(), None, ""
    role = role or Role.MEMBER
    if role not in Role.values:
        raise ApplicationError(f"Unknown role '{role}'; expected one of {', '.join(Role.values)}.")
    org = Organization.objects.filter(slug=org_slug).first()
    if org is None:
        raise ApplicationError(f"Organization '{org_slug}' not found.", code="unknown_principal")
    return None, org, role


def _acl_lookup(
    username: str | None, user: User | None, org: Organization | None, role: str
) -> dict[str, Any]:
    if user is not None:
        return {"user": user}
    if org is not None:
        return {"organization": org, "role": role}
    return {"user": None, "organization": None, "username": username}


def _acl_entry(grant: MemCubeGrant) -> dict[str, Any]:
    if not grant.user_id and not grant.organization_id:
        # Grants nothing: no `user_id` for the policy to match. Shown exactly like a user's entry.
        return {"principal": f"user:{grant.username}", "permission": grant.permission}
    if grant.user_id:
        return {
            "principal": f"user:{getattr(grant.user, 'username', '')}",
            "user_id": str(grant.user_id),
            "permission": grant.permission,
        }
    return {
        "principal": f"org:{getattr(grant.organization, 'slug', '')}:{grant.role}",
        "org_id": str(grant.organization_id),
        "role": grant.role,
        "permission": grant.permission,
    }


def _acl_sync(cube: MemCube) -> None:
    """Rebuild `MemCube.acl` (what single-memory decisions read) from the grant rows."""
    grants = MemCubeGrant.objects.filter(cube=cube).select_related("user", "organization")
    cube.acl = sorted((_acl_entry(g) for g in grants), key=lambda e: e["principal"])
    MemCube.objects.filter(pk=cube.pk).update(acl=cube.acl)


@transaction.atomic
def memory_acl_grant(
    *,
    actor: Subject,
    cube_id: Any,
    permission: str,
    username: str | None = None,
    org_slug: str | None = None,
    role: str | None = None,
) -> MemCube:
    """Share one memory: read or write for one user, or for an org's members holding at least `role`.
    Granting a principal again replaces its permission. Needs admin rights on the memory's namespace."""
    if permission not in AclPermission.values:
        raise ApplicationError(
            f"Unknown permission '{permission}'; expected one of {', '.join(AclPermission.values)}."
        )
    cube = memory_lock(actor=actor, cube_id=cube_id, action=Action.ADMIN, allow_frozen=True)
    if cube.namespace.kind == NamespaceKind.INSTALLATION:
        raise ApplicationError(
            "Memories of an installed pack are licensed to the installation and cannot be shared one by one.",
            code="not_shareable",
        )
    user, org, role = _acl_principal(username=username, org_slug=org_slug, role=role)
    lookup = _acl_lookup(username, user, org, role)
    if user is not None:
        # An entry kept under this name before the account existed gives way to the account's.
        MemCubeGrant.objects.filter(
            cube=cube, user=None, organization=None, username=user.get_username()
        ).delete()
    grant = MemCubeGrant.objects.filter(cube=cube, **lookup).first() or MemCubeGrant(cube=cube, **lookup)
    previous = grant.permission if grant.pk else None
    grant.permission = permission
    grant.granted_by = actor.user if actor.is_user else None
    grant.full_clean(exclude=["cube"])
    grant.save()
    _acl_sync(cube)
    principal = _acl_entry(grant)["principal"]
    audit_record(
        actor=actor,
        operation="memory.acl.grant",
        namespace=cube.namespace,
        object_type="memory",
        object_ids=[str(cube.id)],
        memory_kind=cube.kind,
        details={"principal": principal, "permission": permission, "previous": previous},
    )
    return cube


@transaction.atomic
def memory_acl_revoke(
    *,
    actor: Subject,
    cube_id: Any,
    username: str | None = None,
    org_slug: str | None = None,
    role: str | None = None,
) -> MemCube:
    cube = memory_lock(actor=actor, cube_id=cube_id, action=Action.ADMIN, allow_frozen=True)
    user, org, role = _acl_principal(username=username, org_slug=org_slug, role=role)
    lookup = _acl_lookup(username, user, org, role)
    grant = MemCubeGrant.objects.filter(cube=cube, **lookup).select_related("user", "organization").first()
    if grant is None:
        raise NotFound("This memory has no ACL entry for that principal.")
    principal = _acl_entry(grant)["principal"]
    grant.delete()
    _acl_sync(cube)
    audit_record(
        actor=actor,
        operation="memory.acl.revoke",
        namespace=cube.namespace,
        object_type="memory",
        object_ids=[str(cube.id)],
        memory_kind=cube.kind,
        details={"principal": principal},
    )
    return cube


def memory_record_access(*, cube_ids: list[Any], hit: bool = False) -> None:
    """Behavioural statistics: they drive scheduling and archival. Not versioned (not content)."""
    if not cube_ids:
        return
    updates: dict[str, Any] = {"access_count": F("access_count") + 1, "last_accessed_at": timezone.now()}
    if hit:
        updates["hit_count"] = F("hit_count") + 1
    MemCube.objects.filter(pk__in=cube_ids).update(**updates)


# Reads that show many memories at once (a page of a list, a version history, a provenance chain, a
# diff) are audited but are not uses of a memory: counting them would keep every listed memory from
# ever being archived. Every other read operation (a read by id, a search hit, a chat context) counts.
UNCOUNTED_READ_OPERATIONS = frozenset(
    {"memory.list", "memory.history", "memory.provenance", "memory.diff", "memory.export"}
)


def memory_reads_record(
    *,
    actor: Subject,
    cubes: Sequence[MemCube],
    operation: str,
    hit: bool = False,
    details: dict[str, Any] | None = None,
) -> None:
    """The side effects of a read, for every door (API, pages, time machine, chat): one audit entry per
    namespace read, and the access statistics of the memories used. The cube objects passed in are
    updated to the counted values, so a caller that shows them shows what it just caused."""
    if not cubes:
        return
    by_ns: dict[Any, list[MemCube]] = {}
    for cube in cubes:
        by_ns.setdefault(cube.namespace_id, []).append(cube)
    for items in by_ns.values():
        kinds = {c.kind for c in items}
        audit_record(
            actor=actor,
            operation=operation,
            namespace=items[0].namespace,
            object_type="memory",
            object_ids=[str(c.id) for c in items],
            memory_kind=items[0].kind if len(kinds) == 1 else "",
            details=details or {},
        )
    if operation in UNCOUNTED_READ_OPERATIONS and not hit:
        return
    ids = list(dict.fromkeys(c.id for c in cubes))
    memory_record_access(cube_ids=ids, hit=hit)
    now = timezone.now()
    for cube in {id(c): c for c in cubes}.values():
        cube.access_count += 1
        cube.last_accessed_at = now
        if hit:
            cube.hit_count += 1


# --- index outbox --------------------------------------------------------------------------------------


def index_doc_for(cube: MemCube) -> Any:
    from vault.index import IndexDoc

    def ts(value: datetime | None) -> int:
        return int(value.timestamp()) if value else 0

    return IndexDoc(
        id=str(cube.id),
        namespace=str(cube.namespace_id),
        text=cube.text or cube.title,
        kind=cube.kind,
        state=cube.state,
        owner=str(cube.owner_id),
        tags=[str(t) for t in cube.tags],
        semantic_type=cube.semantic_type,
        created_ts=ts(cube.created_at),
        valid_from_ts=ts(cube.valid_from),
        valid_to_ts=ts(cube.valid_to),
        version=cube.version,
    )


def _indexable(cube: MemCube) -> bool:
    """Live memories are in the hot index; canaries never are (they must not be retrieved)."""
    return cube.state in LIVE_STATES and not cube.is_canary


# After this many single-document failures in a row, a failing batch is an outage, not a bad value.
_OUTAGE_AFTER = 3


def _index_apply(cube_ids: list[Any]) -> tuple[dict[Any, str], bool]:
    """Make the index agree with the database for these cubes, each on its own.

    Returns the error of every cube that could not be applied, and whether the index looks down. Bad
    values are found before Milvus is called; if a batch write fails anyway, documents are retried one
    by one so one bad row cannot fail its neighbours.
    """
    from vault.index import IndexValueError, check_doc, get_index

    index = get_index()
    cubes = {c.id: c for c in MemCube.objects.filter(pk__in=cube_ids)}
    failures: dict[Any, str] = {}
    docs: dict[Any, Any] = {}
    for cube in cubes.values():
        if not _indexable(cube):
            continue
        try:
            doc = index_doc_for(cube)
            check_doc(doc)
        except IndexValueError as exc:
            failures[cube.id] = f"{type(exc).__name__}: {exc}"
            continue
        docs[cube.id] = doc
    gone = [cid for cid in cube_ids if cid not in cubes or not _indexable(cubes[cid])]

    def attempt(keys: list[Any], write: Any) -> bool:
        try:
            write(keys)
            return True
        except Exception as exc:
            if len(keys) == 1:
                failures[keys[0]] = f"{type(exc).__name__}: {exc}"
                return False
            logger.warning("index batch of %d failed (%s); retrying one by one", len(keys), exc)
            in_a_row = 0
            for n, key in enumerate(keys):
                if attempt([key], write):
                    in_a_row = 0
                    continue
                in_a_row += 1
                if in_a_row >= _OUTAGE_AFTER:
                    for rest in keys[n + 1 :]:
                        failures[rest] = failures[key]
                    return False
            return True

    healthy = True
    if docs:
        healthy = attempt(list(docs), lambda keys: index.upsert([docs[k] for k in keys]))
    if gone and healthy:
        healthy = attempt(gone, lambda keys: index.delete([str(k) for k in keys]))
    elif gone:
        failures.update(dict.fromkeys(gone, "not attempted: the index is unavailable"))
    return failures, not healthy


def index_sync_cubes(cube_ids: list[Any]) -> tuple[int, int]:
    """Make the index agree with the database for these cubes: live ones upserted, the rest removed.
    Raises on the first failure (tooling); the outbox uses the per-row path instead."""
    from vault.index import get_index

    index = get_index()
    cubes = {c.id: c for c in MemCube.objects.filter(pk__in=cube_ids)}
    live = [c for c in cubes.values() if _indexable(c)]
    gone = [str(cid) for cid in cube_ids if cid not in cubes or not _indexable(cubes[cid])]
    if live:
        index.upsert([index_doc_for(c) for c in live])
    if gone:
        index.delete(gone)
    return len(live), len(gone)


def _outbox_backoff_s(attempts: int) -> float:
    """Exponential backoff with jitter: base, 2 x base, 4 x base ... capped, +-20% so retries spread."""
    base = float(getattr(settings, "VAULT_OUTBOX_BACKOFF_S", 30.0))
    cap = float(getattr(settings, "VAULT_OUTBOX_BACKOFF_MAX_S", 3600.0))
    import random

    delay = min(cap, base * 2 ** max(0, attempts - 1))
    return delay * random.uniform(0.8, 1.2)  # jitter, not a secret


def index_outbox_process(*, limit: int | None = None, batch_size: int = 256) -> int:
    """Apply due outbox rows to the index; returns how many were applied.

    Idempotent: it indexes each cube's *current* state, so a row processed twice or out of order does
    no harm. Rows are independent: a failing row records the attempt, its error and when to try again
    (exponential backoff), and after `VAULT_OUTBOX_MAX_ATTEMPTS` moves to the dead letters
    (`vault_status`, the admin API), while every other row, of every tenant, keeps indexing. Never
    raises for index errors; when the index is down the run stops early and the rows wait.
    """
    from datetime import timedelta

    from django.db.models import Q

    max_attempts = int(getattr(settings, "VAULT_OUTBOX_MAX_ATTEMPTS", 8))
    applied = seen = 0
    while limit is None or seen < limit:
        take = batch_size if limit is None else min(batch_size, limit - seen)
        now = timezone.now()
        due = IndexOutbox.objects.filter(processed_at__isnull=True, dead_lettered_at__isnull=True).filter(
            Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
        )
        rows = list(due.order_by("id")[:take])
        if not rows:
            break
        seen += len(rows)
        failures, outage = _index_apply(list(dict.fromkeys(r.cube_id for r in rows)))
        now = timezone.now()
        ok = [r.id for r in rows if r.cube_id not in failures]
        IndexOutbox.objects.filter(pk__in=ok).update(
            processed_at=now, attempts=F("attempts") + 1, last_attempt_at=now, last_error=""
        )
        applied += len(ok)
        for row in rows:
            if row.cube_id not in failures:
                continue
            row.attempts += 1
            row.last_error = failures[row.cube_id][:2000]
            row.last_attempt_at = now
            if row.attempts >= max_attempts:
                row.dead_lettered_at, row.next_attempt_at = now, None
                logger.error("index outbox row %s dead-lettered: %s", row.id, row.last_error)
            else:
                row.next_attempt_at = now + timedelta(seconds=_outbox_backoff_s(row.attempts))
            row.save(
                update_fields=[
                    "attempts",
                    "last_error",
                    "last_attempt_at",
                    "next_attempt_at",
                    "dead_lettered_at",
                ]
            )
        if outage:
            logger.warning("index unavailable; %d outbox rows wait for their next attempt", len(failures))
            break
    return applied


@transaction.atomic
def index_dead_letters_retry(*, ids: Sequence[int] | None = None) -> int:
    """Give dead-lettered outbox rows (all, or those named) a fresh set of attempts, after a fix."""
    rows = IndexOutbox.objects.filter(processed_at__isnull=True, dead_lettered_at__isnull=False)
    if ids is not None:
        rows = rows.filter(pk__in=list(ids))
    count = rows.update(attempts=0, dead_lettered_at=None, next_attempt_at=None)
    if count:
        transaction.on_commit(_index_kick)
    return count


def _index_kick() -> None:
    from vault.tasks import index_outbox_process as task

    try:
        task.delay()
    except Exception:  # the rows stay pending; the periodic sweep retries them
        logger.exception("could not process the index outbox now")


def vault_reindex(*, drop: bool = False, batch_size: int = 512) -> int:
    """Rebuild the index from the database (the source of truth). A memory that cannot be indexed
    gets an outbox row (retried, then dead-lettered) instead of stopping the rebuild."""
    from vault.index import get_index

    index = get_index()
    if drop:
        index.drop()
    index.ensure_collection()
    # Outbox rows written after this point stay pending: the rebuild may not have seen their change.
    high_water = IndexOutbox.objects.order_by("-id").values_list("id", flat=True).first() or 0
    total = 0
    failed: list[Any] = []
    qs = (
        MemCube.objects.filter(state__in=LIVE_STATES, is_canary=False)
        .order_by("id")
        .values_list("id", flat=True)
    )
    batch: list[Any] = []

    def apply(ids: list[Any]) -> int:
        failures, outage = _index_apply(ids)
        if outage:
            raise ApplicationError(
                "The index is unavailable; the rebuild stopped.", status=503, code="index_unavailable"
            )
        failed.extend(failures)
        return len(ids) - len(failures)

    for cid in qs.iterator(chunk_size=batch_size):
        batch.append(cid)
        if len(batch) >= batch_size:
            total += apply(batch)
            batch = []
    if batch:
        total += apply(batch)
    IndexOutbox.objects.filter(processed_at__isnull=True, id__lte=high_water).update(
        processed_at=timezone.now()
    )
    if failed:
        IndexOutbox.objects.bulk_create([IndexOutbox(cube_id=cid, op=IndexOp.UPSERT) for cid in failed])
    index.flush()
    return total


@transaction.atomic
def memory_import_batch(
    *,
    actor: Subject,
    namespace: Namespace,
    items: list[dict[str, Any]],
    watermark_id: str = "",
    reason: str = "import",
    defer_index_s: float = 0.0,
) -> list[MemCube]:
    """System write into a namespace the caller may not write by policy (a pack installation, a MIP
    import): the caller of this service has already decided it is allowed. Provenance ids are kept.

    `defer_index_s`: the caller indexes the memories itself right after (`index_upsert_reusing`), so
    the outbox rows wait that long before the index worker takes them; should the caller fail, the
    worker indexes them then, as any other memory."""
    cubes = []
    for item in items:
        cube = _build_import_cube(actor=actor, namespace=namespace, data=item)
        cube.watermark_id = watermark_id
        cube.is_canary = bool(item.get("canary"))
        cubes.append(cube)
    MemCube.objects.bulk_create(cubes)
    MemCubeVersion.objects.bulk_create(
        [
            _snapshot(c, operation=VersionOperation.CREATE, actor=actor, parent=None, reason=reason)
            for c in cubes
        ]
    )
    if defer_index_s > 0:
        index_enqueue_deferred([c.id for c in cubes], IndexOp.UPSERT, delay_s=defer_index_s)
    else:
        index_enqueue([c.id for c in cubes], IndexOp.UPSERT)
    return cubes


def _build_import_cube(*, actor: Subject, namespace: Namespace, data: dict[str, Any]) -> MemCube:
    """`_build_cube` for a system import, which keeps the origin's provenance id. The field checks run;
    the uniqueness check does not: it would query the primary key of every new row (a fresh uuid4), one
    round trip per memory, the largest cost of a 10,000-memory install."""
    memory_content_validate(data)
    values = {k: data[k] for k in (*CONTENT_FIELDS, *GOVERNANCE_FIELDS) if k in data}
    cube = MemCube(namespace=namespace, owner=actor.user, **values)
    if data.get("provenance_id"):
        cube.provenance_id = data["provenance_id"]
    cube.content_sha256 = content_hash(kind=cube.kind, text=cube.text, blob_sha256=cube.blob_sha256)
    cube.full_clean(exclude=["namespace", "owner"], validate_unique=False, validate_constraints=False)
    return cube


def index_enqueue_deferred(cube_ids: list[Any], op: str, *, delay_s: float) -> None:
    """Outbox rows the index worker leaves alone for `delay_s` (the caller means to index them now)."""
    from datetime import timedelta

    due = timezone.now() + timedelta(seconds=delay_s)
    IndexOutbox.objects.bulk_create(
        [IndexOutbox(cube_id=cid, op=op, next_attempt_at=due) for cid in cube_ids]
    )


@dataclass(frozen=True)
class VectorSource:
    """Where an installed copy's vector may come from: the memory it was copied from (`cube_id`), the
    version the copy was made of, and that version's text (the reuse criterion compares the texts)."""

    cube_id: Any
    version: int
    text: str


def _reuse_settings() -> tuple[bool, float]:
    from vault.index.reuse import DEFAULT_MIN_SIMILARITY

    enabled = bool(getattr(settings, "VAULT_INSTALL_VECTOR_REUSE", True))
    threshold = float(getattr(settings, "VAULT_VECTOR_REUSE_MIN_SIMILARITY", DEFAULT_MIN_SIMILARITY))
    return enabled, threshold


def index_upsert_reusing(
    *,
    cube_ids: Sequence[Any],
    sources: dict[Any, VectorSource] | None = None,
    cubes: Sequence[MemCube] | None = None,
) -> dict[str, int]:
    """Index these memories now, reusing stored vectors where that is sound, and settle their outbox rows.

    A memory in `sources` takes the stored vector of its source memory when the setting
    `VAULT_INSTALL_VECTOR_REUSE` is on (default), the index holds that vector for exactly the version
    named, and the copy's text differs from that version's only by near-synonymous word swaps
    (`vault.index.reuse`); every other memory is embedded. Returns counts: `reused`, `embedded`,
    `removed`. Raises if the index is unavailable (the outbox rows then stay, and the worker retries).

    `cubes`: the rows themselves, when the caller has just written them in a transaction of its own that
    has committed (an install's chunk): they are used as they are instead of being read back (10,000
    model instances and a large query on a 10,000-memory install). Ids without a row there are read."""
    from vault.index import get_index
    from vault.index.reuse import vector_reusable

    index = get_index()
    ids = list(dict.fromkeys(cube_ids))
    asked = set(ids)
    rows: dict[Any, MemCube] = {c.id: c for c in cubes or () if c.id in asked}
    missing = [i for i in ids if i not in rows]
    if missing:
        rows.update({c.id: c for c in MemCube.objects.filter(pk__in=missing)})
    live = [rows[i] for i in ids if i in rows and _indexable(rows[i])]
    gone = [str(i) for i in ids if i not in rows or not _indexable(rows[i])]
    enabled, threshold = _reuse_settings()
    stored: dict[str, tuple[int, Any]] = {}
    if enabled and sources:
        wanted = [str(sources[c.id].cube_id) for c in live if c.id in sources]
        stored = index.vectors(wanted) if wanted else {}
    reused_docs, reused_vectors, fresh_docs = [], [], []
    for cube in live:
        src = sources.get(cube.id) if (enabled and sources) else None
        hit = stored.get(str(src.cube_id)) if src is not None else None
        if (
            src is not None
            and hit is not None
            and hit[0] == src.version
            and vector_reusable(original=src.text, copy=cube.text, min_similarity=threshold)
        ):
            reused_docs.append(index_doc_for(cube))
            reused_vectors.append(hit[1])
        else:
            fresh_docs.append(index_doc_for(cube))
    if reused_docs:
        import numpy as np

        index.upsert(reused_docs, vectors=np.stack(reused_vectors))
    if fresh_docs:
        index.upsert(fresh_docs)
    if gone:
        index.delete(gone)
    IndexOutbox.objects.filter(cube_id__in=ids, processed_at__isnull=True).update(
        processed_at=timezone.now(), attempts=F("attempts") + 1, last_attempt_at=timezone.now(), last_error=""
    )
    return {"reused": len(reused_docs), "embedded": len(fresh_docs), "removed": len(gone)}
