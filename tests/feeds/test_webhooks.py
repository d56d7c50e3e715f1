"""Outbound webhooks to a real HTTP receiver on loopback, verified with the `standardwebhooks` package.

The tests run in a transaction, so the drain that `deliveries_enqueue` sends on commit never runs: each
test drains with `deliveries_run_due()`, as a worker would, as often as it needs."""

from __future__ import annotations

import time
from datetime import timedelta
from email.utils import format_datetime

import pytest
from django.utils import timezone
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from core.errors import ApplicationError
from feeds.delivery.engine import deliveries_run_due, delivery_requeue, destination_drain
from feeds.models import (
    Delivery,
    DeliveryAttempt,
    DeliveryStatus,
    Destination,
    DestinationKind,
    Subscription,
    SubscriptionStatus,
)
from tests.feeds.receiver import Received, Receiver, Reply, drain_until

pytestmark = pytest.mark.django_db


def webhook_subscription(world, url: str, **fields):  # type: ignore[no-untyped-def]
    sub, secret = world.subscribe(
        webhook_url=url, apply_to_vault=fields.pop("apply_to_vault", False), **fields
    )
    assert secret is not None and secret.startswith("whsec_")
    return sub, secret, Destination.objects.get(subscription=sub, kind=DestinationKind.WEBHOOK)


def seq_of(request: Received) -> int:
    return int(request.json()["data"]["seq"])


def verified(request: Received, secret: str) -> dict:
    return Webhook(secret).verify(request.body, request.headers)  # type: ignore[no-any-return]


def test_a_receiver_down_for_its_first_five_attempts_gets_every_entry_in_order(loopback, feed_world) -> None:
    rx = Receiver(down=True)
    try:
        _sub, secret, dest = webhook_subscription(feed_world, rx.url("/hook"))
        entries = [feed_world.upsert(f"Update number {n}: the rate is now {n} percent.") for n in range(1, 4)]
        head = Delivery.objects.get(destination=dest, entry=entries[0])

        # Given a receiver that refuses connections, five attempts fail and are recorded.
        drain_until(lambda: Delivery.objects.get(pk=head.pk).attempts >= 5)
        head.refresh_from_db()
        assert head.status == DeliveryStatus.PENDING and head.attempts == 5
        assert rx.requests == []
        log = list(DeliveryAttempt.objects.filter(delivery=head).order_by("number"))
        assert [a.number for a in log] == [1, 2, 3, 4, 5]
        assert {a.outcome for a in log} == {"retry"}
        assert all("ConnectError" in a.error and a.status_code is None for a in log)
        # The later entries waited behind the head: not one attempt.
        assert DeliveryAttempt.objects.filter(delivery__destination=dest).count() == 5

        # When it comes up, it gets every entry, in order, each once, each verifiable.
        rx.up()
        drain_until(
            lambda: not Delivery.objects.filter(destination=dest, status=DeliveryStatus.PENDING).exists()
        )
        got = rx.requests_to("/hook")
        assert [seq_of(r) for r in got] == [e.seq for e in entries]
        for request, entry in zip(got, entries, strict=True):
            message = verified(request, secret)
            assert set(message) == {"type", "timestamp", "data"}
            assert message["type"] == message["data"]["kind"] == "memory.upserted"
            assert message["data"]["seq"] == entry.seq
            assert request.headers["content-type"] == "application/json"
            assert request.headers["user-agent"].startswith("MemHub-Webhooks")
            delivery = Delivery.objects.get(destination=dest, entry=entry)
            assert request.headers["webhook-id"] == f"msg_{delivery.pk.hex}"
            assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
        assert set(Delivery.objects.filter(destination=dest).values_list("status", flat=True)) == {
            "delivered"
        }
        final = DeliveryAttempt.objects.filter(delivery=head).order_by("-number").first()
        assert final is not None and (final.number, final.outcome, final.status_code) == (6, "delivered", 200)
        assert final.response_excerpt == "ok" and final.duration_ms > 0
        dest.refresh_from_db()
        assert (dest.circuit_state, dest.consecutive_failures) == ("closed", 0)
    finally:
        rx.close()


def test_during_a_rotation_both_secrets_verify_and_after_it_only_the_new_one(
    loopback, feed_world, receiver
) -> None:
    from feeds.services.subscriptions import subscription_rotate_secret
    from governance.policy import Subject

    sub, old_secret, _dest = webhook_subscription(feed_world, receiver.url("/hook"))
    sub, new_secret = subscription_rotate_secret(actor=Subject(user=feed_world.subscriber), subscription=sub)
    assert new_secret != old_secret

    feed_world.upsert("During the grace period the old secret still verifies.")
    drain_until(lambda: len(receiver.requests) == 1)
    during = receiver.requests[0]
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    assert verified(during, old_secret)["data"]["seq"] == verified(during, new_secret)["data"]["seq"]

    # The grace ends.
    Subscription.objects.filter(pk=sub.pk).update(
        webhook_previous_expires_at=timezone.now() - timedelta(seconds=1)
    )
    feed_world.upsert("After the grace period only the new secret verifies.")
    drain_until(lambda: len(receiver.requests) == 2)
    after = receiver.requests[1]
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    assert verified(after, new_secret)["type"] == "memory.upserted"
    with pytest.raises(WebhookVerificationError):
        Webhook(old_secret).verify(after.body, after.headers)


def test_a_tampered_body_does_not_verify(loopback, feed_world, receiver) -> None:
    _, secret, _ = webhook_subscription(feed_world, receiver.url("/hook"))
    feed_world.upsert("The original text that was signed.")
    drain_until(lambda: len(receiver.requests) == 1)
    request = receiver.requests[0]
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(request.body.replace(b"original", b"modified"), request.headers)


def test_a_receiver_answering_410_stops_the_subscription_and_cancels_what_was_pending(
    loopback, feed_world, receiver
) -> None:
    receiver.respond("/gone", [410])
    sub, _, dest = webhook_subscription(feed_world, receiver.url("/gone"), apply_to_vault=True)
    vault = Destination.objects.get(subscription=sub, kind=DestinationKind.VAULT)
    for n in range(3):
        feed_world.upsert(f"Entry {n} that will never be delivered to the webhook.")
    assert Delivery.objects.filter(destination__subscription=sub, status=DeliveryStatus.PENDING).count() == 6

    # Only the webhook is drained: the vault's deliveries are still pending when the 410 comes.
    destination_drain(destination_id=dest.pk)

    assert len(receiver.requests) == 1
    sub.refresh_from_db()
    dest.refresh_from_db()
    assert sub.status == SubscriptionStatus.STOPPED
    assert "410" in sub.status_reason
    assert dest.active is False
    assert set(Delivery.objects.filter(destination__subscription=sub).values_list("status", flat=True)) == {
        DeliveryStatus.CANCELLED
    }
    assert Delivery.objects.filter(destination=vault, status=DeliveryStatus.CANCELLED).count() == 3
    gone = DeliveryAttempt.objects.get(delivery__destination=dest)
    assert (gone.outcome, gone.status_code) == ("gone", 410)

    # Nothing more goes out to it, now or for later entries.
    feed_world.upsert("An entry after the subscription stopped.")
    deliveries_run_due()
    assert len(receiver.requests) == 1
    assert not Delivery.objects.filter(destination__subscription=sub, status=DeliveryStatus.PENDING).exists()


def test_a_400_is_a_dead_letter_at_once_and_the_next_entry_still_goes(loopback, feed_world, receiver) -> None:
    receiver.respond("/hook", [Reply(400, body=b'{"error": "schema mismatch"}')])
    _sub, secret, dest = webhook_subscription(feed_world, receiver.url("/hook"))
    first = feed_world.upsert("The receiver refuses this one.")
    second = feed_world.upsert("The receiver takes this one.")

    drain_until(lambda: len(receiver.requests) == 2)
    deliveries_run_due()

    dead = Delivery.objects.get(destination=dest, entry=first)
    assert (dead.status, dead.attempts, dead.last_status_code) == (DeliveryStatus.DEAD, 1, 400)
    assert dead.dead_at is not None
    attempt = DeliveryAttempt.objects.get(delivery=dead)
    assert (attempt.outcome, attempt.status_code) == ("dead", 400)
    assert "schema mismatch" in attempt.response_excerpt
    assert Delivery.objects.get(destination=dest, entry=second).status == DeliveryStatus.DELIVERED
    assert [seq_of(r) for r in receiver.requests] == [first.seq, second.seq]
    assert len(receiver.requests) == 2  # not retried

    # The owner retries the dead letter: it is delivered, with the same webhook-id as the first time.
    delivery_requeue(delivery=dead)
    drain_until(lambda: Delivery.objects.get(pk=dead.pk).status == DeliveryStatus.DELIVERED)
    again = receiver.requests[2]
    assert seq_of(again) == first.seq
    assert again.headers["webhook-id"] == receiver.requests[0].headers["webhook-id"] == f"msg_{dead.pk.hex}"
    verified(again, secret)
    assert list(DeliveryAttempt.objects.filter(delivery=dead).values_list("number", "outcome")) == [
        (1, "dead"),
        (2, "delivered"),
    ]


def test_only_a_dead_letter_can_be_requeued(loopback, feed_world, receiver) -> None:
    _, _, dest = webhook_subscription(feed_world, receiver.url("/hook"))
    feed_world.upsert("Delivered at once.")
    drain_until(lambda: len(receiver.requests) == 1)
    delivery = Delivery.objects.get(destination=dest)
    with pytest.raises(ApplicationError) as caught:
        delivery_requeue(delivery=delivery)
    assert caught.value.status == 409
    assert "delivered" in caught.value.message
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.DELIVERED and delivery.attempts == 1


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_a_429_with_retry_after_is_retried_no_sooner_than_asked(loopback, feed_world, receiver, form) -> None:
    wait_s = 2
    if form == "seconds":
        header = str(wait_s)
    else:
        header = format_datetime(timezone.now() + timedelta(seconds=wait_s + 1), usegmt=True)
    receiver.respond("/hook", [Reply(429, headers={"Retry-After": header})])
    _, _, dest = webhook_subscription(feed_world, receiver.url("/hook"))
    feed_world.upsert("Rate limited the first time.")

    deliveries_run_due()
    assert len(receiver.requests) == 1
    delivery = Delivery.objects.get(destination=dest)
    assert (delivery.status, delivery.last_status_code) == (DeliveryStatus.PENDING, 429)
    first_try = DeliveryAttempt.objects.get(delivery=delivery)
    # Without Retry-After the backoff here would be a few hundredths of a second.
    assert (delivery.next_attempt_at - first_try.at).total_seconds() >= wait_s - 1
    time.sleep(0.3)
    deliveries_run_due()
    assert len(receiver.requests) == 1  # not yet

    drain_until(lambda: len(receiver.requests) == 2, timeout=10)
    first, second = receiver.requests
    assert second.at - first.at >= wait_s - 1
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.DELIVERED


def test_retry_after_is_capped_by_the_instance(loopback, feed_world, receiver) -> None:
    loopback.MEMHUB_DELIVERY_RETRY_AFTER_MAX_S = 1.0
    receiver.respond("/hook", [Reply(503), Reply(429, headers={"Retry-After": "86400"})])
    _, _, dest = webhook_subscription(feed_world, receiver.url("/hook"))
    feed_world.upsert("Asked to come back tomorrow.")
    drain_until(lambda: len(receiver.requests) == 2)
    delivery = Delivery.objects.get(destination=dest)
    last = DeliveryAttempt.objects.filter(delivery=delivery).order_by("-number").first()
    assert last is not None and last.status_code == 429
    assert (delivery.next_attempt_at - last.at).total_seconds() <= 1.5
    drain_until(lambda: len(receiver.requests) == 3, timeout=10)


def test_the_circuit_opens_after_n_failures_and_then_a_single_probe_goes(
    loopback, feed_world, receiver
) -> None:
    loopback.MEMHUB_DELIVERY_CIRCUIT_FAILURES = 3
    loopback.MEMHUB_DELIVERY_CIRCUIT_OPEN_S = 0.5
    loopback.MEMHUB_DELIVERY_CIRCUIT_OPEN_MAX_S = 5.0
    receiver.respond("/hook", [], then=503)
    _, _, dest = webhook_subscription(feed_world, receiver.url("/hook"))
    first = feed_world.upsert("The first entry: its delivery is the probe.")
    second = feed_world.upsert("The second entry waits for the first.")

    # Three failures open the circuit.
    drain_until(lambda: len(receiver.requests) >= 3)
    assert len(receiver.requests) == 3
    dest.refresh_from_db()
    assert (dest.circuit_state, dest.consecutive_failures, dest.circuit_opens) == ("open", 3, 1)
    assert dest.circuit_retry_at is not None

    # While it is open nothing is sent, however often the worker looks.
    while timezone.now() < dest.circuit_retry_at - timedelta(seconds=0.1):
        deliveries_run_due()
        time.sleep(0.02)
    assert len(receiver.requests) == 3

    # Then one probe, the head; it fails, and the circuit opens again for longer.
    drain_until(lambda: len(receiver.requests) >= 4)
    deliveries_run_due()
    assert len(receiver.requests) == 4
    assert seq_of(receiver.requests[3]) == first.seq
    reopened = Destination.objects.get(pk=dest.pk)
    assert (reopened.circuit_state, reopened.circuit_opens) == ("open", 2)
    assert reopened.circuit_retry_at is not None and reopened.circuit_retry_at > dest.circuit_retry_at
    wait = (reopened.circuit_retry_at - DeliveryAttempt.objects.latest("at").at).total_seconds()
    assert 0.9 <= wait <= 1.1  # twice as long

    # The receiver recovers: the next probe succeeds, the circuit closes and the queue flows, in order.
    receiver.respond("/hook", [], then=200)
    drain_until(
        lambda: Delivery.objects.filter(destination=dest, status=DeliveryStatus.DELIVERED).count() == 2
    )
    assert [seq_of(r) for r in receiver.requests] == [first.seq] * 5 + [second.seq]
    dest.refresh_from_db()
    assert (dest.circuit_state, dest.consecutive_failures, dest.circuit_opens) == ("closed", 0, 0)
    head = Delivery.objects.get(destination=dest, entry=first)
    assert list(DeliveryAttempt.objects.filter(delivery=head).values_list("outcome", flat=True)) == [
        "retry",
        "retry",
        "retry",
        "retry",
        "delivered",
    ]


def test_a_webhook_url_pointing_inwards_is_refused_when_the_setting_is_off(
    settings, feed_world, receiver
) -> None:
    settings.MEMHUB_OUTBOUND_ALLOW_PRIVATE = False
    before = Subscription.objects.count()
    with pytest.raises(ApplicationError) as caught:
        feed_world.subscribe(webhook_url=receiver.url("/hook"), apply_to_vault=False)
    assert (caught.value.status, caught.value.code) == (400, "url_not_allowed")
    assert caught.value.extra == {"field": "webhook_url"}
    assert Subscription.objects.count() == before
    assert not Destination.objects.filter(kind=DestinationKind.WEBHOOK).exists()


def test_the_guard_runs_again_at_send_time(settings, feed_world, receiver) -> None:
    # Saved while the instance allowed private addresses; the setting is then turned off (or the name
    # now resolves inwards): the request is not made.
    settings.MEMHUB_OUTBOUND_ALLOW_PRIVATE = True
    _, _, dest = webhook_subscription(feed_world, receiver.url("/hook"))
    settings.MEMHUB_OUTBOUND_ALLOW_PRIVATE = False
    feed_world.upsert("Must not reach a loopback address.")
    deliveries_run_due()
    assert receiver.requests == []
    delivery = Delivery.objects.get(destination=dest)
    assert delivery.status == DeliveryStatus.DEAD
    assert "private, loopback" in delivery.last_error


def test_redirects_are_not_followed(loopback, feed_world, receiver) -> None:
    receiver.respond("/hook", [Reply(307, headers={"Location": receiver.url("/elsewhere")})])
    _, _, dest = webhook_subscription(feed_world, receiver.url("/hook"))
    feed_world.upsert("A redirect must not move the request.")
    drain_until(lambda: len(receiver.requests) >= 2)
    assert receiver.requests_to("/elsewhere") == []
    first = DeliveryAttempt.objects.filter(delivery__destination=dest).order_by("number").first()
    assert first is not None and first.status_code == 307 and "not followed" in first.error


def test_a_failing_transport_is_recorded_and_retried(loopback, feed_world, receiver) -> None:
    _, _, dest = webhook_subscription(feed_world, receiver.url("/hook"))
    # A secret that is not base64: signing raises. The engine records the failure and retries.
    sub = dest.subscription
    Subscription.objects.filter(pk=sub.pk).update(webhook_secret="whsec_a")
    feed_world.upsert("Signing this fails.")
    deliveries_run_due()
    delivery = Delivery.objects.get(destination=dest)
    assert delivery.status == DeliveryStatus.PENDING and delivery.attempts >= 1
    attempts = list(DeliveryAttempt.objects.filter(delivery=delivery))
    assert len(attempts) == delivery.attempts  # (the backoff here is short: a round may retry)
    assert all(a.outcome == "retry" and "base64" in a.error.lower() for a in attempts)
    assert receiver.requests == []
