"""Writes to the vault. Every change: policy check, new immutable version, outbox row, audit entry."""

from __future__ import annotations

import hashlib
import json
import logging
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
from vault.models import (
    LIVE_STATES,
    AclPermission,
    IndexOp,
    IndexOutbox,
    MemCube,
    MemCubeGrant,
    MemCubeVersion,
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


def _validate_content(data: dict[str, Any]) -> None:
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

    def kick() -> None:
        from vault.tasks import index_outbox_process

        try:
            index_outbox_process.delay()
        except Exception:  # the rows stay pending; the periodic sweep retries them
            logger.exception("could not process the index outbox now")

    transaction.on_commit(kick)


def _build_cube(*, actor: Subject, namespace: Namespace, data: dict[str, Any]) -> MemCube:
    _validate_content(data)
    values = {k: data[k] for k in (*CONTENT_FIELDS, *GOVERNANCE_FIELDS) if k in data}
    cube = MemCube(namespace=namespace, owner=actor.user, **values)
    if data.get("provenance_id"):
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
    _validate_content(merged)
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


# --- per-memory ACL -------------------------------------------------------------------------------------


def _acl_principal(
    *, username: str | None, org_slug: str | None, role: str | None
) -> tuple[User | None, Organization | None, str]:
    if bool(username) == bool(org_slug):
        raise ApplicationError("Name exactly one principal: 'user', or 'org' (with an optional 'role').")
    if username:
        if role:
            raise ApplicationError("'role' goes with 'org', not with 'user'.")
        user = User.objects.filter(username=username).first()
        if user is None:
            raise ApplicationError(f"User '{username}' not found.", code="unknown_principal")
        return user, None, ""
    role = role or Role.MEMBER
    if role not in Role.values:
        raise ApplicationError(f"Unknown role '{role}'; expected one of {', '.join(Role.values)}.")
    org = Organization.objects.filter(slug=org_slug).first()
    if org is None:
        raise ApplicationError(f"Organization '{org_slug}' not found.", code="unknown_principal")
    return None, org, role


def _acl_entry(grant: MemCubeGrant) -> dict[str, Any]:
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
    lookup = {"user": user} if user else {"organization": org, "role": role}
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
    lookup = {"user": user} if user else {"organization": org, "role": role}
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


def index_sync_cubes(cube_ids: list[Any]) -> tuple[int, int]:
    """Make the index agree with the database for these cubes: live ones upserted, the rest removed."""
    from vault.index import get_index

    index = get_index()
    cubes = {c.id: c for c in MemCube.objects.filter(pk__in=cube_ids)}
    live = [c for c in cubes.values() if c.state in LIVE_STATES]
    gone = [str(cid) for cid in cube_ids if cid not in cubes or cubes[cid].state not in LIVE_STATES]
    if live:
        index.upsert([index_doc_for(c) for c in live])
    if gone:
        index.delete(gone)
    return len(live), len(gone)


def index_outbox_process(*, limit: int | None = None, batch_size: int = 256) -> int:
    """Apply pending outbox rows to the index. Idempotent: it indexes each cube's *current* state, so a
    row processed twice or out of order does no harm. Failed batches stay pending and are retried."""
    done = 0
    while limit is None or done < limit:
        take = batch_size if limit is None else min(batch_size, limit - done)
        rows = list(IndexOutbox.objects.filter(processed_at__isnull=True).order_by("id")[:take])
        if not rows:
            break
        ids = [r.id for r in rows]
        cube_ids = list(dict.fromkeys(r.cube_id for r in rows))
        try:
            index_sync_cubes(cube_ids)
        except Exception as exc:
            logger.exception("index outbox batch failed")
            IndexOutbox.objects.filter(pk__in=ids).update(
                attempts=F("attempts") + 1, last_error=str(exc)[:2000]
            )
            raise
        IndexOutbox.objects.filter(pk__in=ids).update(processed_at=timezone.now(), attempts=F("attempts") + 1)
        done += len(rows)
    return done


def vault_reindex(*, drop: bool = False, batch_size: int = 512) -> int:
    """Rebuild the index from the database (the source of truth)."""
    from vault.index import get_index

    index = get_index()
    if drop:
        index.drop()
    index.ensure_collection()
    # Outbox rows written after this point stay pending: the rebuild may not have seen their change.
    high_water = IndexOutbox.objects.order_by("-id").values_list("id", flat=True).first() or 0
    total = 0
    qs = MemCube.objects.filter(state__in=LIVE_STATES).order_by("id").values_list("id", flat=True)
    batch: list[Any] = []
    for cid in qs.iterator(chunk_size=batch_size):
        batch.append(cid)
        if len(batch) >= batch_size:
            total += index_sync_cubes(batch)[0]
            batch = []
    if batch:
        total += index_sync_cubes(batch)[0]
    IndexOutbox.objects.filter(processed_at__isnull=True, id__lte=high_water).update(
        processed_at=timezone.now()
    )
    return total


@transaction.atomic
def memory_import_batch(
    *,
    actor: Subject,
    namespace: Namespace,
    items: list[dict[str, Any]],
    watermark_id: str = "",
    reason: str = "import",
) -> list[MemCube]:
    """System write into a namespace the caller may not write by policy (a pack installation, a MIP
    import): the caller of this service has already decided it is allowed. Provenance ids are kept."""
    cubes = []
    for item in items:
        cube = _build_cube(actor=actor, namespace=namespace, data=item)
        cube.watermark_id = watermark_id
        cubes.append(cube)
    MemCube.objects.bulk_create(cubes)
    MemCubeVersion.objects.bulk_create(
        [
            _snapshot(c, operation=VersionOperation.CREATE, actor=actor, parent=None, reason=reason)
            for c in cubes
        ]
    )
    index_enqueue([c.id for c in cubes], IndexOp.UPSERT)
    return cubes
