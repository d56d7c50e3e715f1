"""Payments on the built-in test ledger, through the API: checkout, idempotency, the ledger's own signed
webhooks (the same path as Stripe's), refunds, subscriptions, metered usage, earnings, visibility."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from django.urls import reverse

from accounts.models import Membership, Role
from accounts.services import organization_create
from marketplace.models import (
    LedgerObject,
    Licence,
    LicenceStatus,
    LicenceUsage,
    Order,
    OrderEvent,
    OrderStatus,
    Pack,
    PaymentEvent,
    PriceModel,
)
from marketplace.payments import ledger

pytestmark = pytest.mark.django_db


def priced(
    make_pack: Any, slug: str = "paid", *, cents: int = 1500, model: str = PriceModel.ONE_TIME, **fields: Any
) -> Pack:
    pack = make_pack(slug=slug, texts=(), bare_release=True)
    Pack.objects.filter(pk=pack.pk).update(price_cents=cents, price_model=model, **fields)
    pack.refresh_from_db()
    return pack


def checkout_url(pack: Pack) -> str:
    return reverse("v1:payments-checkout", kwargs={"publisher": pack.publisher.slug, "slug": pack.slug})


def act(client: Any, order_id: str, action: str) -> Any:
    return client.post(
        reverse("v1:payments-ledger-action", kwargs={"order_id": order_id}), {"action": action}, format="json"
    )


@pytest.fixture
def buyer(bob, api_for):  # type: ignore[no-untyped-def]
    return api_for(bob)


def test_checkout_then_pay_grants_licence_only_from_the_webhook(make_pack, bob, buyer):
    pack = priced(make_pack)
    r = buyer.post(checkout_url(pack), {}, format="json")
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["status"] == OrderStatus.PENDING and body["amount_cents"] == 1500 and body["licence"] is None
    assert body["checkout_url"].endswith(body["checkout_session_id"])
    order = Order.objects.get(pk=body["id"])
    assert order.fee_cents == 1500 * 1500 // 10_000  # the default 15 % platform fee
    assert not Licence.objects.filter(holder_user=bob).exists()  # nothing until the payment is verified

    r = act(buyer, body["id"], "pay")
    assert r.status_code == 200, r.content
    detail = r.json()
    assert detail["status"] == OrderStatus.PAID and detail["licence"]
    licence = Licence.objects.get(pk=detail["licence"])
    assert licence.holder_user == bob and licence.status == LicenceStatus.ACTIVE
    steps = [(e["from_status"], e["to_status"], e["amount_cents"]) for e in detail["events"]]
    assert steps == [("", "created", 0), ("created", "pending", 0), ("pending", "paid", 1500)]
    paid_event = detail["events"][-1]["gateway_event_id"]
    assert PaymentEvent.objects.filter(
        gateway="ledger", event_id=paid_event, type="checkout.session.completed"
    )


def test_ledger_events_are_signed_and_a_replay_does_nothing(make_pack, buyer, client):
    pack = priced(make_pack)
    order_id = buyer.post(checkout_url(pack), {}, format="json").json()["id"]
    act(buyer, order_id, "pay")
    event = LedgerObject.objects.filter(kind="event", data__type="checkout.session.completed").get()
    payload = event.data["payload"]
    url = reverse("v1:payments-webhook-ledger")
    # The ledger's own delivery already happened; the same signed event again is a duplicate.
    r = client.post(url, payload, content_type="application/json", HTTP_STRIPE_SIGNATURE=ledger.sign(payload))
    assert r.status_code == 200 and r.json()["duplicate"] is True
    assert OrderEvent.objects.filter(order_id=order_id, to_status=OrderStatus.PAID).count() == 1
    # A forged one is refused and writes nothing.
    forged = payload.replace(event.id, "evt_forged")
    before = PaymentEvent.objects.count()
    r = client.post(url, forged, content_type="application/json", HTTP_STRIPE_SIGNATURE=ledger.sign(payload))
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_signature"
    r = client.post(
        url,
        forged,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=ledger.sign(forged, timestamp=int(time.time()) - 301),
    )
    assert r.status_code == 400 and "tolerance" in r.json()["error"]["message"]
    assert PaymentEvent.objects.count() == before


def test_idempotency_key_same_body_same_order_other_body_409(make_pack, buyer):
    pack = priced(make_pack)
    url = checkout_url(pack)
    first = buyer.post(url, {"seats": 1}, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    again = buyer.post(url, {"seats": 1}, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == 201 and again.status_code == 200
    assert first.json() == again.json()
    other = buyer.post(url, {"seats": 2}, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert other.status_code == 409
    err = other.json()["error"]
    assert err["code"] == "idempotency_key_reused" and "Idempotency-Key 'k-1'" in err["message"]
    assert Order.objects.count() == 1
    assert LedgerObject.objects.filter(kind="checkout.session").count() == 1


def test_free_pack_400_and_nothing_written(make_pack, buyer):
    pack = make_pack(slug="gratis", texts=(), bare_release=True)
    r = buyer.post(checkout_url(pack), {}, format="json")
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "free_pack" and "installed directly" in r.json()["error"]["message"]
    assert not Order.objects.exists() and not LedgerObject.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [({"seats": 0}, "seats"), ({"seats": "x"}, "seats"), ({"colour": "red"}, "colour")],
)
def test_bad_checkout_input_400(make_pack, buyer, body, field):
    pack = priced(make_pack)
    r = buyer.post(checkout_url(pack), body, format="json")
    assert r.status_code == 400 and field in r.json()["error"]["message"]
    assert not Order.objects.exists()


def test_unknown_pack_404(buyer):
    r = buyer.post(
        reverse("v1:payments-checkout", kwargs={"publisher": "acme", "slug": "nope"}), {}, format="json"
    )
    assert r.status_code == 404 and "acme/nope" in r.json()["error"]["message"]


def test_organization_purchase_by_admins_only(make_pack, make_user, api_for):
    pack = priced(make_pack)
    boss, member, outsider = make_user("boss"), make_user("member"), make_user("outsider")
    org = organization_create(owner=boss, slug="buyers")
    Membership.objects.create(user=member, organization=org, role=Role.MEMBER)
    r = api_for(member).post(checkout_url(pack), {"organization": "buyers"}, format="json")
    assert r.status_code == 403 and "buyers" in r.json()["error"]["message"]
    r = api_for(outsider).post(checkout_url(pack), {"organization": "buyers"}, format="json")
    assert r.status_code == 404
    assert not Order.objects.exists()
    boss_client = api_for(boss)
    r = boss_client.post(checkout_url(pack), {"organization": "buyers", "seats": 3}, format="json")
    assert r.status_code == 201 and r.json()["organization"] == "buyers" and r.json()["amount_cents"] == 4500
    act(boss_client, r.json()["id"], "pay")
    licence = Licence.objects.get(holder_org=org)
    assert licence.seats == 3


def test_seat_limit_sold_out_409_and_expiry_releases(make_pack, make_user, api_for):
    pack = priced(make_pack, seat_limit=1)
    first = api_for(make_user("first"))
    r = first.post(checkout_url(pack), {}, format="json")
    assert r.status_code == 201
    second = api_for(make_user("second"))
    r2 = second.post(checkout_url(pack), {}, format="json")
    assert r2.status_code == 409 and r2.json()["error"]["code"] == "sold_out"
    assert Order.objects.count() == 1
    act(first, r.json()["id"], "expire")
    pack.refresh_from_db()
    assert pack.seats_sold == 0
    assert Order.objects.get(pk=r.json()["id"]).status == OrderStatus.CANCELLED
    assert second.post(checkout_url(pack), {}, format="json").status_code == 201


def test_async_payment_pending_then_settled_or_failed(make_pack, make_user, api_for):
    pack = priced(make_pack, seat_limit=5)
    c = api_for(make_user("slow"))
    oid = c.post(checkout_url(pack), {}, format="json").json()["id"]
    assert act(c, oid, "pay_async").json()["status"] == OrderStatus.PENDING
    assert Order.objects.get(pk=oid).licence is None
    assert act(c, oid, "settle").json()["status"] == OrderStatus.PAID
    c2 = api_for(make_user("bounced"))
    oid2 = c2.post(checkout_url(pack), {}, format="json").json()["id"]
    act(c2, oid2, "pay_async")
    r = act(c2, oid2, "fail")
    assert r.json()["status"] == OrderStatus.FAILED and r.json()["licence"] is None
    pack.refresh_from_db()
    assert pack.seats_sold == 1  # the failed order's seat came back


def test_orders_mine_and_others_404(make_pack, bob, buyer, make_user, api_for):
    pack = priced(make_pack)
    oid = buyer.post(checkout_url(pack), {}, format="json").json()["id"]
    mine = buyer.get(reverse("v1:payments-orders")).json()
    assert [o["id"] for o in mine["results"]] == [oid]
    detail = buyer.get(reverse("v1:payments-order", kwargs={"order_id": oid}))
    assert detail.status_code == 200 and detail.json()["events"]
    stranger = api_for(make_user("stranger"))
    assert stranger.get(reverse("v1:payments-order", kwargs={"order_id": oid})).status_code == 404
    assert stranger.get(reverse("v1:payments-orders")).json()["results"] == []
    r = stranger.post(reverse("v1:payments-order-refund", kwargs={"order_id": oid}), {}, format="json")
    assert r.status_code == 404


def test_refund_by_publisher_owner_partial_then_full_ends_licence(make_pack, expert, buyer, api_for):
    pack = priced(make_pack, cents=1000)
    oid = buyer.post(checkout_url(pack), {}, format="json").json()["id"]
    act(buyer, oid, "pay")
    owner = api_for(expert)
    url = reverse("v1:payments-order-refund", kwargs={"order_id": oid})
    # The buyer sees the order but may not refund it.
    assert buyer.post(url, {}, format="json").status_code == 403
    r = owner.post(url, {"amount_cents": 1001}, format="json")
    assert r.status_code == 400 and r.json()["error"]["code"] == "refund_too_large"
    assert "1000" in r.json()["error"]["message"]
    assert Order.objects.get(pk=oid).refunded_cents == 0
    r = owner.post(url, {"amount_cents": 300}, format="json")
    assert (
        r.status_code == 200 and r.json()["status"] == OrderStatus.PAID and r.json()["refunded_cents"] == 300
    )
    licence = Licence.objects.get(orders__pk=oid)
    assert licence.status == LicenceStatus.ACTIVE
    r = owner.post(url, {}, format="json")  # the rest
    assert r.status_code == 200 and r.json()["status"] == OrderStatus.REFUNDED
    assert r.json()["refunded_cents"] == 1000
    assert [e["amount_cents"] for e in r.json()["events"] if e["amount_cents"]] == [1000, -300, -700]
    licence.refresh_from_db()
    assert licence.status == LicenceStatus.REFUNDED
    assert owner.post(url, {}, format="json").status_code == 409  # nothing left to refund


def test_subscription_renewal_failure_grace_and_cancel(make_pack, settings, buyer):
    settings.MEMHUB_PAYMENT_GRACE_DAYS = 3
    pack = priced(make_pack, slug="monthly", cents=900, model=PriceModel.SUBSCRIPTION)
    oid = buyer.post(checkout_url(pack), {}, format="json").json()["id"]
    act(buyer, oid, "pay")
    order = Order.objects.get(pk=oid)
    assert order.status == OrderStatus.PAID and order.subscription_id and order.payment_intent_id
    licence = order.licence
    assert licence is not None and licence.gateway_subscription_id == order.subscription_id
    # The first invoice (invoice.paid, subscription_create) was booked with the checkout, not twice.
    assert sum(e.amount_cents for e in order.events.all()) == 900
    r = act(buyer, oid, "renew")
    assert r.status_code == 200
    licence.refresh_from_db()
    assert licence.status == LicenceStatus.ACTIVE and licence.expires_at is not None
    assert sum(e.amount_cents for e in Order.objects.get(pk=oid).events.all()) == 1800
    act(buyer, oid, "renew_fail")
    licence.refresh_from_db()
    assert licence.status == LicenceStatus.PAST_DUE
    assert licence.grace_until is not None
    assert 2.9 < (licence.grace_until.timestamp() - time.time()) / 86400 < 3.1
    act(buyer, oid, "renew")  # paid after all: active again
    licence.refresh_from_db()
    assert licence.status == LicenceStatus.ACTIVE and licence.grace_until is None
    # Cancellation at the gateway ends the licence.
    from marketplace.services.orders import subscription_cancel

    assert subscription_cancel(order_id=oid) == "canceled"
    licence.refresh_from_db()
    assert licence.status == LicenceStatus.CANCELLED
    assert Order.objects.get(pk=oid).status == OrderStatus.CANCELLED


def test_metered_usage_billed_per_started_thousand_at_renewal(make_pack, buyer):
    pack = priced(make_pack, slug="meter", cents=250, model=PriceModel.METERED)
    oid = buyer.post(checkout_url(pack), {}, format="json").json()["id"]
    act(buyer, oid, "pay")
    order = Order.objects.get(pk=oid)
    assert order.amount_cents == 250  # the listed rate; the checkout itself charges no base price
    assert sum(e.amount_cents for e in order.events.all()) == 0
    from django.utils import timezone

    LicenceUsage.objects.create(licence=order.licence, period_start=timezone.now(), retrievals=2300)
    act(buyer, oid, "renew")
    events = list(Order.objects.get(pk=oid).events.filter(amount_cents__gt=0))
    assert [e.amount_cents for e in events] == [3 * 250]  # 2,300 retrievals: three started thousands
    assert LicenceUsage.objects.get(licence=order.licence).billed_units == 3
    act(buyer, oid, "renew")  # nothing new used: the base price only (none)
    assert sum(e.amount_cents for e in Order.objects.get(pk=oid).events.all()) == 750


def test_dispute_revokes(make_pack, buyer):
    pack = priced(make_pack)
    oid = buyer.post(checkout_url(pack), {}, format="json").json()["id"]
    act(buyer, oid, "pay")
    r = act(buyer, oid, "dispute")
    assert r.json()["status"] == OrderStatus.DISPUTED
    assert Licence.objects.get(orders__pk=oid).status == LicenceStatus.REVOKED
    amounts = [e.amount_cents for e in Order.objects.get(pk=oid).events.all() if e.amount_cents]
    assert amounts == [1500, -1500]  # the disputed amount is withdrawn


def test_earnings_report(make_pack, expert, buyer, api_for, make_user):
    pack = priced(make_pack, cents=2000)
    for client in (buyer, api_for(make_user("carol"))):
        oid = client.post(checkout_url(pack), {}, format="json").json()["id"]
        act(client, oid, "pay")
    owner = api_for(expert)
    owner.post(
        reverse("v1:payments-order-refund", kwargs={"order_id": oid}), {"amount_cents": 500}, format="json"
    )
    url = reverse("v1:payments-earnings", kwargs={"slug": pack.publisher.slug})
    r = owner.get(url, {"period": "month"})
    assert r.status_code == 200, r.content
    total = r.json()["totals"][0]
    assert total["currency"] == "usd" and total["gross_cents"] == 4000 and total["refunds_cents"] == 500
    assert total["fees_cents"] == 600 - 75  # 15 % of 4,000, less 15 % of the refund
    assert total["net_cents"] == 4000 - 500 - 525 and total["orders"] == 2
    assert len(r.json()["periods"]) == 1
    assert buyer.get(url).status_code == 403
    r = owner.get(url, {"period": "week"})
    assert r.status_code == 400 and "period" in r.json()["error"]["message"]
    assert owner.get(url, {"from": "2100-01-01T00:00:00Z"}).json()["totals"] == []


def test_webhook_endpoint_rejects_junk(client):
    url = reverse("v1:payments-webhook-ledger")
    assert client.post(url, "{}", content_type="application/json").status_code == 400
    payload = json.dumps({"id": "evt_1", "type": "checkout.session.completed"})
    r = client.post(url, payload, content_type="application/json", HTTP_STRIPE_SIGNATURE=ledger.sign(payload))
    assert r.status_code == 400 and "data.object.id" in r.json()["error"]["message"]
    assert not PaymentEvent.objects.exists()


def test_reconcile_acts_on_a_lost_webhook(make_pack, buyer, monkeypatch):
    from marketplace.services.orders import checkout_reconcile

    pack = priced(make_pack, seat_limit=2)
    oid = buyer.post(checkout_url(pack), {}, format="json").json()["id"]
    monkeypatch.setattr(ledger, "_emit", lambda t, obj: None)  # the expired event never arrives
    ledger.ledger_session_expire(Order.objects.get(pk=oid).checkout_session_id)
    assert Order.objects.get(pk=oid).status == OrderStatus.PENDING
    assert checkout_reconcile(order_id=oid) == "expired: seats released"
    assert Order.objects.get(pk=oid).status == OrderStatus.CANCELLED
    assert Pack.objects.get(pk=pack.pk).seats_sold == 0
    assert checkout_reconcile(order_id=oid) == "nothing to reconcile"
