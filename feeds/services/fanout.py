"""Fan-out: one `Delivery` per entry and active destination of every subscription the entry passes,
written in the transaction that writes the entry (the outbox), then handed to the delivery engine once
that transaction commits.

`Subscription.enqueued_seq` records how far a subscription has been considered, so an entry is fanned
out to a subscription once: by `entry_fanout` when it is appended, or by `subscription_backfill` when a
paused subscription resumes (both under the feed row's lock, so they cannot interleave).

Content filters (tags, a semantic query) choose among memory updates. A retraction, a release, new terms
and a withdrawal always pass them: they concern what the subscriber already holds (a retraction of a
memory the subscriber does not have changes nothing), and a subscriber filtering by topic must not keep
a retracted memory because it was tagged differently. The kinds filter applies to every entry but
retractions, which also reach paused subscriptions' vaults at once (`feeds.services.apply.
retraction_apply_paused`): neither a filter nor a pause keeps what the publisher withdrew.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from django.db import transaction
from django.utils import timezone

from feeds.models import (
    Delivery,
    Destination,
    EntryKind,
    Feed,
    FeedEntry,
    Subscription,
    SubscriptionStatus,
)

logger = logging.getLogger(__name__)

BACKFILL_PAGE = 500


def entry_embedding(text: str) -> np.ndarray | None:
    """The text's embedding with the vault's embedder (normalised: cosine similarity is a dot product)."""
    if not text.strip():
        return None
    from vault.embedding import get_embedder

    return np.asarray(get_embedder().embed_one(text), dtype=np.float32)


def query_embedding(text: str) -> list[float]:
    """A subscription's semantic query, embedded once when the subscription is written."""
    vector = entry_embedding(text)
    return [] if vector is None else [float(x) for x in vector]


def _passes(sub: Subscription, entry: FeedEntry, vector: np.ndarray | None) -> bool:
    if entry.kind == EntryKind.MEMORY_RETRACTED:
        return True  # a retraction concerns what the subscriber holds, whatever it filters on
    if sub.filter_kinds and entry.kind not in sub.filter_kinds:
        return False
    if entry.kind != EntryKind.MEMORY_UPSERTED:
        return True
    if sub.filter_tags and not set(sub.filter_tags) & set(entry.tags or []):
        return False
    if sub.filter_vector:
        if vector is None:
            return False
        query = np.asarray(sub.filter_vector, dtype=np.float32)
        if query.shape != vector.shape:
            return False
        return float(np.dot(query, vector)) >= float(sub.filter_threshold)
    return True


class _Licensing:
    """Which subscription holders may use the pack now, read once per fan-out (a feed may have a
    thousand subscribers: one query per kind of holder, not one per subscription)."""

    def __init__(self, feed: Feed) -> None:
        from accounts.models import Membership
        from marketplace.models import Licence, SeatAssignment
        from marketplace.services.licences import licence_is_usable

        now = timezone.now()
        usable = [
            lic for lic in Licence.objects.filter(pack_id=feed.pack_id) if licence_is_usable(lic, now=now)
        ]
        self.users = {lic.holder_user_id for lic in usable if lic.holder_user_id}
        self.orgs = {lic.holder_org_id for lic in usable if lic.holder_org_id}
        org_licences = {lic.pk: lic.holder_org_id for lic in usable if lic.holder_org_id}
        if org_licences:
            seats = SeatAssignment.objects.filter(licence_id__in=list(org_licences)).values_list(
                "licence_id", "user_id"
            )
            members = set(
                Membership.objects.filter(organization_id__in=set(org_licences.values())).values_list(
                    "organization_id", "user_id"
                )
            )
            self.users |= {u for lic, u in seats if (org_licences[lic], u) in members}

    def allows(self, sub: Subscription) -> bool:
        if sub.organization_id is not None:
            return sub.organization_id in self.orgs
        return sub.owner_user_id in self.users


def licence_stop_reason(sub: Subscription) -> str:
    """Why the subscription's holder may no longer use the pack (the licence refusal's message)."""
    from core.errors import ApplicationError
    from marketplace.models import Licence
    from marketplace.services.licences import licence_is_usable, licence_usable, suspension_reason

    pack = sub.feed.pack
    if sub.organization_id is not None:
        latest = (
            Licence.objects.filter(pack=pack, holder_org_id=sub.organization_id)
            .order_by("-created_at")
            .first()
        )
        if latest is None:
            return f"The organization holds no licence for {pack}."
        if not licence_is_usable(latest):
            return suspension_reason(latest)
        return ""
    try:
        licence_usable(user=sub.owner_user, pack=pack)
    except ApplicationError as exc:
        return exc.message[:300]
    return ""


def _stop(subs: Sequence[Subscription]) -> None:
    from governance.audit import audit_record

    for sub in subs:
        reason = licence_stop_reason(sub) or "The licence for this pack is no longer usable."
        Subscription.objects.filter(pk=sub.pk).update(
            status=SubscriptionStatus.STOPPED, status_reason=reason[:300], updated_at=timezone.now()
        )
        Destination.objects.filter(subscription=sub).update(active=False)
        sub.status = SubscriptionStatus.STOPPED
        sub.status_reason = reason[:300]
        audit_record(
            actor=None,
            operation="feed.subscription.stop",
            object_type="subscription",
            object_ids=[str(sub.pk)],
            details={"reason": sub.status_reason, "feed": str(sub.feed_id)},
        )


def _fan(
    entries: Sequence[FeedEntry], subs: Sequence[Subscription], *, licensing: _Licensing | None = None
) -> list[Delivery]:
    """Deliveries for `entries` (ascending seq) to `subs` (all of one feed); moves `enqueued_seq`."""
    if not entries or not subs:
        return []
    licensing = licensing or _Licensing(entries[0].feed)
    refused = [s for s in subs if not licensing.allows(s)]
    if refused:
        _stop(refused)
    live = [s for s in subs if licensing.allows(s)]
    if not live:
        return []
    destinations: dict[Any, list[Destination]] = {}
    for d in Destination.objects.filter(subscription__in=live, active=True).order_by("kind"):
        destinations.setdefault(d.subscription_id, []).append(d)
    semantic = any(s.filter_vector for s in live)
    now = timezone.now()
    rows: list[Delivery] = []
    for entry in entries:
        vector = (
            entry_embedding(entry.text)
            if semantic and entry.kind == EntryKind.MEMORY_UPSERTED and entry.text
            else None
        )
        for sub in live:
            if entry.seq <= sub.enqueued_seq or not _passes(sub, entry, vector):
                continue
            rows.extend(
                Delivery(
                    destination=d,
                    entry=entry,
                    event_type=entry.kind,
                    seq=entry.seq,
                    next_attempt_at=now,
                )
                for d in destinations.get(sub.pk, [])
            )
    top = entries[-1].seq
    moved = [s for s in live if s.enqueued_seq < top]
    for s in moved:
        s.enqueued_seq = top
    if moved:  # one statement however many subscribers: they all move to the same seq
        Subscription.objects.filter(pk__in=[s.pk for s in moved], enqueued_seq__lt=top).update(
            enqueued_seq=top
        )
    created = Delivery.objects.bulk_create(rows, ignore_conflicts=False) if rows else []
    _enqueue({d.destination_id for d in created})
    return created


def _enqueue(destination_ids: Iterable[Any]) -> None:
    ids = [str(i) for i in destination_ids]
    if not ids:
        return
    from feeds.delivery.engine import deliveries_enqueue

    deliveries_enqueue(ids)


def entry_fanout(entry: FeedEntry) -> list[Delivery]:
    """Deliveries for a new entry (the caller holds the feed row's lock, in the entry's transaction)."""
    subs = list(
        Subscription.objects.filter(
            feed_id=entry.feed_id, status=SubscriptionStatus.ACTIVE, enqueued_seq__lt=entry.seq
        ).select_related("feed__pack")
    )
    if entry.kind == EntryKind.MEMORY_RETRACTED:
        _retract_for_paused(entry)
    return _fan([entry], subs)


def _retract_for_paused(entry: FeedEntry) -> None:
    """Paused subscriptions get a retraction's effect now; its delivery waits for the resume, in order."""
    from feeds.services.apply import retraction_apply_paused

    paused = Subscription.objects.filter(
        feed_id=entry.feed_id, status=SubscriptionStatus.PAUSED, apply_to_vault=True
    ).select_related("feed__pack")
    for sub in paused:
        retraction_apply_paused(subscription=sub, entry=entry)


@transaction.atomic
def subscription_backfill(subscription: Subscription) -> int:
    """Fan out, in order, every entry after the subscription's `enqueued_seq` (a resume, or a
    subscription created with `since`). The feed row is locked, so an entry appended meanwhile either
    is in this backfill or is fanned out after it, never both and never neither. Returns the number of
    deliveries written."""
    feed = Feed.objects.select_for_update().get(pk=subscription.feed_id)
    sub = Subscription.objects.select_related("feed__pack").get(pk=subscription.pk)
    if sub.status != SubscriptionStatus.ACTIVE:
        return 0
    total = 0
    licensing = _Licensing(feed)
    while sub.enqueued_seq < feed.last_seq and sub.status == SubscriptionStatus.ACTIVE:
        entries = list(
            FeedEntry.objects.filter(feed=feed, seq__gt=sub.enqueued_seq)
            .select_related("feed")
            .order_by("seq")[:BACKFILL_PAGE]
        )
        if not entries:
            break
        total += len(_fan(entries, [sub], licensing=licensing))
    subscription.enqueued_seq = sub.enqueued_seq
    subscription.status = sub.status
    subscription.status_reason = sub.status_reason
    return total
