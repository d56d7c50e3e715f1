"""Subscriptions: who may subscribe (licence rules, organizations), others' are 404, bad input is a 400
that writes nothing, pause and resume deliver everything in order, tag, kind and semantic filters."""

from __future__ import annotations

import pytest

from accounts import services as accounts
from accounts.models import Membership, Role
from core.errors import ApplicationError, Conflict, NotFound, PermissionDenied
from feeds import selectors
from feeds.delivery.engine import deliveries_run_due
from feeds.models import (
    Delivery,
    DeliveryStatus,
    Destination,
    DestinationKind,
    Subscription,
    SubscriptionStatus,
)
from feeds.services import subscriptions as subs
from governance.models import AuditEvent
from governance.policy import Subject
from marketplace.models import Licence, PackRelease
from marketplace.services import installs
from marketplace.services.licences import licence_grant, seat_assign
from marketplace.services.studio import pack_update
from vault.models import MemCube

pytestmark = pytest.mark.django_db


@pytest.fixture
def drain(django_capture_on_commit_callbacks):  # type: ignore[no-untyped-def]
    def run() -> int:
        with django_capture_on_commit_callbacks(execute=True):
            return deliveries_run_due()

    return run


def seqs(sub: Subscription, kind: str = DestinationKind.VAULT) -> list[int]:
    return list(
        Delivery.objects.filter(destination__subscription=sub, destination__kind=kind)
        .order_by("seq")
        .values_list("seq", flat=True)
    )


# --- who may subscribe ---------------------------------------------------------------------------------


def test_without_a_licence_subscribing_is_a_402_with_the_licence_refusal(feed_world):
    with pytest.raises(ApplicationError) as err:
        feed_world.subscribe(feed_world.other)
    assert err.value.status == 402 and err.value.code == "licence_required"
    assert "acme/facts" in err.value.message
    assert not Subscription.objects.exists()


def test_a_licensed_subscriber_gets_a_vault_destination_starting_at_the_head(feed_world):
    sub, secret = feed_world.subscribe(name="tax news")
    assert secret is None
    assert (sub.status, sub.enqueued_seq, sub.cursor, sub.name) == (
        SubscriptionStatus.ACTIVE,
        1,
        1,
        "tax news",
    )
    assert list(Destination.objects.filter(subscription=sub).values_list("kind", flat=True)) == ["vault"]
    assert AuditEvent.objects.filter(
        operation="feed.subscription.create", object_ids__contains=[str(sub.pk)]
    ).exists()


def test_someone_elses_subscription_is_not_found(feed_world):
    sub, _ = feed_world.subscribe()
    stranger = Subject(user=feed_world.other)
    with pytest.raises(NotFound):
        selectors.subscription_get(actor=stranger, subscription_id=sub.pk)
    for write in (subs.subscription_pause, subs.subscription_cancel, subs.subscription_resume):
        with pytest.raises(NotFound):
            write(actor=stranger, subscription=sub)
    with pytest.raises(NotFound):
        subs.subscription_update(actor=stranger, subscription=sub, name="mine now")
    assert list(selectors.subscriptions_of(actor=stranger)) == []
    assert (
        selectors.subscription_get(actor=Subject(user=feed_world.subscriber), subscription_id=sub.pk) == sub
    )
    sub.refresh_from_db()
    assert sub.status == SubscriptionStatus.ACTIVE and sub.name == ""


def test_the_feed_is_readable_by_licensees_and_the_publisher_only(feed_world):
    assert (
        selectors.feed_get(actor=Subject(user=feed_world.subscriber), feed_id=feed_world.feed.pk)
        == feed_world.feed
    )
    assert selectors.feed_readable(actor=Subject(user=feed_world.publisher_user), feed=feed_world.feed)
    with pytest.raises(NotFound):
        selectors.feed_get(actor=Subject(user=feed_world.other), feed_id=feed_world.feed.pk)
    with pytest.raises(NotFound):
        selectors.feed_get(actor=Subject(user=feed_world.subscriber), feed_id="not-a-uuid")
    assert [e.seq for e in selectors.entries_after(feed=feed_world.feed, cursor=0)] == [1]


@pytest.fixture
def buyers(feed_world, make_user):  # type: ignore[no-untyped-def]
    """`buyers`, an organization (owner `boss`, admin `deputy`, member `clerk`) without a licence yet."""
    boss, deputy, clerk = make_user("boss"), make_user("deputy"), make_user("clerk")
    org = accounts.organization_create(owner=boss, slug="buyers")
    # Members as an accepted invitation leaves them (the invitation flow is tested in accounts).
    Membership.objects.create(organization=org, user=deputy, role=Role.ADMIN)
    Membership.objects.create(organization=org, user=clerk, role=Role.MEMBER)
    return {"org": org, "boss": boss, "deputy": deputy, "clerk": clerk}


def test_an_organization_subscription_needs_an_org_admin_and_an_org_licence(feed_world, buyers, drain):
    org = buyers["org"]
    with pytest.raises(ApplicationError) as err:
        subs.subscription_create(actor=Subject(user=buyers["deputy"]), feed=feed_world.feed, organization=org)
    assert err.value.status == 402
    licence = licence_grant(pack=feed_world.pack, holder_org=org, reason="org deal")
    with pytest.raises(PermissionDenied):
        subs.subscription_create(actor=Subject(user=buyers["clerk"]), feed=feed_world.feed, organization=org)
    with pytest.raises(NotFound):
        subs.subscription_create(actor=Subject(user=feed_world.other), feed=feed_world.feed, organization=org)
    assert not Subscription.objects.exists()

    sub, _ = subs.subscription_create(
        actor=Subject(user=buyers["deputy"]), feed=feed_world.feed, organization=org
    )
    assert sub.organization_id == org.pk
    # Any owner or admin of the organization manages it; its members do not see it.
    assert selectors.subscription_get(actor=Subject(user=buyers["boss"]), subscription_id=sub.pk) == sub
    with pytest.raises(NotFound):
        selectors.subscription_get(actor=Subject(user=buyers["clerk"]), subscription_id=sub.pk)

    # The clerk, given a seat, installs the pack under the organization's licence: the organization's
    # subscription updates that installation (and not the personal subscriber's).
    # (The pack is sold from now on, so the clerk's install is not given a free licence of their own.)
    pack_update(
        actor=Subject(user=feed_world.publisher_user),
        pack=feed_world.pack,
        price_model="one_time",
        price_cents=900,
    )
    seat_assign(actor=Subject(user=buyers["boss"]), licence=licence, user=buyers["clerk"])
    release = PackRelease.objects.get(pk=feed_world.release.pk)  # with the pack as it is now
    installation = installs.pack_install(actor=Subject(user=buyers["clerk"]), release=release)
    assert installation.licence_id == licence.pk
    entry = feed_world.upsert("Organizations file their returns quarterly.")
    drain()
    assert MemCube.objects.filter(
        namespace=installation.namespace, provenance_id=entry.provenance_id
    ).exists()
    assert not MemCube.objects.filter(
        namespace=feed_world.installation.namespace, provenance_id=entry.provenance_id
    ).exists()
    sub.refresh_from_db()
    assert sub.cursor == entry.seq


# --- bad input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"filter_tags": "tax"}, "filter_tags"),
        ({"filter_tags": [""]}, "filter_tags"),
        ({"filter_kinds": ["memory.exploded"]}, "filter_kinds"),
        ({"filter_threshold": 3}, "filter_threshold"),
        ({"filter_query": 42}, "filter_query"),
        ({"since": -1}, "since"),
        ({"name": "x" * 500}, "name"),
        ({"apply_to_vault": "yes"}, "apply_to_vault"),
        ({"apply_to_vault": False}, "webhook_url"),
        ({"webhook_url": "ftp://example.com/hook"}, "webhook_url"),
        ({"webhook_url": "http://127.0.0.1:9/hook"}, "webhook_url"),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_writes_nothing(feed_world, fields, field):
    audits = AuditEvent.objects.count()
    with pytest.raises(ApplicationError) as err:
        feed_world.subscribe(**fields)
    assert err.value.status == 400 and err.value.extra.get("field") == field, err.value.message
    assert not Subscription.objects.exists() and not Destination.objects.exists()
    assert AuditEvent.objects.count() == audits


def test_an_update_with_bad_input_changes_nothing(feed_world):
    sub, _ = feed_world.subscribe(filter_tags=["tax"])
    with pytest.raises(ApplicationError) as err:
        subs.subscription_update(
            actor=Subject(user=feed_world.subscriber), subscription=sub, name="ok", filter_kinds=["nope"]
        )
    assert err.value.extra == {"field": "filter_kinds"}
    with pytest.raises(ApplicationError) as err:
        subs.subscription_update(actor=Subject(user=feed_world.subscriber), subscription=sub, cursor=0)
    assert err.value.extra == {"field": "cursor"}
    sub.refresh_from_db()
    assert (sub.name, sub.filter_tags) == ("", ["tax"])


# --- pause, resume, cancel ----------------------------------------------------------------------------------


def test_a_paused_subscriber_gets_everything_in_order_on_resume(feed_world, drain):
    sub, _ = feed_world.subscribe()
    actor = Subject(user=feed_world.subscriber)
    first = feed_world.upsert("Entry before the pause.")
    subs.subscription_pause(actor=actor, subscription=sub)
    missed = [feed_world.upsert(f"Entry {i} while paused.") for i in range(4)]
    assert seqs(sub) == [first.seq]
    drain()
    sub.refresh_from_db()
    assert sub.cursor == first.seq and sub.enqueued_seq == first.seq

    subs.subscription_resume(actor=actor, subscription=sub)
    live = feed_world.upsert("Entry after the resume.")
    assert seqs(sub) == [first.seq, *(e.seq for e in missed), live.seq]
    drain()
    assert set(Delivery.objects.filter(destination__subscription=sub).values_list("status", flat=True)) == {
        DeliveryStatus.DELIVERED
    }
    sub.refresh_from_db()
    assert sub.cursor == live.seq
    ns = feed_world.installation.namespace
    for e in (first, *missed, live):
        assert MemCube.objects.filter(namespace=ns, provenance_id=e.provenance_id).exists()
    ops = list(
        AuditEvent.objects.filter(object_ids__contains=[str(sub.pk)])
        .order_by("seq")
        .values_list("operation", flat=True)
    )
    assert ops == ["feed.subscription.create", "feed.subscription.pause", "feed.subscription.resume"]


def test_a_subscription_created_with_since_replays_from_there(feed_world):
    entries = [feed_world.upsert(f"Old fact {i}.") for i in range(3)]
    sub, _ = feed_world.subscribe(since=entries[0].seq)
    assert seqs(sub) == [e.seq for e in entries[1:]]


def test_cancel_stops_the_fan_out_and_cancels_pending_deliveries(feed_world):
    sub, _ = feed_world.subscribe()
    feed_world.upsert("Pending when cancelled.")
    subs.subscription_cancel(actor=Subject(user=feed_world.subscriber), subscription=sub)
    feed_world.upsert("After the cancel.")
    assert list(Delivery.objects.filter(destination__subscription=sub).values_list("status", flat=True)) == [
        DeliveryStatus.CANCELLED
    ]
    with pytest.raises(Conflict):
        subs.subscription_resume(actor=Subject(user=feed_world.subscriber), subscription=sub)


def test_a_dead_letter_is_retried_by_its_owner(feed_world):
    sub, _ = feed_world.subscribe()
    feed_world.upsert("A delivery that died.")
    delivery = Delivery.objects.get(destination__subscription=sub)
    with pytest.raises(Conflict):
        subs.subscription_delivery_retry(
            actor=Subject(user=feed_world.subscriber), subscription=sub, delivery_id=delivery.pk
        )
    Delivery.objects.filter(pk=delivery.pk).update(status=DeliveryStatus.DEAD)
    with pytest.raises(NotFound):
        subs.subscription_delivery_retry(
            actor=Subject(user=feed_world.other), subscription=sub, delivery_id=delivery.pk
        )
    again = subs.subscription_delivery_retry(
        actor=Subject(user=feed_world.subscriber), subscription=sub, delivery_id=delivery.pk
    )
    assert again.status == DeliveryStatus.PENDING
    assert list(selectors.deliveries_of(subscription=sub, status="dead")) == []


# --- webhooks ---------------------------------------------------------------------------------------


def test_a_webhook_subscription_shows_its_secret_once_and_rotation_keeps_the_old_one_valid(
    feed_world, settings
):
    settings.MEMHUB_OUTBOUND_ALLOW_PRIVATE = True
    sub, secret = feed_world.subscribe(webhook_url="http://127.0.0.1:9/hook", apply_to_vault=False)
    assert secret and secret.startswith("whsec_") and sub.webhook_secret == secret
    assert list(Destination.objects.filter(subscription=sub).values_list("kind", flat=True)) == ["webhook"]
    sub2, new = subs.subscription_rotate_secret(actor=Subject(user=feed_world.subscriber), subscription=sub)
    assert new != secret and sub2.webhook_secret == new and sub2.webhook_previous_secret == secret
    assert sub2.webhook_previous_expires_at is not None
    # Turning the vault on adds its destination; dropping the URL removes the webhook's.
    subs.subscription_update(
        actor=Subject(user=feed_world.subscriber), subscription=sub, apply_to_vault=True, webhook_url=""
    )
    assert set(Destination.objects.filter(subscription=sub, active=True).values_list("kind", flat=True)) == {
        "vault"
    }


# --- filters ----------------------------------------------------------------------------------------


def test_a_tag_filter_passes_memories_with_any_of_its_tags_and_every_retraction(feed_world):
    sub, _ = feed_world.subscribe(filter_tags=["tax", "vat"])
    tax = feed_world.upsert("Tax returns are due in April.", tags=["tax"])
    vat = feed_world.upsert("VAT on food is reduced.", tags=["vat", "food"])
    feed_world.upsert("The weather will be mild.", tags=["weather"])
    feed_world.upsert("An untagged note.")
    retraction = feed_world.retract(tax.provenance_id, reason="superseded")
    assert seqs(sub) == [tax.seq, vat.seq, retraction.seq]
    sub.refresh_from_db()
    assert sub.enqueued_seq == retraction.seq  # filtered-out entries count as considered


def test_a_kinds_filter_keeps_only_those_kinds(feed_world):
    sub, _ = feed_world.subscribe(filter_kinds=["memory.retracted"])
    e = feed_world.upsert("Soon retracted.")
    r = feed_world.retract(e.provenance_id)
    assert seqs(sub) == [r.seq]


def test_a_semantic_filter_passes_memories_similar_to_its_query(feed_world):
    sub, _ = feed_world.subscribe(filter_query="corporate income tax rates", filter_threshold=0.4)
    assert sub.filter_vector and len(sub.filter_vector) > 10
    near = feed_world.upsert("The corporate income tax rate rises to twenty-five percent next year.")
    feed_world.upsert("Cats sleep for about sixteen hours every day.")
    feed_world.upsert("The football final ends in a draw after extra time.")
    assert seqs(sub) == [near.seq]
    # A looser threshold lets more through; the query is embedded once, when it is set.
    loose, _ = feed_world.subscribe(
        name="all", filter_query="corporate income tax rates", filter_threshold=-1.0
    )
    later = feed_world.upsert("Cats sleep for about sixteen hours every day, again.")
    assert seqs(loose) == [later.seq]
    assert seqs(sub) == [near.seq]


def test_licences_of_the_org_are_not_personal(feed_world, buyers):
    """A member without a seat cannot subscribe personally through the organization's licence."""
    licence_grant(pack=feed_world.pack, holder_org=buyers["org"], reason="org deal")
    with pytest.raises(ApplicationError) as err:
        feed_world.subscribe(buyers["clerk"])
    assert err.value.status == 402 and err.value.code == "seat_required"
    assert Licence.objects.filter(holder_org=buyers["org"]).count() == 1
