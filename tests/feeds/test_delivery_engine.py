"""The delivery engine: order per destination, retries and dead letters, leases, the sweep, the outbox
handed over on commit. Deliveries go to real HTTP receivers on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from feeds.delivery.backoff import circuit_open_s, retry_delay_s
from feeds.delivery.engine import deliveries_run_due, deliveries_sweep, destination_drain
from feeds.models import Delivery, DeliveryAttempt, DeliveryStatus, Destination, DestinationKind
from tests.feeds.receiver import Received, Reply, drain_until


def webhook_destination(world, url: str) -> Destination:  # type: ignore[no-untyped-def]
    sub, _ = world.subscribe(webhook_url=url, apply_to_vault=False)
    return Destination.objects.get(subscription=sub, kind=DestinationKind.WEBHOOK)


def seqs(requests: list[Received]) -> list[int]:
    return [int(r.json()["data"]["seq"]) for r in requests]


def settled(destination: Destination) -> Callable[[], bool]:
    return lambda: (
        not Delivery.objects.filter(destination=destination, status=DeliveryStatus.PENDING).exists()
    )


@pytest.mark.django_db
def test_a_failing_head_holds_back_every_later_entry(loopback, feed_world, receiver) -> None:
    receiver.respond("/hook", [503, Reply(500), Reply(drop=True)])
    dest = webhook_destination(feed_world, receiver.url("/hook"))
    entries = [feed_world.upsert(f"Fact number {n} in a series that must arrive in order.") for n in range(4)]

    drain_until(settled(dest))

    first, *rest = (e.seq for e in entries)
    assert seqs(receiver.requests) == [first, first, first, first, *rest]
    assert list(
        DeliveryAttempt.objects.filter(delivery__entry=entries[0]).values_list("outcome", "status_code")
    ) == [("retry", 503), ("retry", 500), ("retry", None), ("delivered", 200)]
    for entry in entries[1:]:
        assert DeliveryAttempt.objects.filter(delivery__entry=entry).count() == 1


@pytest.mark.django_db
def test_after_the_last_attempt_a_delivery_is_a_dead_letter_and_the_queue_moves_on(
    loopback, feed_world, receiver
) -> None:
    loopback.MEMHUB_DELIVERY_MAX_ATTEMPTS = 3
    receiver.respond("/hook", [500, 500, 500])
    dest = webhook_destination(feed_world, receiver.url("/hook"))
    doomed = feed_world.upsert("The receiver fails on this one three times.")
    fine = feed_world.upsert("And takes this one.")

    drain_until(settled(dest))

    dead = Delivery.objects.get(destination=dest, entry=doomed)
    assert (dead.status, dead.attempts, dead.last_status_code) == (DeliveryStatus.DEAD, 3, 500)
    assert "Gave up after 3 attempts" in dead.last_error
    assert Delivery.objects.get(destination=dest, entry=fine).status == DeliveryStatus.DELIVERED
    assert seqs(receiver.requests) == [doomed.seq] * 3 + [fine.seq]


def test_the_backoff_grows_exponentially_with_jitter_up_to_its_cap(settings) -> None:
    settings.MEMHUB_DELIVERY_BACKOFF_BASE_S = 2.0
    settings.MEMHUB_DELIVERY_BACKOFF_MAX_S = 60.0
    for attempts, full in [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (5, 32.0), (6, 60.0), (40, 60.0)]:
        delays = [retry_delay_s(attempts) for _ in range(200)]
        assert all(full / 2 <= d <= full for d in delays), (attempts, min(delays), max(delays))
        assert len({round(d, 6) for d in delays}) > 100  # jittered, not one value
    settings.MEMHUB_DELIVERY_RETRY_AFTER_MAX_S = 120.0
    assert retry_delay_s(3, retry_after_s=30) == 30.0
    assert retry_delay_s(3, retry_after_s=10_000) == 120.0
    settings.MEMHUB_DELIVERY_CIRCUIT_OPEN_S = 30.0
    settings.MEMHUB_DELIVERY_CIRCUIT_OPEN_MAX_S = 200.0
    assert [circuit_open_s(n) for n in (1, 2, 3, 4, 5)] == [30.0, 60.0, 120.0, 200.0, 200.0]


@pytest.mark.django_db
def test_a_destination_held_by_a_worker_is_left_alone_until_its_lease_runs_out(
    loopback, feed_world, receiver
) -> None:
    dest = webhook_destination(feed_world, receiver.url("/hook"))
    entry = feed_world.upsert("Held by a worker that was killed.")
    # A worker took the destination and died: its lease is still live.
    Destination.objects.filter(pk=dest.pk).update(
        lease_owner="killed-worker:4242:0", lease_until=timezone.now() + timedelta(seconds=60)
    )

    assert deliveries_sweep() == 0
    assert destination_drain(destination_id=dest.pk)["leased"] is False
    assert receiver.requests == []

    # The lease runs out: the sweep sends a drain (run here, eagerly) and the entry goes out.
    Destination.objects.filter(pk=dest.pk).update(lease_until=timezone.now() - timedelta(seconds=1))
    assert deliveries_sweep() == 1
    assert seqs(receiver.requests) == [entry.seq]
    assert Delivery.objects.get(destination=dest).status == DeliveryStatus.DELIVERED
    dest.refresh_from_db()
    assert (dest.lease_owner, dest.lease_until) == ("", None)
    assert deliveries_sweep() == 0  # nothing due any more


@pytest.mark.django_db
def test_the_sweep_skips_what_is_not_due(loopback, feed_world, receiver) -> None:
    receiver.respond("/hook", [Reply(429, headers={"Retry-After": "30"})])
    dest = webhook_destination(feed_world, receiver.url("/hook"))
    feed_world.upsert("Asked to wait half a minute.")
    feed_world.upsert("Waits behind it although it is due.")
    assert deliveries_sweep() == 1
    assert len(receiver.requests) == 1
    # The head waits 30 s; the second is due but must not overtake it.
    assert deliveries_sweep() == 0
    assert deliveries_run_due() == 0
    assert len(receiver.requests) == 1
    assert Delivery.objects.filter(destination=dest, status=DeliveryStatus.PENDING).count() == 2


@pytest.mark.django_db(transaction=True)
def test_the_outbox_is_handed_to_a_drain_when_the_entry_commits(loopback, feed_world, receiver) -> None:
    dest = webhook_destination(feed_world, receiver.url("/hook"))
    # Committed (this test is transactional): the fan-out's on-commit hook sends the drain task, which
    # Celery runs eagerly in tests, so the entry is out when the write returns.
    entry = feed_world.upsert("Out as soon as it commits.")
    assert seqs(receiver.requests) == [entry.seq]
    assert Delivery.objects.get(destination=dest).status == DeliveryStatus.DELIVERED


@pytest.mark.django_db(transaction=True)
def test_concurrent_drains_of_one_destination_send_each_entry_once_in_order(
    loopback, feed_world, receiver
) -> None:
    dest = webhook_destination(feed_world, receiver.url("/hook"))
    # Tasks go to an in-memory broker nobody consumes: only the drains below send anything.
    from config.celery import app

    # Celery's own conf too: a value once written there wins over the Django settings. Read what to
    # restore before changing either.
    eager = app.conf.task_always_eager
    loopback.CELERY_TASK_ALWAYS_EAGER = False
    app.conf.task_always_eager = False
    app._pool = None
    app.amqp._producer_pool = None
    try:
        receiver.respond("/hook", [Reply(200, delay=0.03)] * 100)
        entries = [feed_world.upsert(f"Concurrent drain entry {n}.") for n in range(12)]
        assert receiver.requests == []
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and settled(dest)() is False:
                    destination_drain(destination_id=dest.pk, schedule=False)
                    time.sleep(0.005)
            except BaseException as exc:  # surfaced below
                errors.append(exc)
            finally:
                connection.close()

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    finally:
        app.conf.task_always_eager = eager
        app._pool = None
        app.amqp._producer_pool = None
    assert errors == []
    assert seqs(receiver.requests) == [e.seq for e in entries]
    assert DeliveryAttempt.objects.filter(delivery__destination=dest).count() == len(entries)
    assert set(Delivery.objects.filter(destination=dest).values_list("status", flat=True)) == {"delivered"}
