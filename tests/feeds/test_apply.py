"""Applying entries to a subscriber's vault: upserts as new watermarked versions of the installation's
copy (the old version kept), exactly once however often a delivery arrives, releases as upgrades."""

from __future__ import annotations

import pytest

from feeds.delivery.engine import deliveries_run_due
from feeds.models import AppliedCursor, Delivery, DeliveryStatus, DestinationKind, SubscriptionStatus
from feeds.services.apply import entry_apply, vault_send
from governance.policy import Subject
from governance.watermark import watermark_text
from governance.watermarking import watermark_key
from marketplace import hooks
from marketplace import services as market
from marketplace.models import Installation, InstallationStatus
from marketplace.services.licences import licence_end, licence_grant
from vault.models import MemCube, MemCubeVersion, MemoryState

pytestmark = pytest.mark.django_db


@pytest.fixture
def drain(django_capture_on_commit_callbacks):  # type: ignore[no-untyped-def]
    """Send every due delivery now, running what each commit schedules (indexing, hooks)."""

    def run() -> int:
        with django_capture_on_commit_callbacks(execute=True):
            return deliveries_run_due()

    return run


@pytest.fixture
def seen_events():  # type: ignore[no-untyped-def]
    events: list[hooks.InstallationEvent] = []
    hooks.register_installation_hook(events.append)
    yield events
    hooks.unregister_installation_hook(events.append)


def publisher_cube(world, text_start: str) -> MemCube:  # type: ignore[no-untyped-def]
    return MemCube.objects.get(pack_items__pack=world.pack, text__startswith=text_start)


def copy_of(installation: Installation, provenance_id) -> MemCube:  # type: ignore[no-untyped-def]
    return MemCube.objects.get(namespace=installation.namespace, provenance_id=provenance_id, is_canary=False)


def marked(world, installation: Installation, text: str) -> str:  # type: ignore[no-untyped-def]
    return watermark_text(
        text, key=watermark_key(world.pack.publisher.namespace), installation_id=installation.watermark_id
    )


NEW_RATE = "The corporate tax rate is twenty-five percent of taxable income from the next fiscal year."


def test_an_upsert_becomes_a_new_watermarked_version_of_the_copy_and_the_old_one_stays(
    feed_world, drain, seen_events
):
    sub, secret = feed_world.subscribe()
    assert secret is None  # no webhook
    origin = publisher_cube(feed_world, "The corporate tax rate")
    before = copy_of(feed_world.installation, origin.provenance_id)
    old_text = before.text

    entry = feed_world.upsert(NEW_RATE, provenance_id=str(origin.provenance_id))
    delivery = Delivery.objects.get(destination__subscription=sub)
    assert (delivery.seq, delivery.event_type, delivery.destination.kind) == (
        entry.seq,
        "memory.upserted",
        DestinationKind.VAULT,
    )
    drain()

    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.DELIVERED
    after = copy_of(feed_world.installation, origin.provenance_id)
    assert after.pk == before.pk and after.version == before.version + 1
    assert after.text == marked(feed_world, feed_world.installation, NEW_RATE)
    assert after.watermark_id == feed_world.installation.watermark_id
    history = list(
        MemCubeVersion.objects.filter(cube=after).order_by("version").values_list("text", flat=True)
    )
    assert history == [old_text, after.text]
    sub.refresh_from_db()
    assert sub.cursor == entry.seq
    assert AppliedCursor.objects.get(installation=feed_world.installation).seq == entry.seq
    # Inference hears of it, so it rebuilds the installation's KV prefixes and adapters.
    assert [(e.kind, e.reason) for e in seen_events] == [("ready", f"feed update #{entry.seq}")]


def test_applying_the_same_delivery_twice_changes_nothing(feed_world, drain):
    sub, _ = feed_world.subscribe()
    origin = publisher_cube(feed_world, "The corporate tax rate")
    feed_world.upsert(NEW_RATE, provenance_id=str(origin.provenance_id))
    drain()
    copy = copy_of(feed_world.installation, origin.provenance_id)
    versions = MemCubeVersion.objects.filter(cube=copy).count()
    delivery = Delivery.objects.get(destination__subscription=sub)

    # Delivered again (a worker that died after applying, before recording it): nothing changes.
    assert vault_send(Delivery.objects.select_related("destination", "entry").get(pk=delivery.pk)).result == (
        "delivered"
    )
    Delivery.objects.filter(pk=delivery.pk).update(status=DeliveryStatus.PENDING)
    drain()
    assert MemCubeVersion.objects.filter(cube=copy).count() == versions
    assert copy_of(feed_world.installation, origin.provenance_id).version == copy.version
    assert entry_apply(installation_id=feed_world.installation.pk, entry=delivery.entry) == "skipped"


def test_a_new_memory_is_created_in_the_installation_like_an_installed_copy(feed_world, drain):
    feed_world.subscribe()
    text = "Import duties on printed books are zero within the customs union."
    entry = feed_world.upsert(text, title="Books", tags=["customs"])
    drain()
    copy = copy_of(feed_world.installation, entry.provenance_id)
    assert copy.text == marked(feed_world, feed_world.installation, text)
    assert (copy.title, copy.tags, copy.watermark_id) == (
        "Books",
        ["customs"],
        feed_world.installation.watermark_id,
    )
    assert copy.source["pack"] == "facts" and copy.source["installation"] == str(feed_world.installation.pk)
    assert copy.state in (MemoryState.GENERATED, MemoryState.ACTIVATED)


def test_an_update_that_changes_nothing_writes_no_new_version(feed_world, drain):
    feed_world.subscribe()
    origin = publisher_cube(feed_world, "A refund request")
    copy = copy_of(feed_world.installation, origin.provenance_id)
    entry = feed_world.upsert(origin.text, provenance_id=str(origin.provenance_id))
    drain()
    assert entry.body["data"]["version"] == origin.version  # the publisher's memory did not change either
    assert copy_of(feed_world.installation, origin.provenance_id).version == copy.version
    assert AppliedCursor.objects.get(installation=feed_world.installation).seq == entry.seq


def test_a_newer_release_upgrades_the_installation_and_an_older_one_is_a_no_op(feed_world, drain):
    sub, _ = feed_world.subscribe(since=0)  # replays release 1.0.0 (installed already): nothing to do
    pub = Subject(user=feed_world.publisher_user)
    market.pack_add_memories(actor=pub, pack=feed_world.pack, items=[{"text": "Pensions are paid monthly."}])
    market.release_publish(actor=pub, pack=feed_world.pack, version="1.1.0")
    drain()
    installation = Installation.objects.get(pk=feed_world.installation.pk)
    assert (
        installation.release.version == "1.1.0" and installation.previous_release_id == feed_world.release.pk
    )
    assert MemCube.objects.filter(namespace=installation.namespace, text__contains="monthly").exists()
    assert list(
        Delivery.objects.filter(destination__subscription=sub).order_by("seq").values_list("seq", "status")
    ) == [(1, DeliveryStatus.DELIVERED), (2, DeliveryStatus.DELIVERED)]


def test_an_installation_still_being_installed_is_retried_until_it_is_ready(feed_world, drain):
    sub, _ = feed_world.subscribe()
    Installation.objects.filter(pk=feed_world.installation.pk).update(status=InstallationStatus.INSTALLING)
    entry = feed_world.upsert("The list price of the standard widget is fourteen dollars.")
    delivery = Delivery.objects.select_related("destination", "entry").get(destination__subscription=sub)
    assert vault_send(delivery).result == "retry"
    assert not MemCube.objects.filter(
        namespace=feed_world.installation.namespace, provenance_id=entry.provenance_id
    ).exists()
    Installation.objects.filter(pk=feed_world.installation.pk).update(status=InstallationStatus.READY)
    assert vault_send(delivery).result == "delivered"
    assert copy_of(feed_world.installation, entry.provenance_id)


def test_a_subscriber_without_an_installation_still_moves_its_cursor(feed_world, drain):
    licence_grant(pack=feed_world.pack, holder_user=feed_world.other, reason="free")
    sub, _ = feed_world.subscribe(feed_world.other)
    entry = feed_world.upsert("Fishing licences are renewed every spring.")
    drain()
    sub.refresh_from_db()
    assert sub.cursor == entry.seq
    assert Delivery.objects.get(destination__subscription=sub).status == DeliveryStatus.DELIVERED


def test_a_subscriber_whose_licence_ended_is_stopped_instead_of_delivered(feed_world, drain):
    sub, _ = feed_world.subscribe()
    licence = feed_world.installation.licence
    licence_end(licence=licence, status="revoked", reason="chargeback")
    feed_world.upsert("A memory the former licensee must not receive.")
    sub.refresh_from_db()
    assert sub.status == SubscriptionStatus.STOPPED
    assert "licence" in sub.status_reason.lower()
    assert not Delivery.objects.filter(destination__subscription=sub).exists()


@pytest.mark.django_db(transaction=True)
def test_with_committed_transactions_an_update_reaches_the_vault_with_no_explicit_drain(feed_world):
    """The real path: the entry's transaction commits, the drain task runs (Celery eager in tests), the
    vault transport applies it and indexes the copy; nothing is drained by hand."""
    from vault.selectors import memory_search

    sub, _ = feed_world.subscribe()
    origin = publisher_cube(feed_world, "The corporate tax rate")
    entry = feed_world.upsert(NEW_RATE, provenance_id=str(origin.provenance_id))
    delivery = Delivery.objects.get(destination__subscription=sub)
    assert delivery.status == DeliveryStatus.DELIVERED and delivery.attempts == 1
    copy = copy_of(feed_world.installation, origin.provenance_id)
    assert copy.version == 2 and copy.text == marked(feed_world, feed_world.installation, NEW_RATE)
    sub.refresh_from_db()
    assert sub.cursor == entry.seq
    hits = memory_search(
        actor=Subject(user=feed_world.subscriber),
        query="corporate tax rate next fiscal year",
        namespace_keys=[feed_world.installation.namespace.key],
    ).results
    assert hits and hits[0].memory.pk == copy.pk and hits[0].memory.version == 2
