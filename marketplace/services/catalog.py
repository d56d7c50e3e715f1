"""The catalog: each browsable pack's listing as one plaintext MemCube in the vault's own search index.

Browsing searches listings through the same hybrid index as memories (`vault.selectors.memory_search`),
so the listing entry is an ordinary MemCube, written with system writes and indexed by the vault outbox.
It lives in a namespace of kind `catalog`, one per publisher (`catalog:<publisher id>`, owned like the
publisher: its organization or its user). The policy never lets a user read a `catalog` namespace, so
listing entries never appear in anyone's memory lists, searches or chats; only the platform
(`Subject.system`) searches them, and every hit is mapped back to its pack and re-checked in the
database.

A pack is *browsable* when it is listed and has at least one release that is not yanked: that is exactly
when it has an entry. `catalog_sync` makes the entry agree with the pack (create, update, delete) and is
idempotent; `catalog_sync_enqueue` runs it in Celery once the caller's transaction commits;
`catalog_reindex` repairs every entry (after a restore, or if a broker was down).
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from django.db import transaction

from accounts.models import Membership, Namespace, NamespaceKind, Role, User
from accounts.services import namespace_create
from core.errors import Conflict
from governance.audit import audit_record
from governance.policy import Subject, SubjectKind
from marketplace.models import Pack, Publisher
from vault.models import LIVE_STATES, IndexOp, MemCube, MemoryState, Sensitivity, VersionOperation
from vault.services import index_enqueue, memory_import_batch, memory_version_write

logger = logging.getLogger(__name__)

CATALOG_LABEL = "marketplace.catalog"
README_EXCERPT_CHARS = 1500
CATALOG_TAG = "catalog"
_MARKDOWN_NOISE = re.compile(r"(!?\[([^\]]*)\]\([^)]*\))|[#>*_`|~]+")


def catalog_namespace_key(publisher: Publisher) -> str:
    # The publisher's id, not its slug: a key that can never be taken by, or pass to, another publisher.
    return f"{NamespaceKind.CATALOG}:{publisher.id}"


def _catalog_namespace(publisher: Publisher) -> Namespace:
    """The publisher's catalog namespace, made on first use, owned as the publisher is."""
    key = catalog_namespace_key(publisher)
    ns = Namespace.objects.filter(key=key).first()
    if ns is not None:
        return ns
    try:
        return namespace_create(
            kind=NamespaceKind.CATALOG,
            slug=str(publisher.id),
            organization=publisher.organization,
            owner_user=None if publisher.organization_id else publisher.owner_user,
            title=f"Catalog entries of {publisher.slug}",
        )
    except Conflict:  # made concurrently (namespace_create uses a savepoint): take that one
        return Namespace.objects.get(key=key)


def _entry_owner(publisher: Publisher) -> User | None:
    """A MemCube needs an owning user: the publisher's user, or its organization's first owner (then
    admin). The entry is the platform's write on the publisher's behalf."""
    if publisher.owner_user_id:
        return publisher.owner_user
    for role in (Role.OWNER, Role.ADMIN):
        m = (
            Membership.objects.filter(organization=publisher.organization, role=role)
            .select_related("user")
            .order_by("created_at", "id")
            .first()
        )
        if m is not None:
            return m.user
    return None


def _system(owner: User | None) -> Subject:
    # The platform acting (kind system: every namespace); `user` is only the owner the MemCube records.
    return Subject(user=owner, kind=SubjectKind.SYSTEM, system_label=CATALOG_LABEL)


def _plain(markdown: str) -> str:
    """A readme excerpt as text for the index: link targets, images and Markdown marks dropped."""
    text = _MARKDOWN_NOISE.sub(lambda m: m.group(2) or " " if m.group(1) else " ", markdown)
    return re.sub(r"[ \t]+", " ", re.sub(r"\n{3,}", "\n\n", text)).strip()


def catalog_entry(pack: Pack) -> dict[str, Any]:
    """What the listing entry says: title, summary, category, tags, publisher, base models, readme."""
    lines = [pack.title]
    if pack.summary:
        lines.append(pack.summary)
    if pack.description and pack.description != pack.summary:
        lines.append(pack.description[:1000])
    if pack.category:
        lines.append(f"Category: {pack.category.replace('-', ' ')}")
    tags = [str(t) for t in (pack.tags or []) if isinstance(t, str | int)]
    if tags:
        lines.append("Tags: " + ", ".join(tags[:50]))
    lines.append(f"Publisher: {pack.publisher.display_name or pack.publisher.slug} ({pack.publisher.slug})")
    if pack.base_models:
        lines.append("Base models: " + ", ".join(str(b) for b in pack.base_models[:20]))
    if pack.readme:
        lines.append("")
        lines.append(_plain(pack.readme)[:README_EXCERPT_CHARS])
    return {
        "kind": "plaintext",
        "title": pack.title[:300],
        "text": "\n".join(lines),
        "tags": [CATALOG_TAG],
        "source": {"catalog": True, "publisher": pack.publisher.slug, "pack": pack.slug},
        "metadata": {"pack_id": str(pack.id)},
        "sensitivity": Sensitivity.PUBLIC,
    }


def pack_is_browsable(pack: Pack) -> bool:
    """Listed, with at least one release that is not yanked: what the catalog shows."""
    return pack.listed and pack.releases.filter(yanked=False).exists()


def _entries_of(pack_id: Any) -> list[MemCube]:
    """Every live catalog MemCube that says it lists this pack (normally one), locked."""
    return list(
        MemCube.objects.select_for_update(of=("self",))
        .filter(
            namespace__kind=NamespaceKind.CATALOG,
            metadata__pack_id=str(pack_id),
            state__in=LIVE_STATES,
        )
        .order_by("created_at", "id")
    )


def _retire(cubes: list[MemCube], *, actor: Subject, reason: str) -> None:
    for cube in cubes:
        cube.state = MemoryState.DELETED
        memory_version_write(cube, actor=actor, operation=VersionOperation.DELETE, reason=reason)
    if cubes:
        index_enqueue([c.id for c in cubes], IndexOp.DELETE)


@transaction.atomic
def catalog_sync(*, pack_id: Any) -> None:
    """Make the pack's catalog entry agree with the pack: created when it becomes browsable, rewritten
    when its listing changes, deleted when it is unlisted, loses its last release or is gone. Running it
    twice changes nothing the second time. The pack row is locked, so concurrent syncs queue up."""
    pack = Pack.objects.select_for_update(of=("self",)).select_related("publisher").filter(pk=pack_id).first()
    entries = _entries_of(pack_id)
    if pack is None:
        _retire(entries, actor=_system(None), reason="pack removed")
        return
    actor = _system(_entry_owner(pack.publisher))
    if not pack_is_browsable(pack):
        _retire(entries, actor=actor, reason="not browsable: unlisted or without a release")
        if pack.catalog_cube_id is not None:
            Pack.objects.filter(pk=pack.pk).update(catalog_cube_id=None)
        if entries:
            _audit(pack, actor=actor, action="deleted", cube_ids=[c.id for c in entries])
        return
    wanted = catalog_entry(pack)
    current = next((c for c in entries if c.id == pack.catalog_cube_id), entries[0] if entries else None)
    # Duplicates (an entry left behind by a publisher that moved, or a lost race) go.
    _retire([c for c in entries if c is not current], actor=actor, reason="duplicate catalog entry")
    action = ""
    if current is None:
        if actor.user is None:
            logger.error(
                "catalog: publisher %s has no owner or admin; %s is not indexed", pack.publisher, pack
            )
            return
        ns = _catalog_namespace(pack.publisher)
        current = memory_import_batch(actor=actor, namespace=ns, items=[wanted], reason="catalog listing")[0]
        # Frozen: sweeps (cold archival, consolidation) leave it alone; only this service changes it.
        current.frozen = True
        current.save(update_fields=["frozen", "updated_at"])
        action = "created"
    elif any(getattr(current, f) != wanted[f] for f in ("title", "text", "source", "metadata")):
        for f in ("title", "text", "source", "metadata", "tags", "sensitivity"):
            setattr(current, f, wanted[f])
        memory_version_write(current, actor=actor, operation="overwrite", reason="listing changed")
        index_enqueue([current.id], IndexOp.UPSERT)
        action = "updated"
    if pack.catalog_cube_id != current.id:
        Pack.objects.filter(pk=pack.pk).update(catalog_cube_id=current.id)
    if action:
        _audit(pack, actor=actor, action=action, cube_ids=[current.id])


def _audit(pack: Pack, *, actor: Subject, action: str, cube_ids: list[Any]) -> None:
    audit_record(
        actor=Subject.system(CATALOG_LABEL),
        operation="pack.catalog_sync",
        namespace=pack.publisher.namespace,
        object_type="pack",
        object_ids=[str(pack.id)],
        details={"entry": action, "cubes": [str(c) for c in cube_ids]},
    )


def _sync_now(pack_id: str) -> None:
    from marketplace.tasks.catalog import catalog_sync_task

    try:
        catalog_sync_task.delay(pack_id)
    except Exception:  # a broker outage must not fail the caller's write; catalog_reindex repairs it
        logger.exception("could not queue the catalog sync of pack %s", pack_id)


def catalog_sync_enqueue(pack_id: Any) -> None:
    """Bring the pack's listing entry in the search index up to date (after create, edit or release):
    queued in Celery once the caller's transaction commits (at once when there is none)."""
    transaction.on_commit(lambda: _sync_now(str(pack_id)))


def _is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def catalog_reindex() -> dict[str, int]:
    """Re-sync every pack's entry, and drop entries whose pack is gone (no management command needed:
    a Celery task or a shell call). Returns how many packs were synced and how many were browsable."""
    from marketplace.services.reviews import pack_rating_recompute

    pack_ids = set(Pack.objects.values_list("pk", flat=True))
    orphans = set(
        MemCube.objects.filter(namespace__kind=NamespaceKind.CATALOG, state__in=LIVE_STATES).values_list(
            "metadata__pack_id", flat=True
        )
    )
    synced = 0
    for pid in sorted({str(p) for p in pack_ids} | {str(o) for o in orphans if _is_uuid(o)}):
        catalog_sync(pack_id=pid)
        synced += 1
    for pack_id in pack_ids:  # the rating aggregates are derived too: recompute them while at it
        pack_rating_recompute(pack_id=pack_id)
    browsable = Pack.objects.filter(catalog_cube_id__isnull=False).count()
    return {"synced": synced, "browsable": browsable}
