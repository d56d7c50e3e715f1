"""Feed reads: which feeds a caller may read, one feed, its entries after a cursor.

A feed is readable by whoever may use its pack now (a usable licence of their own, or a seat of an
organization licence, or an organization licence they administer) and by the pack's publisher admins;
to anyone else it does not exist (404).
"""

from __future__ import annotations

import uuid
from typing import Any

from django.db.models import Q, QuerySet
from django.utils import timezone

from accounts.models import Role
from core.errors import NotFound
from feeds.models import Feed, FeedEntry
from governance.policy import Subject, SubjectKind
from marketplace.models import USABLE_LICENCE_STATES, Licence, PublisherMember

MAX_PAGE = 1000


def _usable_licences(actor: Subject) -> QuerySet[Licence]:
    """Licences the actor may use now: their own, their seats, and their administered orgs'."""
    now = timezone.now()
    user = actor.user
    admin_orgs = [org for org, role in actor.roles.items() if role in (Role.OWNER, Role.ADMIN)]
    member_orgs = list(actor.roles)
    held = (
        Q(holder_user=user)
        | Q(holder_org_id__in=admin_orgs)
        | Q(holder_org_id__in=member_orgs, seat_assignments__user=user)
    )
    return (
        Licence.objects.filter(held, status__in=USABLE_LICENCE_STATES)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        .exclude(status="past_due", grace_until__isnull=False, grace_until__lte=now)
    )


def _published_pack_filter(actor: Subject) -> Q:
    """Packs whose publisher the actor administers (or publishes for)."""
    user = actor.user
    owner_orgs = [org for org, role in actor.roles.items() if role in (Role.OWNER, Role.ADMIN)]
    member_of = PublisherMember.objects.filter(user=user).values_list("publisher_id", flat=True)
    return (
        Q(pack__publisher__owner_user=user)
        | Q(pack__publisher__organization_id__in=owner_orgs)
        | Q(pack__publisher_id__in=member_of)
    )


def feeds_visible(*, actor: Subject) -> QuerySet[Feed]:
    """Every feed the actor may read."""
    if actor.kind == SubjectKind.SYSTEM:
        return Feed.objects.select_related("pack__publisher")
    if not actor.is_user:
        return Feed.objects.none()
    packs = _usable_licences(actor).values_list("pack_id", flat=True)
    return (
        Feed.objects.filter(Q(pack_id__in=packs) | _published_pack_filter(actor))
        .select_related("pack__publisher")
        .distinct()
        .order_by("created_at", "id")
    )


def feed_readable(*, actor: Subject, feed: Feed) -> bool:
    if actor.kind == SubjectKind.SYSTEM:
        return True
    if not actor.is_user:
        return False
    return feeds_visible(actor=actor).filter(pk=feed.pk).exists()


def feed_get(*, actor: Subject, feed_id: Any) -> Feed:
    """The feed, if the actor may read it; else 404 (as for a feed that does not exist)."""
    try:
        pk = uuid.UUID(str(feed_id))
    except ValueError:
        raise NotFound("Feed not found.") from None
    feed = feeds_visible(actor=actor).filter(pk=pk).first()
    if feed is None:
        raise NotFound("Feed not found.")
    return feed


def feed_for_subscribing(*, actor: Subject, feed_id: Any) -> Feed:
    """The feed a caller asks to subscribe to: one they may read, or the feed of a pack the public catalog
    shows (its existence is no secret), so that subscribing without a licence answers 402 saying what to
    do rather than 404. Anything else is 404, as for a feed that does not exist."""
    from marketplace.services.catalog import pack_is_browsable

    try:
        return feed_get(actor=actor, feed_id=feed_id)
    except NotFound:
        feed = Feed.objects.select_related("pack").filter(pk=uuid.UUID(str(feed_id))).first()
        if feed is None or not pack_is_browsable(feed.pack):
            raise
        return feed


def entries_after(*, feed: Feed, cursor: int, limit: int = 100) -> list[FeedEntry]:
    """The entries with `seq > cursor`, oldest first (at most `limit`, capped at 1,000)."""
    limit = max(1, min(int(limit), MAX_PAGE))
    return list(FeedEntry.objects.filter(feed=feed, seq__gt=max(0, int(cursor))).order_by("seq")[:limit])
