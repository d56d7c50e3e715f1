"""A retraction reaches a subscriber's vault even while the subscription is paused, and whatever its
filters: neither is a way to keep using what the publisher withdrew. The entries still apply in order
on resume."""

from __future__ import annotations

import pytest

from feeds.delivery.engine import deliveries_run_due
from feeds.models import Delivery, DeliveryStatus, DestinationKind
from feeds.services import subscriptions as subs
from governance.policy import Subject
from vault.models import MemCube, MemoryState

pytestmark = pytest.mark.django_db


def drain(capture) -> int:  # type: ignore[no-untyped-def]
    with capture(execute=True):
        return deliveries_run_due()


def copy_of(feed_world, provenance_id) -> MemCube:  # type: ignore[no-untyped-def]
    return MemCube.objects.get(
        namespace=feed_world.installation.namespace, provenance_id=provenance_id, is_canary=False
    )


def test_a_retraction_archives_a_paused_subscribers_copy_at_once(
    feed_world, django_capture_on_commit_callbacks
):
    sub, _ = feed_world.subscribe()
    actor = Subject(user=feed_world.subscriber)
    added = feed_world.upsert("The warranty on refurbished widgets lasts eighteen months from delivery.")
    drain(django_capture_on_commit_callbacks)
    assert copy_of(feed_world, added.provenance_id).state != MemoryState.ARCHIVED

    # Given a paused subscription, when the publisher revises and then retracts the memory
    subs.subscription_pause(actor=actor, subscription=sub)
    revised = feed_world.upsert(
        "The warranty on refurbished widgets lasts twelve months from delivery.",
        provenance_id=str(added.provenance_id),
    )
    retraction = feed_world.retract(added.provenance_id, reason="Warranty terms under review.")
    drain(django_capture_on_commit_callbacks)

    # Then the copy is archived now, while nothing else was delivered and the cursor did not move
    assert copy_of(feed_world, added.provenance_id).state == MemoryState.ARCHIVED
    sub.refresh_from_db()
    assert sub.cursor == added.seq and sub.enqueued_seq == added.seq

    # When it resumes, the missed entries apply in order and the memory stays retracted
    subs.subscription_resume(actor=actor, subscription=sub)
    drain(django_capture_on_commit_callbacks)
    sub.refresh_from_db()
    assert sub.cursor == retraction.seq
    seqs = list(
        Delivery.objects.filter(destination__subscription=sub, destination__kind=DestinationKind.VAULT)
        .order_by("seq")
        .values_list("seq", "status")
    )
    assert seqs == [(e.seq, DeliveryStatus.DELIVERED) for e in (added, revised, retraction)]
    copy = copy_of(feed_world, added.provenance_id)
    assert copy.state == MemoryState.ARCHIVED
    # Its history: created, archived while paused, revised (revived for that moment), archived again.
    assert copy.versions.count() == 4


def test_a_kinds_filter_does_not_keep_a_retracted_memory(feed_world, django_capture_on_commit_callbacks):
    sub, _ = feed_world.subscribe(filter_kinds=["release.published"])
    origin = MemCube.objects.filter(pack_items__pack=feed_world.pack).first()
    assert origin is not None
    feed_world.upsert("An update the filter leaves out.")
    retraction = feed_world.retract(origin.provenance_id)
    drain(django_capture_on_commit_callbacks)

    assert list(Delivery.objects.filter(destination__subscription=sub).values_list("seq", flat=True)) == [
        retraction.seq
    ]
    assert copy_of(feed_world, origin.provenance_id).state == MemoryState.ARCHIVED
