"""Marketplace writes (studio): publishers, packs, releases, installs of free packs.

Every service takes the caller's policy `Subject` (`actor`), so an API token's scopes and stated purpose
hold all the way down: each needs the `marketplace` scope, and writing a pack's memories needs
`memories:write` as any memory write does. Paid checkout (Stripe) is not built yet: installing a priced
pack is refused with a clear 402.
"""

from __future__ import annotations

import re

from django.db import IntegrityError, transaction

from accounts.models import NamespaceKind, Organization, Role
from accounts.services import namespace_create
from core.errors import Conflict, NotFound, PermissionDenied
from governance.policy import Subject, SubjectKind
from marketplace.models import Pack, PackItem, PriceModel, Publisher
from marketplace.services.common import require_marketplace, require_publisher_admin
from vault.models import MemCube
from vault.services import memory_create_batch

SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?$")


@transaction.atomic
def publisher_create(
    *, actor: Subject, organization: Organization, slug: str, display_name: str = ""
) -> Publisher:
    """Register an organization as a publisher (its owners and admins, or the platform)."""
    require_marketplace(actor)
    if actor.kind != SubjectKind.SYSTEM:
        role = actor.roles.get(organization.pk) if actor.is_user else None
        if role is None:
            raise NotFound("Organization not found.")
        if role not in (Role.OWNER, Role.ADMIN):
            raise PermissionDenied("Only the organization's owners and admins register it as a publisher.")
    ns = namespace_create(
        kind=NamespaceKind.PUBLISHER, slug=slug, organization=organization, title=display_name or slug
    )
    publisher = Publisher(
        slug=slug, display_name=display_name or slug, organization=organization, namespace=ns
    )
    publisher.full_clean()
    publisher.save()
    return publisher


@transaction.atomic
def pack_create(
    *,
    actor: Subject,
    publisher: Publisher,
    slug: str,
    title: str,
    description: str = "",
    tags: list[str] | None = None,
    price_cents: int = 0,
    licence: str = "",
) -> Pack:
    require_publisher_admin(actor=actor, publisher=publisher)
    pack = Pack(
        publisher=publisher,
        slug=slug,
        title=title,
        description=description,
        tags=tags or [],
        price_cents=price_cents,
        price_model=PriceModel.ONE_TIME if price_cents else PriceModel.FREE,
        licence=licence or "memhub-standard-1.0",
    )
    pack.full_clean()
    try:
        pack.save()
    except IntegrityError as exc:
        raise Conflict(f"Pack '{slug}' exists.") from exc
    return pack


@transaction.atomic
def pack_add_memories(*, actor: Subject, pack: Pack, items: list[dict]) -> list[MemCube]:
    """Author memories for a pack in the publisher's namespace (tagged with the pack's slug)."""
    require_publisher_admin(actor=actor, publisher=pack.publisher)
    for item in items:
        item.setdefault("tags", [])
        item["tags"] = [*item["tags"], f"pack:{pack.slug}"]
        item.setdefault("licence", pack.licence)
        item.setdefault("source", {"publisher": pack.publisher.slug, "pack": pack.slug})
    cubes = memory_create_batch(actor=actor, namespace_key=pack.publisher.namespace.key, items=items)
    start = pack.items.count()
    PackItem.objects.bulk_create(PackItem(pack=pack, cube=c, position=start + i) for i, c in enumerate(cubes))
    return cubes
