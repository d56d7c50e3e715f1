"""Webhook events from Stripe and from the test ledger: verified, deduplicated, dispatched by type.

One path for both gateways (`webhook_receive`):

1. The signature is checked on the raw body exactly as Stripe defines it (`Stripe-Signature:
   t=<unix>,v1=<hex HMAC-SHA256 of "t.body">`), with the gateway's secret; a timestamp more than
   `MEMHUB_WEBHOOK_TOLERANCE_S` away from now (either side) is refused, so a captured event cannot be
   replayed later. Any failure is a 400 and nothing is written.
2. The event is only a trigger: the object it names is re-read from the gateway, and what is done follows
   the object's state now, so events arriving out of order or stale still end in the right state.
3. `PaymentEvent(gateway, event_id)` is inserted in the same transaction as the work, with the order's
   row locked: a duplicate delivery (even a concurrent one) finds the row and does nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction

from core.errors import ApplicationError
from marketplace.models import Order, PaymentEvent
from marketplace.payments import get_gateway
from marketplace.payments.gateway import PaymentGateway


class BadWebhook(ApplicationError):
    status = 400
    code = "bad_webhook"


@dataclass(frozen=True)
class WebhookOutcome:
    event_id: str
    type: str
    outcome: str
    duplicate: bool = False


def webhook_secret(gateway: str) -> str:
    secrets = {"stripe": settings.STRIPE_WEBHOOK_SECRET, "ledger": settings.MEMHUB_LEDGER_WEBHOOK_SECRET}
    return str(secrets.get(gateway) or "")


def verify_signature(*, payload: bytes, header: str, secret: str, tolerance: int | None = None) -> int:
    """Check a `Stripe-Signature` header over the raw body; returns its timestamp, or raises BadWebhook."""
    tolerance = settings.MEMHUB_WEBHOOK_TOLERANCE_S if tolerance is None else tolerance
    if not secret:
        raise BadWebhook("This gateway has no webhook secret configured.", code="webhook_unconfigured")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise BadWebhook("The webhook body is not UTF-8.", code="bad_signature") from None
    try:
        stripe.WebhookSignature.verify_header(text, header, secret, tolerance=tolerance)
        timestamp, _ = stripe.WebhookSignature._get_timestamp_and_signatures(header, "v1")
    except stripe.SignatureVerificationError as exc:
        raise BadWebhook(
            f"Webhook signature rejected: {exc.user_message or exc}", code="bad_signature"
        ) from None
    # Stripe's check only refuses old timestamps; one from the future is as suspect.
    if abs(time.time() - timestamp) > tolerance:
        raise BadWebhook(
            f"Webhook signature rejected: timestamp {timestamp} is more than {tolerance} s from now.",
            code="bad_signature",
        )
    return int(timestamp)


@dataclass(frozen=True)
class Handler:
    fetch: Callable[[PaymentGateway, str], Any]  # re-read the object the event names
    apply: Callable[..., str]  # (order, state, *, event_type, event_id) -> outcome


def _session_apply(order: Order, state: Any, *, event_type: str, event_id: str) -> str:
    from marketplace.services.orders import order_apply_session

    return order_apply_session(order, state, event_type=event_type, event_id=event_id)


def _invoice_apply(order: Order, state: Any, *, event_type: str, event_id: str) -> str:
    from marketplace.services.orders import order_apply_invoice

    return order_apply_invoice(order, state, event_type=event_type, event_id=event_id)


def _charge_apply(order: Order, state: Any, *, event_type: str, event_id: str) -> str:
    from marketplace.services.orders import order_apply_charge

    return order_apply_charge(order, state, event_id=event_id)


def _dispute_apply(order: Order, state: Any, *, event_type: str, event_id: str) -> str:
    from marketplace.services.orders import order_apply_dispute

    return order_apply_dispute(order, state, event_id=event_id)


def _subscription_apply(order: Order, state: Any, *, event_type: str, event_id: str) -> str:
    from marketplace.services.orders import order_apply_subscription

    return order_apply_subscription(order, state, event_id=event_id)


_SESSION = Handler(lambda gw, oid: gw.checkout_retrieve(oid), _session_apply)
_INVOICE = Handler(lambda gw, oid: gw.invoice_retrieve(oid), _invoice_apply)
HANDLERS: dict[str, Handler] = {
    "checkout.session.completed": _SESSION,
    "checkout.session.async_payment_succeeded": _SESSION,
    "checkout.session.async_payment_failed": _SESSION,
    "checkout.session.expired": _SESSION,
    "invoice.paid": _INVOICE,
    "invoice.payment_failed": _INVOICE,
    "customer.subscription.deleted": Handler(
        lambda gw, oid: gw.subscription_retrieve(oid), _subscription_apply
    ),
    "charge.refunded": Handler(lambda gw, oid: gw.charge_retrieve(oid), _charge_apply),
    "charge.dispute.created": Handler(lambda gw, oid: gw.dispute_retrieve(oid), _dispute_apply),
}


def _parse(payload: bytes) -> tuple[str, str, str]:
    try:
        event = json.loads(payload)
        event_id, event_type = str(event["id"]), str(event["type"])
        object_id = str(event["data"]["object"]["id"])
    except (ValueError, KeyError, TypeError):
        raise BadWebhook("The webhook body is not an event: it needs id, type and data.object.id.") from None
    if not event_id or len(event_id) > 100 or len(event_type) > 100 or len(object_id) > 100:
        raise BadWebhook("The event's id, type or object id is empty or too long.")
    return event_id, event_type, object_id


def webhook_receive(*, gateway: str, payload: bytes, signature: str) -> WebhookOutcome:
    """Verify, deduplicate and apply one webhook delivery (the endpoint's whole job)."""
    # Verify before building the gateway: an instance without Stripe keys still answers a clean 400.
    verify_signature(payload=payload, header=signature, secret=webhook_secret(gateway))
    event_id, event_type, object_id = _parse(payload)
    gw = get_gateway(gateway)
    if PaymentEvent.objects.filter(gateway=gw.name, event_id=event_id).exists():
        return WebhookOutcome(event_id, event_type, "duplicate", duplicate=True)
    handler = HANDLERS.get(event_type)
    # Re-read before taking any lock: the gateway's answer is the truth, and a slow gateway must not
    # hold an order's row lock.
    state = handler.fetch(gw, object_id) if handler is not None else None
    try:
        with transaction.atomic():
            record = PaymentEvent.objects.create(
                gateway=gw.name, event_id=event_id, type=event_type, object_id=object_id
            )
            if handler is None:
                outcome = "ignored: not an event this instance acts on"
            else:
                order = _order_for(state)
                if order is None:
                    outcome = "ignored: no order of ours"
                elif order.gateway != gw.name:
                    outcome = f"ignored: order {order.pk} belongs to gateway {order.gateway}"
                else:
                    outcome = handler.apply(order, state, event_type=event_type, event_id=event_id)
            record.outcome = outcome[:300]
            record.save(update_fields=["outcome"])
    except IntegrityError:
        # The unique (gateway, event_id) row: a concurrent delivery of this event did the work.
        if PaymentEvent.objects.filter(gateway=gw.name, event_id=event_id).exists():
            return WebhookOutcome(event_id, event_type, "duplicate", duplicate=True)
        raise
    return WebhookOutcome(event_id, event_type, outcome)


def _order_for(state: Any) -> Order | None:
    from marketplace.services.orders import order_locked

    order_id = getattr(state, "order_id", "")
    if order_id:
        order = order_locked(order_id)
        if order is not None:
            return order
    # Fallbacks for objects that lost our metadata: find the order by the ids it already knows.
    for attr, field in (
        ("payment_intent_id", "payment_intent_id"),
        ("subscription_id", "subscription_id"),
        ("id", "checkout_session_id"),
        ("id", "subscription_id"),
    ):
        value = getattr(state, attr, "")
        if value:
            pk = Order.objects.filter(**{field: value}).values_list("pk", flat=True).first()
            if pk is not None:
                return order_locked(str(pk))
    return None
