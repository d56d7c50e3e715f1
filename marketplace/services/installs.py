"""Marketplace writes (installs): install a licensed release, copy it in the background, upgrade, remove.

`pack_install` decides (licence, workspace, one live installation per pack and workspace) and creates the
`Installation` with its own read-only `installation:` namespace; `installation_run` does the long part:
the release's memories, watermarked for this installation, are copied in chunks (each chunk committed,
with `Installation.progress` and a `pack.install.progress` audit entry the live page follows), indexed
with the publisher's stored vectors where the watermark left the meaning unchanged
(`vault.services.index_upsert_reusing`), and then `marketplace.hooks` tells the layers above (inference:
LoRA adapters, KV prefixes) that the installation is ready.

Small packs (at most `MARKETPLACE_INSTALL_INLINE_MAX` memories, default 2,000) are copied inline, so a
caller finds the memories when `pack_install` returns (the web page, the demo seed, tests); larger ones
go to Celery after the transaction commits (`marketplace.tasks.installs.installation_run_task`) and the
caller follows `status` and `progress`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import ApiToken, Namespace, NamespaceKind, User
from core.errors import ApplicationError, Conflict, NotFound, PermissionDenied
from governance.audit import audit_record
from governance.policy import Subject
from governance.watermarking import watermark_assign, watermark_embed, watermark_key
from marketplace.hooks import InstallationEvent, run_installation_hooks
from marketplace.models import (
    Annotation,
    Installation,
    InstallationStatus,
    Licence,
    Pack,
    PackRelease,
    PriceModel,
)
from marketplace.selectors.installs import installation_diff_compute, manifest_map
from marketplace.services.common import require_marketplace
from vault.models import IndexOp, MemCube, MemCubeVersion, MemoryKind, MemoryState, VersionOperation
from vault.services import (
    VectorSource,
    index_enqueue,
    index_upsert_reusing,
    memory_import_batch,
    memory_version_write,
)

logger = logging.getLogger(__name__)

SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?$")
AGENT_WORKSPACE = re.compile(r"^agent:([0-9a-fA-F-]{36})$")
DEFAULT_INLINE_MAX = 2_000
DEFAULT_CHUNK = 1_000
# The copier indexes each chunk itself; the outbox rows wait this long before the index worker would.
INDEX_DEFER_S = 120.0
MAX_NOTE_CHARS = 10_000
# What an upgrade rewrites on a changed copy (the text separately, watermarked).
COPIED_FIELDS = (
    "kind",
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
MAX_ANNOTATION_TAGS = 50
MAX_TAG_CHARS = 128


def _inline_max() -> int:
    return int(getattr(settings, "MARKETPLACE_INSTALL_INLINE_MAX", DEFAULT_INLINE_MAX))


def _chunk_size() -> int:
    return max(1, int(getattr(settings, "MARKETPLACE_INSTALL_CHUNK", DEFAULT_CHUNK)))


# --- deciding --------------------------------------------------------------------------------------------


def workspace_validate(*, user: User, workspace: str) -> str:
    """ "" is the user's own workspace; `agent:<api-token-id>` is one of the user's live API tokens (an
    agent acts through its token). Anything else is a 400 naming the field."""
    workspace = (workspace or "").strip()
    if not workspace:
        return ""
    m = AGENT_WORKSPACE.match(workspace)
    if m is None:
        raise ApplicationError(
            '\'workspace\' is "" (your own) or "agent:<API token id>" for one of your API tokens.',
            extra={"field": "workspace"},
            code="invalid_workspace",
        )
    token = ApiToken.objects.filter(pk=m.group(1).lower(), user=user, revoked_at__isnull=True).first()
    if token is None:
        raise ApplicationError(
            f"No live API token '{m.group(1)}' of yours names that agent workspace.",
            extra={"field": "workspace"},
            code="invalid_workspace",
        )
    return f"agent:{token.pk}"


def _licence_for_install(*, user: User, pack: Pack) -> Licence:
    """A free pack gets a free licence on first install; otherwise the user's usable licence, or 402."""
    from marketplace.services.licences import licence_grant, licence_usable

    # Free means no price at all: a pack with a price but a stale "free" model is not given away.
    free = pack.price_model == PriceModel.FREE and not pack.price_cents
    if free and not Licence.objects.filter(pack=pack, holder_user=user).exists():
        licence_grant(pack=pack, holder_user=user, reason="free install")
    return licence_usable(user=user, pack=pack)


def _release_size(release: PackRelease) -> int:
    return len(release.manifest.get("memories", [])) if isinstance(release.manifest, dict) else 0


def _semver_key(version: str) -> tuple[int, int, int, int, str]:
    m = SEMVER.match(version)
    if m is None:
        return (0, 0, 0, 0, version)
    pre = version.split("-", 1)[1] if "-" in version else ""
    # A pre-release sorts before its release.
    return (int(m.group(1)), int(m.group(2)), int(m.group(3)), 0 if pre else 1, pre)


@transaction.atomic
def pack_install(
    *, actor: Subject, release: PackRelease, workspace: str = "", inline: bool | None = None
) -> Installation:
    """Install a licensed release for the calling user (into `workspace`: "" theirs, or an agent's).

    Idempotent: a live installation of the pack in that workspace is returned as it is (same release),
    or answers 409 pointing at the upgrade (another release). Two concurrent calls give one installation:
    the user's row is locked for the decision, and the unique constraint on live installations backs it.
    `inline`: copy now (True), in Celery after commit (False), or by size (None, see the module doc)."""
    if not actor.is_user:
        raise PermissionDenied("Only a user installs packs.")
    require_marketplace(actor)
    user = actor.user
    pack = release.pack
    if release.yanked:
        raise ApplicationError(
            f"Release {release.version} was withdrawn by its publisher; install another version.",
            status=409,
            code="release_yanked",
        )
    workspace = workspace_validate(user=user, workspace=workspace)
    # Serialises this user's installs (a no-op on SQLite, which serialises writers anyway).
    User.objects.select_for_update().filter(pk=user.pk).first()
    existing = _live_installation(pack=pack, user=user, workspace=workspace)
    if existing is not None:
        return _rebind(_existing_or_conflict(existing, release))
    licence = _licence_for_install(user=user, pack=pack)
    try:
        with transaction.atomic():
            installation = _installation_create(
                actor=actor, user=user, pack=pack, release=release, workspace=workspace, licence=licence
            )
    except IntegrityError:
        # Created concurrently by a call that did not take the same lock: theirs stands.
        existing = _live_installation(pack=pack, user=user, workspace=workspace)
        if existing is None:
            raise
        return _existing_or_conflict(existing, release)
    run_now = inline if inline is not None else _release_size(release) <= _inline_max()
    if run_now:
        return installation_run(installation_id=installation.pk, raise_errors=True)
    installation_id = str(installation.pk)

    def enqueue() -> None:
        from marketplace.tasks.installs import installation_run_task

        installation_run_task.delay(installation_id)

    transaction.on_commit(enqueue)
    return installation


def _live_installation(*, pack: Pack, user: User, workspace: str) -> Installation | None:
    return (
        Installation.objects.select_related("release", "namespace")
        .filter(pack=pack, user=user, workspace=workspace, removed_at__isnull=True)
        .first()
    )


def _rebind(installation: Installation) -> Installation:
    """Installing again what is installed: if the installation's licence is no longer usable but the user
    now holds another that is (bought it themselves after losing an organization seat, say), the
    installation moves to that licence and comes back; without a usable licence this is the 402."""
    from marketplace.services.licences import installations_sync, licence_usable

    licence = licence_usable(user=installation.user, pack=installation.release.pack)
    if licence.pk != installation.licence_id:
        Installation.objects.filter(pk=installation.pk).update(licence=licence)
        installation.licence = licence
        installations_sync(licence=licence, reason="installed again under a usable licence")
        installation.namespace.refresh_from_db(fields=["suspended_reason"])
    return installation


def _existing_or_conflict(existing: Installation, release: PackRelease) -> Installation:
    if existing.release_id == release.pk:
        return existing
    raise Conflict(
        f"Version {existing.release.version} of this pack is installed in this workspace; upgrade it "
        f"(POST /api/v1/marketplace/installations/{existing.pk}/upgrade) or remove it first.",
        extra={"installation": str(existing.pk), "installed_version": existing.release.version},
        code="already_installed",
    )


def _installation_create(
    *, actor: Subject, user: User, pack: Pack, release: PackRelease, workspace: str, licence: Licence
) -> Installation:
    from accounts.services import namespace_create

    token = secrets.token_hex(8)
    slug = f"{pack.publisher.slug}.{pack.slug}.{release.version}.{user.username}.{token[:6]}"
    ns = namespace_create(
        kind=NamespaceKind.INSTALLATION, slug=slug, owner_user=user, title=f"{pack.title} {release.version}"
    )
    watermark_id = hashlib.sha256(f"{release.id}:{user.pk}:{token}".encode()).hexdigest()[:32]
    installation = Installation(
        pack=pack,
        release=release,
        user=user,
        workspace=workspace,
        licence=licence,
        namespace=ns,
        watermark_id=watermark_id,
        status=InstallationStatus.PENDING,
        progress={"step": "queued", "done": 0, "total": _release_size(release)},
    )
    installation.full_clean(
        exclude=["pack", "release", "user", "licence", "namespace"], validate_constraints=False
    )
    installation.save()
    # Each installation gets its own fingerprint: keyed lexical variants, canaries and a fragile layer.
    watermark_assign(
        source_namespace=pack.publisher.namespace, installation_id=watermark_id, installation_namespace=ns
    )
    if not Installation.objects.filter(pack=pack, user=user).exclude(pk=installation.pk).exists():
        # Installs counts people, not install/uninstall cycles (it drives sorting by installs).
        Pack.objects.filter(pk=pack.pk).update(install_count=F("install_count") + 1)
    audit_record(
        actor=actor,
        operation="pack.install",
        namespace=ns,
        object_type="installation",
        object_ids=[str(installation.id)],
        details={
            "pack": str(pack),
            "version": release.version,
            "release_id": release.manifest_sha256,
            "workspace": workspace,
            "licence": str(licence.pk),
        },
    )
    return installation


# --- copying (the long part) -----------------------------------------------------------------------------


def _item_for(version: MemCubeVersion, *, release: PackRelease, installation: Installation) -> dict[str, Any]:
    item: dict[str, Any] = {
        "kind": version.kind,
        "text": version.text,
        "title": version.title,
        "tags": version.tags,
        "metadata": version.metadata,
        "source": {**version.source, "release": release.version, "installation": str(installation.id)},
        "semantic_type": version.semantic_type,
        "language": version.language,
        "entities": version.entities,
        "valid_from": version.valid_from,
        "valid_to": version.valid_to,
        "provenance_id": version.cube.provenance_id,
        "licence": release.pack.licence,
    }
    if version.kind != MemoryKind.PLAINTEXT:
        item.update(
            blob_uri=version.blob_uri,
            blob_sha256=version.blob_sha256,
            model_fingerprint=version.model_fingerprint,
            blob_meta=version.blob_meta,
        )
    return item


def _release_versions(release: PackRelease) -> list[MemCubeVersion]:
    """The versions a release ships, minus erased memories (an erasure outlives the release)."""
    # Only the cube's provenance id is used (the version has the content): loading whole MemCube rows
    # as well doubles the model instances built for a 10,000-memory release.
    return list(
        release.memory_versions.exclude(cube__versions__operation=VersionOperation.PURGE)
        .select_related("cube")
        .defer(*_CUBE_UNUSED)
        .order_by("cube__provenance_id")
    )


_CUBE_UNUSED = tuple(
    f"cube__{f.name}" for f in MemCube._meta.concrete_fields if f.name not in ("id", "provenance_id")
)


def _progress(installation: Installation, **fields: Any) -> None:
    installation.progress = {**installation.progress, **fields}
    Installation.objects.filter(pk=installation.pk).update(
        progress=installation.progress, updated_at=timezone.now()
    )


def _set_status(installation: Installation, status: str, *, error: str = "") -> None:
    installation.status = status
    installation.error = error[:2000]
    Installation.objects.filter(pk=installation.pk).update(
        status=status, error=installation.error, updated_at=timezone.now()
    )


def _progress_event(installation: Installation, actor: Subject, step: str, **details: Any) -> None:
    audit_record(
        actor=actor,
        operation="pack.install.progress",
        namespace=installation.namespace,
        object_type="installation",
        object_ids=[str(installation.pk)],
        details={"step": step, **details},
    )


def installed_copies_index(cubes: Iterable[MemCube], sources: dict[Any, VectorSource]) -> dict[str, int]:
    """Index the copies now (reusing the publisher's vectors where sound); on an index outage the
    deferred outbox rows remain and the worker indexes them later."""
    cubes = list(cubes)
    by_copy = {
        c.id: sources[c.provenance_id] for c in cubes if c.provenance_id in sources and not c.is_canary
    }
    try:
        # The chunk's transaction has committed: its rows are indexed as written, not read back.
        return index_upsert_reusing(cube_ids=[c.id for c in cubes], sources=by_copy, cubes=cubes)
    except Exception as exc:  # the index is derived data: the copy stands, the outbox catches up
        logger.warning("indexing installed copies now failed (%s); the index worker will retry", exc)
        return {"reused": 0, "embedded": 0, "removed": 0, "deferred": len(cubes)}


def installation_run(*, installation_id: Any, raise_errors: bool = False) -> Installation:
    """Copy the release into the installation's namespace, watermarked, and make it ready. Idempotent:
    a ready or removed installation is returned as it is, and a rerun after a failure copies only what is
    missing (memories are matched by provenance). On failure the installation is `failed` with the
    error (or, with `raise_errors`, the error propagates and the caller's transaction decides)."""
    installation = (
        Installation.objects.select_related("release__pack__publisher__namespace", "namespace", "user")
        .filter(pk=installation_id)
        .first()
    )
    if installation is None:
        raise NotFound("Installation not found.")
    if installation.status in (InstallationStatus.READY, InstallationStatus.REMOVED):
        return installation
    actor = Subject(user=installation.user).with_context(
        operation="pack.install", installation_id=installation.watermark_id
    )
    try:
        _run(installation, actor)
    except Exception as exc:
        if raise_errors:
            raise
        logger.exception("installation %s failed", installation.pk)
        _set_status(installation, InstallationStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
        audit_record(
            actor=actor,
            operation="pack.install.failed",
            namespace=installation.namespace,
            object_type="installation",
            object_ids=[str(installation.pk)],
            details={"error": installation.error[:300]},
        )
    installation.refresh_from_db()
    return installation


def _run(installation: Installation, actor: Subject) -> None:
    release = installation.release
    pack = release.pack
    ns = installation.namespace
    versions = _release_versions(release)
    sources = {
        v.cube.provenance_id: VectorSource(cube_id=v.cube_id, version=v.version, text=v.text)
        for v in versions
    }
    with transaction.atomic():
        _set_status(installation, InstallationStatus.INSTALLING)
        _progress(installation, step="watermark", done=0, total=len(versions))
    assignment = watermark_assign(
        source_namespace=pack.publisher.namespace,
        installation_id=installation.watermark_id,
        installation_namespace=ns,
    )
    clock = time.perf_counter()
    timings = {"watermark_s": 0.0, "copy_s": 0.0, "index_s": 0.0}
    items = watermark_embed(
        assignment=assignment,
        items=[_item_for(v, release=release, installation=installation) for v in versions],
    )
    timings["watermark_s"] = time.perf_counter() - clock
    have = set(MemCube.objects.filter(namespace=ns, is_canary=False).values_list("provenance_id", flat=True))
    has_canaries = MemCube.objects.filter(namespace=ns, is_canary=True).exists()
    todo = [
        i
        for i in items
        if (i.get("canary") and not has_canaries) or (not i.get("canary") and i["provenance_id"] not in have)
    ]
    done = len(versions) - sum(1 for i in todo if not i.get("canary"))
    stats = {"reused": 0, "embedded": 0}
    chunk = _chunk_size()
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        clock = time.perf_counter()
        with transaction.atomic():
            cubes = memory_import_batch(
                actor=actor,
                namespace=ns,
                items=part,
                watermark_id=installation.watermark_id,
                reason=f"install {pack} {release.version}",
                defer_index_s=INDEX_DEFER_S,
            )
            done += sum(1 for i in part if not i.get("canary"))
            _progress(installation, step="copy", done=done, total=len(versions))
            _progress_event(installation, actor, "copy", done=done, total=len(versions))
        timings["copy_s"] += time.perf_counter() - clock
        clock = time.perf_counter()
        result = installed_copies_index(cubes, sources)
        timings["index_s"] += time.perf_counter() - clock
        for k in stats:
            stats[k] += result.get(k, 0)
    with transaction.atomic():
        _progress(
            installation,
            step="hooks",
            done=done,
            total=len(versions),
            vectors=stats,
            timings={k: round(v, 3) for k, v in timings.items()},
        )
        _set_status(installation, InstallationStatus.READY)
        _progress(installation, step="ready")
        audit_record(
            actor=actor,
            operation="pack.install.ready",
            namespace=ns,
            object_type="installation",
            object_ids=[str(installation.pk)],
            details={
                "memories": done,
                "vectors_reused": stats["reused"],
                "vectors_embedded": stats["embedded"],
            },
        )
    installation_hooks_run(installation, "ready")


def installation_hooks_run(installation: Installation, kind: str, reason: str = "") -> None:
    """Tell the layers above; a failing hook does not undo the installation, it is recorded instead."""
    event = InstallationEvent(
        kind=kind,
        installation_id=str(installation.pk),
        namespace_id=str(installation.namespace_id),
        reason=reason,
    )
    try:
        run_installation_hooks(event)
    except Exception as exc:
        logger.exception("installation hooks failed for %s", event)
        _progress(installation, hooks_error=f"{type(exc).__name__}: {exc}"[:500])


# --- removing --------------------------------------------------------------------------------------------


def _owned(actor: Subject, installation: Installation) -> None:
    if not actor.is_user or installation.user_id != actor.user.pk:
        raise NotFound("Installation not found.")


@transaction.atomic
def installation_remove(*, actor: Subject, installation: Installation) -> Installation:
    """Uninstall: the namespace is suspended (nobody reads it: search, lists, chat), its memories are
    deleted (and leave the index), and the hooks drop its adapters and KV prefixes. The licence stays,
    so installing again works (the uniqueness rule covers live installations only)."""
    require_marketplace(actor)
    _owned(actor, installation)
    locked = Installation.objects.select_for_update().select_related("namespace").get(pk=installation.pk)
    if locked.status == InstallationStatus.REMOVED:
        return locked
    ns = locked.namespace
    Namespace.objects.filter(pk=ns.pk).update(suspended_reason="installation removed")
    ids = list(MemCube.objects.filter(namespace=ns).values_list("id", flat=True))
    MemCube.objects.filter(namespace=ns).delete()  # versions and grants go with them
    index_enqueue(ids, IndexOp.DELETE)
    locked.status = InstallationStatus.REMOVED
    locked.removed_at = timezone.now()
    locked.progress = {**locked.progress, "step": "removed"}
    locked.save(update_fields=["status", "removed_at", "progress", "updated_at"])
    audit_record(
        actor=actor,
        operation="pack.uninstall",
        namespace=ns,
        object_type="installation",
        object_ids=[str(locked.pk)],
        details={"pack": str(locked.pack), "version": locked.release.version, "memories_deleted": len(ids)},
    )
    installation_hooks_run(locked, "removed", reason="uninstalled")
    return locked


# --- upgrading -------------------------------------------------------------------------------------------


@transaction.atomic
def installation_upgrade(*, actor: Subject, installation: Installation, version: str) -> Installation:
    """Move a ready installation to a newer release of its pack, in place: unchanged memories are not
    touched, changed ones get a new version (watermarked as before), removed ones are deleted, added ones
    created. The user's annotations (keyed by provenance) stay; the diff is kept in `last_diff`."""
    require_marketplace(actor)
    _owned(actor, installation)
    locked = (
        Installation.objects.select_for_update()
        .select_related("release__pack__publisher__namespace", "namespace")
        .get(pk=installation.pk)
    )
    if locked.status != InstallationStatus.READY:
        raise Conflict(
            f"The installation is {locked.status}; only a ready installation is upgraded.", code="not_ready"
        )
    old = locked.release
    pack = old.pack
    new = PackRelease.objects.filter(pack=pack, version=version).first()
    if new is None:
        raise NotFound(f"Release '{version}' of {pack} not found.")
    if new.yanked:
        raise ApplicationError(
            f"Release {version} was withdrawn by its publisher.", status=409, code="release_yanked"
        )
    if _semver_key(new.version) <= _semver_key(old.version):
        raise ApplicationError(
            f"Version {version} is not newer than the installed {old.version}.",
            extra={"field": "version"},
            code="not_newer",
        )
    licence = _licence_for_install(user=actor.user, pack=pack)
    diff = installation_diff_compute(old=old, new=new)
    ns = locked.namespace
    new_versions = {str(v.cube.provenance_id): v for v in _release_versions(new)}
    copies = {
        str(c.provenance_id): c
        for c in MemCube.objects.select_for_update()
        .filter(namespace=ns, is_canary=False)
        .exclude(state=MemoryState.DELETED)
    }
    key = watermark_key(pack.publisher.namespace)
    from governance.watermark import watermark_text

    def marked(text: str, kind: str) -> str:
        if kind == MemoryKind.PLAINTEXT and text:
            return str(watermark_text(text, key=key, installation_id=locked.watermark_id))
        return text

    reason = f"upgrade {pack} {old.version} -> {new.version}"
    touched: list[MemCube] = []
    for pid in diff["changed"]:
        v, cube = new_versions.get(pid), copies.get(pid)
        if v is None:
            continue
        if cube is None:
            diff["added"].append(pid)
            continue
        item = _item_for(v, release=new, installation=locked)
        for f in COPIED_FIELDS:
            if f in item:
                setattr(cube, f, item[f])
        cube.text = marked(v.text, v.kind)
        memory_version_write(cube, actor=actor, operation=VersionOperation.OVERWRITE, reason=reason)
        touched.append(cube)
    removed_ids = []
    for pid in diff["removed"]:
        cube = copies.get(pid)
        if cube is None:
            continue
        cube.state = MemoryState.DELETED
        memory_version_write(cube, actor=actor, operation=VersionOperation.DELETE, reason=reason)
        removed_ids.append(cube.id)
    added_items = [
        {**item, "text": marked(item["text"], item["kind"])}
        for pid in sorted(set(diff["added"]))
        if (v := new_versions.get(pid)) is not None and pid not in copies
        for item in [_item_for(v, release=new, installation=locked)]
    ]
    created = (
        memory_import_batch(
            actor=actor,
            namespace=ns,
            items=added_items,
            watermark_id=locked.watermark_id,
            reason=reason,
            defer_index_s=INDEX_DEFER_S,
        )
        if added_items
        else []
    )
    if touched:
        from vault.services import index_enqueue_deferred

        index_enqueue_deferred([c.id for c in touched], IndexOp.UPSERT, delay_s=INDEX_DEFER_S)
    if removed_ids:
        index_enqueue(removed_ids, IndexOp.DELETE)
    locked.previous_release = old
    locked.release = new
    locked.licence = licence
    locked.last_diff = {
        "from": old.version,
        "to": new.version,
        **{k: sorted(set(diff[k])) for k in ("added", "changed", "removed", "unchanged")},
        "counts": {k: len(set(diff[k])) for k in ("added", "changed", "removed", "unchanged")},
        "at": timezone.now().isoformat(),
    }
    locked.save(update_fields=["previous_release", "release", "licence", "last_diff", "updated_at"])
    audit_record(
        actor=actor,
        operation="pack.upgrade",
        namespace=ns,
        object_type="installation",
        object_ids=[str(locked.pk)],
        details={"pack": str(pack), "from": old.version, "to": new.version, **locked.last_diff["counts"]},
    )
    sources = {
        pid: VectorSource(cube_id=v.cube_id, version=v.version, text=v.text)
        for pid, v in new_versions.items()
    }
    by_prov = {v.cube.provenance_id: sources[pid] for pid, v in new_versions.items()}
    installed_copies_index([*touched, *created], by_prov)
    installation_hooks_run(locked, "ready", reason=f"upgraded to {new.version}")
    return locked


# --- annotations -----------------------------------------------------------------------------------------


def _known_provenance(installation: Installation, provenance_id: Any) -> bool:
    return MemCube.objects.filter(
        namespace=installation.namespace, provenance_id=provenance_id, is_canary=False
    ).exclude(state=MemoryState.DELETED).exists() or str(provenance_id) in manifest_map(installation.release)


@transaction.atomic
def annotation_put(
    *,
    actor: Subject,
    installation: Installation,
    provenance_id: Any,
    note: str = "",
    tags: list[str] | None = None,
) -> Annotation:
    """Create or replace the user's note on one installed memory (by provenance: it survives upgrades)."""
    require_marketplace(actor)
    _owned(actor, installation)
    if installation.status == InstallationStatus.REMOVED:
        raise NotFound("Installation not found.")
    tags = list(tags or [])
    if len(note) > MAX_NOTE_CHARS:
        raise ApplicationError(f"'note' takes at most {MAX_NOTE_CHARS} characters.", extra={"field": "note"})
    if len(tags) > MAX_ANNOTATION_TAGS or any(
        not isinstance(t, str) or not t.strip() or len(t) > MAX_TAG_CHARS for t in tags
    ):
        raise ApplicationError(
            f"'tags' takes at most {MAX_ANNOTATION_TAGS} non-empty tags of up to {MAX_TAG_CHARS} characters.",
            extra={"field": "tags"},
        )
    if not _known_provenance(installation, provenance_id):
        raise NotFound(f"Memory '{provenance_id}' is not part of this installation.")
    annotation, _ = Annotation.objects.update_or_create(
        installation=installation, provenance_id=provenance_id, defaults={"note": note, "tags": tags}
    )
    return annotation


@transaction.atomic
def annotation_delete(*, actor: Subject, installation: Installation, provenance_id: Any) -> None:
    require_marketplace(actor)
    _owned(actor, installation)
    deleted, _ = Annotation.objects.filter(installation=installation, provenance_id=provenance_id).delete()
    if not deleted:
        raise NotFound(f"No annotation on '{provenance_id}'.")
