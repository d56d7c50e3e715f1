"""The built-in test ledger: a payment gateway with no keys, for the embedded default (`make run`).

It keeps its objects (`LedgerObject`) in Stripe's shape, moves through Stripe's states, and announces every
change as a Stripe-shaped event signed with `MEMHUB_LEDGER_WEBHOOK_SECRET` exactly as Stripe signs
(`Stripe-Signature: t=...,v1=HMAC-SHA256(secret, "t.payload")`), delivered to the same
`webhooks.webhook_receive` that serves `POST /webhooks/ledger`. Nothing here grants a licence: the webhook
path re-reads the object from this ledger and does the work, exactly as it does for Stripe.

The buyer-side actions (`ledger_session_pay`, `_fail`, `_expire`, `ledger_subscription_renew`, `_fail`,
`ledger_dispute`) stand in for what a card network and a customer would do.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
import time
from typing import Any

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction

from marketplace.models import LedgerObject
from marketplace.payments.gateway import (
    CheckoutRequest,
    CheckoutSession,
    DisputeState,
    GatewayError,
    InvoiceState,
    PaymentState,
    RefundResult,
    SubscriptionState,
    charge_from,
    dispute_from,
    invoice_from,
    session_from,
    subscription_from,
)

PERIOD = dt.timedelta(days=30)
KINDS = {
    "cs": "checkout.session",
    "pi": "payment_intent",
    "ch": "charge",
    "sub": "subscription",
    "in": "invoice",
    "re": "refund",
    "dp": "dispute",
    "ii": "invoiceitem",
    "evt": "event",
}


def _new_id(prefix: str, idempotency_key: str = "") -> str:
    if idempotency_key:  # the same key names the same object, so a retried call finds it
        return f"{prefix}_{hashlib.sha256(idempotency_key.encode()).hexdigest()[:24]}"
    return f"{prefix}_{secrets.token_hex(12)}"


def _store(obj: dict[str, Any]) -> dict[str, Any]:
    prefix = obj["id"].split("_", 1)[0]
    LedgerObject.objects.update_or_create(id=obj["id"], defaults={"kind": KINDS[prefix], "data": obj})
    return obj


def _get(object_id: str, prefix: str) -> dict[str, Any]:
    row = LedgerObject.objects.filter(id=object_id, kind=KINDS[prefix]).first()
    if row is None:
        raise GatewayError(f"No such {KINDS[prefix]}: '{object_id}'.", status=404, code="not_found")
    return dict(row.data)


def _locked(object_id: str, prefix: str) -> dict[str, Any]:
    row = LedgerObject.objects.select_for_update().filter(id=object_id, kind=KINDS[prefix]).first()
    if row is None:
        raise GatewayError(f"No such {KINDS[prefix]}: '{object_id}'.", status=404, code="not_found")
    return dict(row.data)


def sign(payload: str, *, secret: str | None = None, timestamp: int | None = None) -> str:
    """The `Stripe-Signature` header for `payload`, computed exactly as Stripe computes it."""
    return str(
        stripe.WebhookSignature.generate_signature_header(
            payload, secret or settings.MEMHUB_LEDGER_WEBHOOK_SECRET, timestamp=timestamp
        )
    )


def event_payload(event_type: str, obj: dict[str, Any], *, event_id: str = "") -> str:
    return json.dumps(
        {
            "id": event_id or _new_id("evt"),
            "object": "event",
            "type": event_type,
            "created": int(time.time()),
            "livemode": False,
            "data": {"object": obj},
        },
        separators=(",", ":"),
    )


def _emit(event_type: str, obj: dict[str, Any]) -> None:
    """Record the event and deliver it, signed, through the webhook path. Delivery runs after the ledger's
    write commits (as a gateway's would); inside a caller's transaction, when that one commits."""
    payload = event_payload(event_type, obj)
    event_id = json.loads(payload)["id"]
    LedgerObject.objects.create(id=event_id, kind="event", data={"type": event_type, "payload": payload})

    def deliver() -> None:
        from marketplace.payments.webhooks import webhook_receive

        webhook_receive(gateway="ledger", payload=payload.encode(), signature=sign(payload))

    transaction.on_commit(deliver, robust=False) if _deferred() else deliver()


def _deferred() -> bool:
    """Deliver on commit when asked to (a real gateway's webhooks arrive after its call returns); by
    default deliver now, inside the caller's transaction, so an action's effect is visible at once."""
    return bool(getattr(settings, "MEMHUB_LEDGER_DELIVER_ON_COMMIT", False))


def _now() -> int:
    return int(time.time())


class LedgerGateway:
    name = "ledger"

    @property
    def webhook_secret(self) -> str:
        return str(settings.MEMHUB_LEDGER_WEBHOOK_SECRET)

    def checkout_create(self, request: CheckoutRequest) -> CheckoutSession:
        session_id = _new_id("cs", request.idempotency_key)
        existing = LedgerObject.objects.filter(id=session_id).first()
        if existing is not None:
            return session_from(existing.data)
        site = settings.MEMHUB_SITE_URL.rstrip("/")
        obj = {
            "id": session_id,
            "object": "checkout.session",
            "mode": request.mode,
            "status": "open",
            "payment_status": "unpaid",
            "url": f"{site}/marketplace/ledger/checkout/{session_id}",
            "client_reference_id": request.order_id,
            "metadata": {"order_id": request.order_id, **request.metadata},
            "amount_total": request.unit_amount_cents * request.quantity,
            "currency": request.currency,
            "customer": _new_id("cus"),
            "payment_intent": None,
            "subscription": None,
            "line": {
                "name": request.product_name,
                "unit_amount": request.unit_amount_cents,
                "quantity": request.quantity,
            },
            "connect": {
                "destination": request.destination_account,
                "fee_bps": request.fee_bps,
                "fee_cents": request.fee_cents,
            },
            "created": _now(),
        }
        try:
            with transaction.atomic():
                _store(obj)
        except IntegrityError:  # a concurrent retry with the same key created it first
            return session_from(_get(session_id, "cs"))
        return session_from(obj)

    def checkout_retrieve(self, session_id: str) -> CheckoutSession:
        return session_from(_get(session_id, "cs"))

    def charge_retrieve(self, charge_id: str) -> PaymentState:
        return charge_from(_get(charge_id, "ch"))

    def refund_create(
        self,
        *,
        payment_intent_id: str,
        amount_cents: int,
        idempotency_key: str,
        order_id: str,
        reverse_transfer: bool = False,
    ) -> RefundResult:
        refund_id = _new_id("re", idempotency_key)
        done = LedgerObject.objects.filter(id=refund_id).first()
        if done is not None:
            d = done.data
            return RefundResult(
                id=refund_id,
                amount=d["amount"],
                status=d["status"],
                payment_intent_id=d["pi"],
                charge_id=d["charge"],
            )
        row = (
            LedgerObject.objects.select_for_update()
            .filter(kind="charge", data__payment_intent=payment_intent_id)
            .first()
        )
        if row is None:
            raise GatewayError(f"No charge for payment '{payment_intent_id}'.", status=400, code="no_charge")
        charge = dict(row.data)
        left = int(charge["amount"]) - int(charge["amount_refunded"])
        if amount_cents <= 0 or amount_cents > left:
            raise GatewayError(
                f"Refund of {amount_cents} exceeds what is left on the charge ({left}).", status=400
            )
        charge["amount_refunded"] = int(charge["amount_refunded"]) + amount_cents
        charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
        _store(charge)
        refund = {
            "id": refund_id,
            "object": "refund",
            "amount": amount_cents,
            "status": "succeeded",
            "pi": payment_intent_id,
            "charge": charge["id"],
            "reverse_transfer": reverse_transfer,
            "metadata": {"order_id": order_id},
        }
        _store(refund)
        _emit("charge.refunded", charge)
        return RefundResult(
            id=refund_id,
            amount=amount_cents,
            status="succeeded",
            payment_intent_id=payment_intent_id,
            charge_id=charge["id"],
        )

    def subscription_retrieve(self, subscription_id: str) -> SubscriptionState:
        return subscription_from(_get(subscription_id, "sub"))

    def subscription_cancel(self, subscription_id: str, *, idempotency_key: str) -> SubscriptionState:
        sub = _locked(subscription_id, "sub")
        if sub["status"] != "canceled":
            sub["status"] = "canceled"
            sub["canceled_at"] = _now()
            _store(sub)
            _emit("customer.subscription.deleted", sub)
        return subscription_from(sub)

    def invoice_retrieve(self, invoice_id: str) -> InvoiceState:
        inv = _get(invoice_id, "in")
        order_id = ""
        if inv.get("subscription"):
            order_id = str((_get(inv["subscription"], "sub").get("metadata") or {}).get("order_id") or "")
        return invoice_from(inv, order_id=order_id)

    def dispute_retrieve(self, dispute_id: str) -> DisputeState:
        dp = _get(dispute_id, "dp")
        return dispute_from(dp, charge=charge_from(_get(dp["charge"], "ch")))

    def usage_bill(
        self,
        *,
        subscription_id: str,
        customer_id: str,
        amount_cents: int,
        currency: str,
        description: str,
        idempotency_key: str,
    ) -> str:
        item_id = _new_id("ii", idempotency_key)
        if LedgerObject.objects.filter(id=item_id).exists():
            return item_id
        sub = _locked(subscription_id, "sub")
        _store(
            {
                "id": item_id,
                "object": "invoiceitem",
                "amount": amount_cents,
                "currency": currency,
                "description": description,
                "subscription": subscription_id,
                "invoiced": False,
            }
        )
        sub.setdefault("pending_items", []).append(item_id)
        _store(sub)
        return item_id


# --- what a buyer and a card network would do --------------------------------------------------------


def _payment(*, order_id: str, amount: int, currency: str, invoice: str = "") -> tuple[str, str]:
    pi_id, ch_id = _new_id("pi"), _new_id("ch")
    meta = {"order_id": order_id}
    _store(
        {
            "id": pi_id,
            "object": "payment_intent",
            "amount": amount,
            "currency": currency,
            "status": "succeeded",
            "metadata": meta,
            "latest_charge": ch_id,
        }
    )
    _store(
        {
            "id": ch_id,
            "object": "charge",
            "amount": amount,
            "amount_refunded": 0,
            "currency": currency,
            "status": "succeeded",
            "payment_intent": pi_id,
            "refunded": False,
            "disputed": False,
            "metadata": meta,
            "invoice": invoice or None,
        }
    )
    return pi_id, ch_id


def _invoice(*, sub: dict[str, Any], amount: int, reason: str, paid: bool, period_end: int) -> dict[str, Any]:
    in_id = _new_id("in")
    order_id = str(sub["metadata"].get("order_id") or "")
    pi_id = (
        _payment(order_id=order_id, amount=amount, currency=sub["currency"], invoice=in_id)[0] if paid else ""
    )
    inv = {
        "id": in_id,
        "object": "invoice",
        "subscription": sub["id"],
        "customer": sub["customer"],
        "status": "paid" if paid else "open",
        "amount_paid": amount if paid else 0,
        "amount_due": amount,
        "currency": sub["currency"],
        "billing_reason": reason,
        "payment_intent": pi_id or None,
        "lines": {
            "data": [{"period": {"start": period_end - int(PERIOD.total_seconds()), "end": period_end}}]
        },
    }
    return _store(inv)


@transaction.atomic
def ledger_session_pay(session_id: str, *, async_payment: bool = False) -> CheckoutSession:
    """The buyer pays. `async_payment`: a bank debit that settles later (`ledger_session_settle`)."""
    s = _locked(session_id, "cs")
    if s["status"] != "open":
        raise GatewayError(
            f"Checkout session '{session_id}' is {s['status']}, not open.",
            status=409,
            code="session_not_open",
        )
    s["status"] = "complete"
    if async_payment:
        s["payment_status"] = "unpaid"
        _store(s)
        _emit("checkout.session.completed", s)
        return session_from(s)
    return _settle(s)


def _settle(s: dict[str, Any], *, async_: bool = False) -> CheckoutSession:
    order_id = s["metadata"]["order_id"]
    s["payment_status"] = "paid"
    invoice: dict[str, Any] | None = None
    if s["mode"] == "subscription":
        end = _now() + int(PERIOD.total_seconds())
        sub = {
            "id": _new_id("sub"),
            "object": "subscription",
            "status": "active",
            "customer": s["customer"],
            "currency": s["currency"],
            "metadata": {"order_id": order_id},
            "current_period_end": end,
            "line": s["line"],
            "pending_items": [],
        }
        _store(sub)
        invoice = _invoice(
            sub=sub, amount=s["amount_total"], reason="subscription_create", paid=True, period_end=end
        )
        s["subscription"] = sub["id"]
    else:
        s["payment_intent"] = _payment(order_id=order_id, amount=s["amount_total"], currency=s["currency"])[0]
    _store(s)
    _emit("checkout.session.async_payment_succeeded" if async_ else "checkout.session.completed", s)
    if invoice is not None:
        _emit("invoice.paid", invoice)
    return session_from(s)


@transaction.atomic
def ledger_session_settle(session_id: str, *, succeed: bool = True) -> CheckoutSession:
    """An async payment (after `ledger_session_pay(async_payment=True)`) settles or fails."""
    s = _locked(session_id, "cs")
    if s["status"] != "complete" or s["payment_status"] != "unpaid":
        raise GatewayError(
            f"Checkout session '{session_id}' has no payment awaiting settlement.",
            status=409,
            code="nothing_to_settle",
        )
    if succeed:
        return _settle(s, async_=True)
    _store(s)
    _emit("checkout.session.async_payment_failed", s)
    return session_from(s)


@transaction.atomic
def ledger_session_expire(session_id: str) -> CheckoutSession:
    s = _locked(session_id, "cs")
    if s["status"] != "open":
        raise GatewayError(
            f"Checkout session '{session_id}' is {s['status']}, not open.",
            status=409,
            code="session_not_open",
        )
    s["status"] = "expired"
    _store(s)
    _emit("checkout.session.expired", s)
    return session_from(s)


@transaction.atomic
def ledger_subscription_renew(subscription_id: str, *, paid: bool = True) -> InvoiceState:
    """The next period's invoice: the base price plus any usage items reported meanwhile; paid (renewal)
    or not (`invoice.payment_failed`, the subscription goes past due)."""
    sub = _locked(subscription_id, "sub")
    if sub["status"] == "canceled":
        raise GatewayError(f"Subscription '{subscription_id}' is cancelled.", status=409, code="cancelled")
    items = [_get(i, "ii") for i in sub.get("pending_items", [])]
    amount = int(sub["line"]["unit_amount"]) * int(sub["line"]["quantity"]) + sum(
        int(i["amount"]) for i in items
    )
    end = int(sub["current_period_end"]) + int(PERIOD.total_seconds())
    inv = _invoice(sub=sub, amount=amount, reason="subscription_cycle", paid=paid, period_end=end)
    if paid:
        for item in items:
            _store({**item, "invoiced": True, "invoice": inv["id"]})
        sub["pending_items"] = []
        sub["current_period_end"] = end
        sub["status"] = "active"
    else:
        sub["status"] = "past_due"
    _store(sub)
    _emit("invoice.paid" if paid else "invoice.payment_failed", inv)
    return invoice_from(inv, order_id=str(sub["metadata"].get("order_id") or ""))


@transaction.atomic
def ledger_dispute(payment_intent_id: str, *, reason: str = "fraudulent") -> DisputeState:
    row = (
        LedgerObject.objects.select_for_update()
        .filter(kind="charge", data__payment_intent=payment_intent_id)
        .first()
    )
    if row is None:
        raise GatewayError(f"No charge for payment '{payment_intent_id}'.", status=404, code="not_found")
    charge = dict(row.data)
    charge["disputed"] = True
    _store(charge)
    dp = {
        "id": _new_id("dp"),
        "object": "dispute",
        "charge": charge["id"],
        "payment_intent": payment_intent_id,
        "amount": charge["amount"],
        "status": "needs_response",
        "reason": reason,
        "metadata": charge.get("metadata") or {},
    }
    _store(dp)
    _emit("charge.dispute.created", dp)
    return dispute_from(dp, charge=charge_from(charge))
