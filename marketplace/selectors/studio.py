"""Marketplace reads (studio): publishers, their members, a pack as its publisher sees it, its content."""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet

from accounts.models import Role
from core.errors import NotFound
from governance.policy import Subject, SubjectKind
from marketplace.models import Pack, PackUpload, Publisher, PublisherMember
from marketplace.services.common import publisher_role
from vault.models import LIVE_STATES, MemCube


def publisher_get(*, slug: str) -> Publisher:
    """A publisher profile (profiles are public)."""
    publisher = (
        Publisher.objects.select_related("organization", "owner_user", "namespace").filter(slug=slug).first()
    )
    if publisher is None:
        raise NotFound(f"Publisher '{slug}' not found.")
    return publisher


def publisher_list_for(*, actor: Subject) -> QuerySet[Publisher]:
    """The publishers the caller publishes for (owner, org owner/admin, or member)."""
    qs = Publisher.objects.select_related("organization", "owner_user")
    if actor.kind == SubjectKind.SYSTEM:
        return qs.order_by("slug")
    if not actor.is_user:
        return qs.none()
    admin_orgs = [org for org, role in actor.roles.items() if role in (Role.OWNER, Role.ADMIN)]
    return (
        qs.filter(Q(owner_user=actor.user) | Q(organization__in=admin_orgs) | Q(members__user=actor.user))
        .distinct()
        .order_by("slug")
    )


def publisher_members(*, publisher: Publisher) -> QuerySet[PublisherMember]:
    return publisher.members.select_related("user", "added_by").order_by("user__username")


def publisher_packs(*, actor: Subject, publisher: Publisher) -> QuerySet[Pack]:
    """A publisher's packs: every one for those who publish for it, the listed ones for anyone else."""
    qs = Pack.objects.filter(publisher=publisher).select_related("publisher").order_by("slug")
    if publisher_role(actor=actor, publisher=publisher) is None:
        qs = qs.filter(listed=True)
    return qs


def studio_pack_get(*, actor: Subject, publisher_slug: str, slug: str) -> Pack:
    """A pack for the studio: unlisted packs exist only for those who publish for it (else 404); the
    services then check the role (a listed pack's outsider gets 403 naming what is missing)."""
    pack = (
        Pack.objects.select_related("publisher__namespace", "publisher__organization")
        .filter(publisher__slug=publisher_slug, slug=slug)
        .first()
    )
    if pack is None or (not pack.listed and publisher_role(actor=actor, publisher=pack.publisher) is None):
        raise NotFound(f"Pack '{publisher_slug}/{slug}' not found.")
    return pack


def pack_items(pack: Pack) -> QuerySet[MemCube]:
    """The pack's live content, in pack order (canaries never are content)."""
    return (
        MemCube.objects.filter(pack_items__pack=pack, state__in=LIVE_STATES, is_canary=False)
        .select_related("namespace", "owner")
        .order_by("pack_items__position", "pack_items__id")
    )


def pack_uploads(*, pack: Pack) -> QuerySet[PackUpload]:
    return pack.uploads.select_related("uploaded_by").order_by("-created_at")


def pack_upload_get(*, pack: Pack, upload_id: Any) -> PackUpload:
    upload = pack.uploads.select_related("uploaded_by").filter(pk=upload_id).first()
    if upload is None:
        raise NotFound(f"Upload {upload_id} not found.")
    return upload


def require_publisher_reader(*, actor: Subject, publisher: Publisher) -> str:
    """Studio reads (members, unreleased content, uploads) need the `marketplace` scope and a role for
    the publisher; profiles are public, so a refusal is a 403 that says so."""
    from core.errors import PermissionDenied
    from marketplace.services.common import require_marketplace

    require_marketplace(actor)
    role = publisher_role(actor=actor, publisher=publisher)
    if role is None:
        raise PermissionDenied(f"You do not publish for '{publisher.slug}'.")
    return role


def studio_members(*, actor: Subject, publisher: Publisher) -> QuerySet[PublisherMember]:
    require_publisher_reader(actor=actor, publisher=publisher)
    return publisher_members(publisher=publisher)


def studio_items(*, actor: Subject, pack: Pack) -> QuerySet[MemCube]:
    require_publisher_reader(actor=actor, publisher=pack.publisher)
    return pack_items(pack)


def studio_uploads(*, actor: Subject, pack: Pack) -> QuerySet[PackUpload]:
    require_publisher_reader(actor=actor, publisher=pack.publisher)
    return pack_uploads(pack=pack)


def studio_upload_get(*, actor: Subject, pack: Pack, upload_id: Any) -> PackUpload:
    require_publisher_reader(actor=actor, publisher=pack.publisher)
    return pack_upload_get(pack=pack, upload_id=upload_id)


def studio_pack(*, actor: Subject, pack: Pack) -> Pack:
    require_publisher_reader(actor=actor, publisher=pack.publisher)
    return pack
