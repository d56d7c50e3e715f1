"""Stripe, with the real `stripe` SDK pointed at a local HTTP stand-in (`stripe_standin.py`) and webhook
payloads signed locally the way Stripe signs them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.urls import reverse

from marketplace.models import (
    Licence,
    LicenceStatus,
    Order,
    OrderStatus,
    Pack,
    PaymentEvent,
    PriceModel,
    Publisher,
)
from tests.marketplace.stripe_standin import StripeStandIn, sign

pytestmark = pytest.mark.django_db
SECRET = "whsec_standin_secret"


@pytest.fixture
def standin(settings) -> Iterator[StripeStandIn]:  # type: ignore[no-untyped-def]
    server = StripeStandIn().start()
    settings.MEMHUB_PAYMENT_GATEWAY = "stripe"
    settings.STRIPE_SECRET_KEY = "sk_test_standin"
    settings.STRIPE_WEBHOOK_SECRET = SECRET
    settings.STRIPE_API_BASE = server.url
    yield server
    server.stop()


def priced(
    make_pack: Any, slug: str = "paid", *, cents: int = 1500, model: str = PriceModel.ONE_TIME
) -> Pack:
    pack = make_pack(slug=slug, texts=(), bare_release=True)
    Pack.objects.filter(pk=pack.pk).update(price_cents=cents, price_model=model)
    pack.refresh_from_db()
    return pack


def deliver(client: Any, payload: str, *, timestamp: int | None = None, secret: str = SECRET) -> Any:
    return client.post(
        reverse("v1:payments-webhook-stripe"),
        payload,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=sign(payload, secret, timestamp=timestamp),
    )


def buy(api: Any, pack: Pack, **body: Any) -> Order:
    r = api.post(
        reverse("v1:payments-checkout", kwargs={"publisher": pack.publisher.slug, "slug": pack.slug}),
        body,
        format="json",
    )
    assert r.status_code == 201, r.content
    return Order.objects.get(pk=r.json()["id"])


@pytest.fixture
def buyer(bob, api_for):  # type: ignore[no-untyped-def]
    return api_for(bob)


def test_checkout_session_is_a_destination_charge_with_fee_and_idempotency_key(
    standin, make_pack, publisher, buyer, client
):
    Publisher.objects.filter(pk=publisher.pk).update(payout_account_id="acct_publisher1")
    pack = priced(make_pack)
    order = buy(buyer, pack, seats=2)
    (call,) = standin.calls("POST", "/v1/checkout/sessions")
    assert call.idempotency_key == f"memhub:order:{order.pk}:checkout"
    p = call.params
    assert p["mode"] == "payment" and p["metadata"]["order_id"] == str(order.pk)
    assert p["line_items"][0]["price_data"]["unit_amount"] == "1500" and p["line_items"][0]["quantity"] == "2"
    assert p["payment_intent_data"]["application_fee_amount"] == str(3000 * 1500 // 10_000)
    assert p["payment_intent_data"]["transfer_data"]["destination"] == "acct_publisher1"
    assert order.checkout_session_id.startswith("cs_test_") and order.checkout_url.startswith("https://")
    # The success page grants nothing: only the verified webhook does.
    assert not Licence.objects.exists()
    (completed,) = standin.complete(order.checkout_session_id)
    r = deliver(client, completed)
    assert r.status_code == 200 and r.json()["outcome"] == "paid: licence granted"
    order.refresh_from_db()
    assert order.status == OrderStatus.PAID and order.licence is not None and order.payment_intent_id
    assert order.licence.seats == 2
    # The event was a trigger: the session was re-read from Stripe.
    assert standin.calls("GET", f"/v1/checkout/sessions/{order.checkout_session_id}")


def test_subscription_fee_percent_renewal_failure_and_cancel(standin, make_pack, publisher, buyer, client):
    Publisher.objects.filter(pk=publisher.pk).update(payout_account_id="acct_pub2", fee_basis_points=1000)
    pack = priced(make_pack, slug="monthly", cents=900, model=PriceModel.SUBSCRIPTION)
    order = buy(buyer, pack)
    (call,) = standin.calls("POST", "/v1/checkout/sessions")
    sub_data = call.params["subscription_data"]
    assert call.params["mode"] == "subscription"
    assert sub_data["application_fee_percent"] == "10.0"
    assert sub_data["transfer_data"]["destination"] == "acct_pub2"
    assert call.params["line_items"][0]["price_data"]["recurring"]["interval"] == "month"
    completed, first_invoice = standin.complete(order.checkout_session_id)
    # Out of order: the first invoice arrives before checkout.session.completed, and proves payment.
    assert deliver(client, first_invoice).json()["outcome"] == "paid: licence granted"
    assert deliver(client, completed).json()["outcome"] == "already paid"
    order.refresh_from_db()
    licence = order.licence
    assert licence is not None and order.subscription_id and order.payment_intent_id
    assert sum(e.amount_cents for e in order.events.all()) == 900
    renewal = standin.renew(order.subscription_id)
    assert deliver(client, renewal).json()["outcome"] == "renewed"
    licence.refresh_from_db()
    end = standin.objects[order.subscription_id]["items"]["data"][0]["current_period_end"]
    assert licence.expires_at is not None and int(licence.expires_at.timestamp()) == end
    failed = standin.renew(order.subscription_id, paid=False)
    assert deliver(client, failed).json()["outcome"] == "past due"
    licence.refresh_from_db()
    assert licence.status == LicenceStatus.PAST_DUE and licence.grace_until is not None
    deleted = standin.cancel(order.subscription_id)
    assert deliver(client, deleted).status_code == 200
    licence.refresh_from_db()
    assert licence.status == LicenceStatus.CANCELLED


def test_refund_endpoint_calls_stripe_with_key_and_revokes(
    standin, make_pack, expert, buyer, api_for, client
):
    pack = priced(make_pack, cents=1200)
    order = buy(buyer, pack)
    (completed,) = standin.complete(order.checkout_session_id)
    deliver(client, completed)
    order.refresh_from_db()
    r = api_for(expert).post(
        reverse("v1:payments-order-refund", kwargs={"order_id": order.pk}), {}, format="json"
    )
    assert r.status_code == 200, r.content
    assert r.json()["status"] == OrderStatus.REFUNDED and r.json()["refunded_cents"] == 1200
    (call,) = standin.calls("POST", "/v1/refunds")
    assert call.idempotency_key == f"memhub:order:{order.pk}:refund:0:1200"
    assert call.params["payment_intent"] == order.payment_intent_id and call.params["amount"] == "1200"
    assert "reverse_transfer" not in call.params  # no Connect account: nothing to reverse
    licence = Licence.objects.get(pk=order.licence_id)
    assert licence.status == LicenceStatus.REFUNDED
    # Stripe's own charge.refunded event then finds the refund already booked.
    charge = standin.objects[standin.objects[order.payment_intent_id]["latest_charge"]]
    r = deliver(client, standin.event("charge.refunded", charge))
    assert r.json()["outcome"] == "refund already booked"
    assert Order.objects.get(pk=order.pk).refunded_cents == 1200


def test_dashboard_refund_and_dispute_events(standin, make_pack, buyer, make_user, api_for, client):
    pack = priced(make_pack)
    order = buy(buyer, pack)
    deliver(client, standin.complete(order.checkout_session_id)[0])
    order.refresh_from_db()
    assert (
        deliver(client, standin.refund_event(order.payment_intent_id))
        .json()["outcome"]
        .startswith("refunded")
    )
    assert Licence.objects.get(pk=order.licence_id).status == LicenceStatus.REFUNDED
    other = buy(api_for(make_user("carol")), pack)
    deliver(client, standin.complete(other.checkout_session_id)[0])
    other.refresh_from_db()
    assert deliver(client, standin.dispute(other.payment_intent_id)).status_code == 200
    other.refresh_from_db()
    assert other.status == OrderStatus.DISPUTED
    assert Licence.objects.get(pk=other.licence_id).status == LicenceStatus.REVOKED


def test_refund_before_completion_never_grants(standin, make_pack, buyer, client):
    pack = priced(make_pack)
    order = buy(buyer, pack)
    (completed,) = standin.complete(order.checkout_session_id)
    pi = standin.objects[order.checkout_session_id]["payment_intent"]
    refunded = standin.refund_event(pi)
    assert deliver(client, refunded).status_code == 200
    order.refresh_from_db()
    assert order.status == OrderStatus.REFUNDED
    assert deliver(client, completed).json()["outcome"] == "paid after refunded: no licence"
    order.refresh_from_db()
    assert order.status == OrderStatus.REFUNDED and order.licence is None
    assert not Licence.objects.exists()
    assert sum(e.amount_cents for e in order.events.all()) == 0  # paid and refunded: balanced


def test_duplicates_and_replays_do_nothing(standin, make_pack, buyer, client):
    pack = priced(make_pack)
    order = buy(buyer, pack)
    (completed,) = standin.complete(order.checkout_session_id)
    first = deliver(client, completed)
    assert first.json()["duplicate"] is False
    for _ in range(3):
        again = deliver(client, completed)  # a fresh signature each time: a redelivery
        assert again.status_code == 200 and again.json()["duplicate"] is True
    assert Licence.objects.count() == 1
    assert PaymentEvent.objects.filter(event_id=json.loads(completed)["id"]).count() == 1
    assert order.events.filter(to_status=OrderStatus.PAID).count() == 1
    # A stale event with a new id (the same object re-read) changes nothing either.
    stale = standin.event("checkout.session.completed", standin.objects[order.checkout_session_id])
    assert deliver(client, stale).json()["outcome"] == "already paid"
    expired_late = standin.event("checkout.session.expired", standin.objects[order.checkout_session_id])
    assert deliver(client, expired_late).json()["outcome"] == "already paid"  # re-read: it is paid


@pytest.mark.parametrize("skew", [-301, 301, -3600])
def test_timestamp_outside_tolerance_400(standin, make_pack, buyer, client, skew):
    pack = priced(make_pack)
    order = buy(buyer, pack)
    (completed,) = standin.complete(order.checkout_session_id)
    r = deliver(client, completed, timestamp=int(time.time()) + skew)
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_signature"
    assert not PaymentEvent.objects.exists() and not Licence.objects.exists()
    assert deliver(client, completed, timestamp=int(time.time()) - 200).status_code == 200  # inside 300 s


def test_bad_signatures_400(standin, make_pack, buyer, client):
    pack = priced(make_pack)
    order = buy(buyer, pack)
    (completed,) = standin.complete(order.checkout_session_id)
    url = reverse("v1:payments-webhook-stripe")
    assert deliver(client, completed, secret="whsec_wrong").status_code == 400
    assert client.post(url, completed, content_type="application/json").status_code == 400  # no header
    r = client.post(url, completed, content_type="application/json", HTTP_STRIPE_SIGNATURE="garbage")
    assert r.status_code == 400
    tampered = completed.replace('"paid"', '"PAID"')
    r = client.post(
        url, tampered, content_type="application/json", HTTP_STRIPE_SIGNATURE=sign(completed, SECRET)
    )
    assert r.status_code == 400
    # The ledger's secret does not open Stripe's endpoint.
    from django.conf import settings

    assert deliver(client, completed, secret=settings.MEMHUB_LEDGER_WEBHOOK_SECRET).status_code == 400
    assert not PaymentEvent.objects.exists() and not Licence.objects.exists()


def test_expired_session_releases_seats(standin, make_pack, buyer, client):
    pack = priced(make_pack)
    Pack.objects.filter(pk=pack.pk).update(seat_limit=3)
    order = buy(buyer, pack, seats=2)
    assert Pack.objects.get(pk=pack.pk).seats_sold == 2
    assert (
        deliver(client, standin.expire(order.checkout_session_id)).json()["outcome"]
        == "expired: seats released"
    )
    assert Pack.objects.get(pk=pack.pk).seats_sold == 0
    assert Order.objects.get(pk=order.pk).status == OrderStatus.CANCELLED


def test_metered_usage_reported_as_invoice_item(standin, make_pack, buyer, client):
    from django.utils import timezone

    from marketplace.models import LicenceUsage
    from marketplace.services.orders import metered_usage_report

    pack = priced(make_pack, slug="meter", cents=40, model=PriceModel.METERED)
    order = buy(buyer, pack)
    for payload in standin.complete(order.checkout_session_id):
        deliver(client, payload)
    order.refresh_from_db()
    LicenceUsage.objects.create(licence=order.licence, period_start=timezone.now(), retrievals=1001)
    assert metered_usage_report(order=order) == 80
    assert metered_usage_report(order=order) == 0  # already billed
    (call,) = standin.calls("POST", "/v1/invoiceitems")
    assert call.params["amount"] == "80" and call.params["subscription"] == order.subscription_id
    assert call.idempotency_key == f"memhub:order:{order.pk}:usage:0:2"
    assert deliver(client, standin.renew(order.subscription_id)).json()["outcome"] == "renewed"
    assert sum(e.amount_cents for e in Order.objects.get(pk=order.pk).events.all()) == 80


def test_gateway_failure_fails_the_order_and_frees_seats(standin, make_pack, buyer, settings):
    pack = priced(make_pack)
    Pack.objects.filter(pk=pack.pk).update(seat_limit=5)
    settings.STRIPE_SECRET_KEY = "rk_wrong"  # the stand-in answers 401
    r = buyer.post(
        reverse("v1:payments-checkout", kwargs={"publisher": pack.publisher.slug, "slug": pack.slug}),
        {},
        format="json",
    )
    assert r.status_code == 502 and r.json()["error"]["code"] == "gateway_error"
    order = Order.objects.get()
    assert order.status == OrderStatus.FAILED
    assert Pack.objects.get(pk=pack.pk).seats_sold == 0


def test_full_refund_of_a_subscription_cancels_it_at_stripe(
    standin, make_pack, expert, buyer, api_for, client, django_capture_on_commit_callbacks
):
    from marketplace.services.orders import subscription_cancel

    pack = priced(make_pack, slug="monthly", cents=900, model=PriceModel.SUBSCRIPTION)
    order = buy(buyer, pack)
    for payload in standin.complete(order.checkout_session_id):
        deliver(client, payload)
    order.refresh_from_db()
    url = reverse("v1:payments-order-refund", kwargs={"order_id": order.pk})
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        r = api_for(expert).post(url, {}, format="json")
    assert r.status_code == 200 and r.json()["status"] == OrderStatus.REFUNDED
    assert callbacks, "the subscription's cancellation is enqueued"
    # What the Celery task runs (twice: a retry sends the same idempotency key).
    assert subscription_cancel(order_id=str(order.pk)) == "canceled"
    assert subscription_cancel(order_id=str(order.pk)) == "canceled"
    calls = standin.calls("DELETE", f"/v1/subscriptions/{order.subscription_id}")
    assert [c.idempotency_key for c in calls] == [f"memhub:order:{order.pk}:subscription-cancel"] * 2
    deleted = standin.event("customer.subscription.deleted", standin.objects[order.subscription_id])
    assert deliver(client, deleted).json()["outcome"] == "order already refunded"
    assert Licence.objects.get(pk=order.licence_id).status == LicenceStatus.REFUNDED
