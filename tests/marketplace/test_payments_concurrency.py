"""On PostgreSQL, with real threads and connections (transaction=True: every thread commits for real):
50 concurrent purchases of a pack with 10 seats grant exactly 10 licences; 100 deliveries of one webhook
event grant one licence. 25 worker threads (connections) at a time: the test server is shared."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse

from core.errors import ApplicationError
from governance.policy import Subject
from marketplace.models import Licence, Order, OrderStatus, Pack, PaymentEvent, PriceModel
from marketplace.payments import ledger
from marketplace.services.orders import checkout_create

pytestmark = pytest.mark.django_db(transaction=True)
WORKERS = 25


def _in_thread(fn: Any) -> Any:
    def run(*args: Any) -> Any:
        try:
            return fn(*args)
        finally:
            connection.close()

    return run


def test_50_concurrent_purchases_of_10_seats_grant_exactly_10(make_pack, make_user):
    pack = make_pack(slug="scarce", texts=(), bare_release=True)
    Pack.objects.filter(pk=pack.pk).update(price_cents=500, price_model=PriceModel.ONE_TIME, seat_limit=10)
    pack.refresh_from_db()
    users = [make_user(f"buyer{i:02d}") for i in range(50)]
    barrier = threading.Barrier(WORKERS)

    @_in_thread
    def purchase(i: int) -> str:
        if i < WORKERS:
            barrier.wait(timeout=30)
        try:
            order = checkout_create(actor=Subject(user=users[i]), pack=pack)
        except ApplicationError as exc:
            return exc.code
        ledger.ledger_session_pay(order.checkout_session_id)
        return "bought"

    with ThreadPoolExecutor(WORKERS) as pool:
        outcomes = list(pool.map(purchase, range(50)))
    assert outcomes.count("bought") == 10, outcomes
    assert outcomes.count("sold_out") == 40
    assert Licence.objects.filter(pack=pack).count() == 10
    assert Order.objects.filter(pack=pack, status=OrderStatus.PAID).count() == 10
    assert Order.objects.filter(pack=pack).count() == 10  # a refused checkout writes no order
    assert Pack.objects.get(pk=pack.pk).seats_sold == 10


def test_100_duplicate_deliveries_grant_one_licence(make_pack, bob, monkeypatch):
    pack = make_pack(slug="dup", texts=(), bare_release=True)
    Pack.objects.filter(pk=pack.pk).update(price_cents=700, price_model=PriceModel.ONE_TIME)
    pack.refresh_from_db()
    order = checkout_create(actor=Subject(user=bob), pack=pack)
    captured: list[str] = []
    # Capture the ledger's signed event instead of delivering it, to deliver it 100 times ourselves.
    monkeypatch.setattr(ledger, "_emit", lambda t, obj: captured.append(ledger.event_payload(t, obj)))
    ledger.ledger_session_pay(order.checkout_session_id)
    (payload,) = captured
    url = reverse("v1:payments-webhook-ledger")
    barrier = threading.Barrier(WORKERS)

    @_in_thread
    def deliver(i: int) -> tuple[int, bool]:
        if i < WORKERS:
            barrier.wait(timeout=30)
        r = Client().post(
            url, payload, content_type="application/json", HTTP_STRIPE_SIGNATURE=ledger.sign(payload)
        )
        return r.status_code, bool(r.json().get("duplicate"))

    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(deliver, range(100)))
    assert all(status == 200 for status, _ in results), results
    assert sum(1 for _, dup in results if not dup) == 1
    assert Licence.objects.filter(pack=pack).count() == 1
    assert PaymentEvent.objects.count() == 1
    order.refresh_from_db()
    assert order.status == OrderStatus.PAID
    assert order.events.filter(to_status=OrderStatus.PAID).count() == 1
