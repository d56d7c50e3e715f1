"""Marketplace reads. The catalog's (browse, pack pages, reviews) are in `marketplace.selectors.catalog`;
the names older callers use (the web pages, installs) stay here."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from accounts.models import User
from core.errors import NotFound
from marketplace.models import Installation, Pack, PackRelease
from marketplace.selectors.catalog import (
    browsable_packs,
    catalog_browse,
    pack_detail,
    review_get,
    review_list,
)

__all__ = [
    "browsable_packs",
    "catalog_browse",
    "installation_list",
    "pack_catalog",
    "pack_detail",
    "pack_get",
    "release_get",
    "review_get",
    "review_list",
]


def pack_catalog(*, query: str = "", tag: str = "") -> QuerySet[Pack]:
    """The browsable packs (listed, with a release) for the web page, matched by plain substring on the
    listing (no index needed; the API's `catalog_browse` searches through the index)."""
    qs = browsable_packs().select_related("publisher").prefetch_related("releases")
    if query:
        qs = qs.filter(
            Q(title__icontains=query)
            | Q(summary__icontains=query)
            | Q(description__icontains=query)
            | Q(slug__icontains=query)
        )
    packs = qs.order_by("publisher__slug", "slug")
    if tag:
        packs = packs.filter(pk__in=[p.pk for p in packs if tag in (p.tags or [])])
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
    release = qs.filter(version=version).first() if version else qs.filter(yanked=False).first()
    if release is None:
        raise NotFound(f"Release '{version}' not found." if version else "This pack has no release yet.")
    return release


def installation_list(*, user: User) -> QuerySet[Installation]:
    return (
        Installation.objects.filter(user=user, removed_at__isnull=True)
        .select_related("release__pack__publisher", "namespace")
        .order_by("-created_at")
    )
