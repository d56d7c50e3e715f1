from __future__ import annotations

from django.db.models import Q, QuerySet

from accounts.models import User
from core.errors import NotFound
from marketplace.models import Installation, Pack, PackRelease


def pack_catalog(*, query: str = "", tag: str = "") -> QuerySet[Pack]:
    qs = Pack.objects.filter(listed=True).select_related("publisher").prefetch_related("releases")
    if query:
        qs = qs.filter(Q(title__icontains=query) | Q(description__icontains=query) | Q(slug__icontains=query))
    packs = qs.order_by("publisher__slug", "slug")
    if tag:
        packs = packs.filter(pk__in=[p.pk for p in packs if tag in p.tags])
    return packs


def pack_get(*, publisher_slug: str, slug: str) -> Pack:
    pack = (
        Pack.objects.select_related("publisher")
        .filter(publisher__slug=publisher_slug, slug=slug, listed=True)
        .first()
    )
    if pack is None:
        raise NotFound(f"Pack '{publisher_slug}/{slug}' not found.")
    return pack


def release_get(*, pack: Pack, version: str | None) -> PackRelease:
    qs = pack.releases.order_by("-created_at")
    release = qs.filter(version=version).first() if version else qs.first()
    if release is None:
        raise NotFound(f"Release '{version}' not found." if version else "This pack has no release yet.")
    return release


def installation_list(*, user: User) -> QuerySet[Installation]:
    return (
        Installation.objects.filter(user=user)
        .select_related("release__pack__publisher", "namespace")
        .order_by("-created_at")
    )
