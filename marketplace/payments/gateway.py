"""The payment gateway interface: plain dataclasses in and out, so order logic never sees a vendor object.

Two implementations: `stripe_gateway.StripeGateway` (Checkout Sessions, Connect destination charges) and
`ledger.LedgerGateway` (the built-in test ledger, no keys). Both keep their objects in Stripe's shape, so
the parsers below read either, and both deliver Stripe-signed webhook events to `webhooks.webhook_receive`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.errors import ApplicationError


class GatewayError(ApplicationError):
    """The gateway refused or could not be reached: a 502 unless the gateway said the request was bad."""

    status = 502
    code = "gateway_error"


@dataclass(frozen=True)
class CheckoutRequest:
    order_id: str
    mode: str  # "payment" (one-time) | "subscription" (monthly, metered)
    price_model: str
    product_name: str
    unit_amount_cents: int  # per seat; for metered: the base (0) — usage is billed as invoice items
    quantity: int
    currency: str
    fee_bps: int  # the platform's application fee, basis points
    fee_cents: int  # one-time: application_fee_amount
    destination_account: str  # the publisher's Connect account ("": the platform keeps the charge)
    success_url: str
    cancel_url: str
    idempotency_key: str
    customer_email: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckoutSession:
    id: str
    url: str
    status: str  # open | complete | expired
    payment_status: str  # paid | unpaid | no_payment_required
    order_id: str
    amount_total: int
    currency: str
    payment_intent_id: str = ""
    subscription_id: str = ""
    customer_id: str = ""

    @property
    def paid(self) -> bool:
        return self.status == "complete" and self.payment_status in ("paid", "no_payment_required")


@dataclass(frozen=True)
class PaymentState:
    """A charge as the gateway sees it now."""

    id: str
    payment_intent_id: str
    order_id: str
    amount: int
    amount_refunded: int
    currency: str
    status: str
    disputed: bool = False


@dataclass(frozen=True)
class RefundResult:
    id: str
    amount: int
    status: str  # succeeded | pending | failed
    payment_intent_id: str = ""
    charge_id: str = ""


@dataclass(frozen=True)
class SubscriptionState:
    id: str
    status: str  # active | past_due | canceled | incomplete ...
    order_id: str
    customer_id: str = ""
    current_period_end: dt.datetime | None = None


@dataclass(frozen=True)
class InvoiceState:
    id: str
    subscription_id: str
    order_id: str
    status: str  # paid | open | uncollectible | void
    amount_paid: int
    amount_due: int
    currency: str
    billing_reason: str  # subscription_create | subscription_cycle | ...
    period_end: dt.datetime | None = None
    payment_intent_id: str = ""


@dataclass(frozen=True)
class DisputeState:
    id: str
    charge_id: str
    payment_intent_id: str
    order_id: str
    amount: int
    status: str
    reason: str = ""


class PaymentGateway(Protocol):
    name: str

    @property
    def webhook_secret(self) -> str: ...

    def checkout_create(self, request: CheckoutRequest) -> CheckoutSession: ...
    def checkout_retrieve(self, session_id: str) -> CheckoutSession: ...
    def charge_retrieve(self, charge_id: str) -> PaymentState: ...
    def refund_create(
        self,
        *,
        payment_intent_id: str,
        amount_cents: int,
        idempotency_key: str,
        order_id: str,
        reverse_transfer: bool = False,
    ) -> RefundResult: ...
    def subscription_retrieve(self, subscription_id: str) -> SubscriptionState: ...
    def subscription_cancel(self, subscription_id: str, *, idempotency_key: str) -> SubscriptionState: ...
    def invoice_retrieve(self, invoice_id: str) -> InvoiceState: ...
    def dispute_retrieve(self, dispute_id: str) -> DisputeState: ...
    def usage_bill(
        self,
        *,
        subscription_id: str,
        customer_id: str,
        amount_cents: int,
        currency: str,
        description: str,
        idempotency_key: str,
    ) -> str: ...


# --- parsers of Stripe-shaped objects (plain dicts), shared by both gateways ---------------------------


def _id(value: Any) -> str:
    """An expandable field: an id string, an object with an id, or null."""
    if isinstance(value, dict):
        return str(value.get("id") or "")
    return str(value or "")


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj.get("metadata") or {})


def _when(value: Any) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(int(value), tz=dt.UTC) if value else None


def session_from(obj: dict[str, Any]) -> CheckoutSession:
    return CheckoutSession(
        id=str(obj["id"]),
        url=str(obj.get("url") or ""),
        status=str(obj.get("status") or "open"),
        payment_status=str(obj.get("payment_status") or "unpaid"),
        order_id=str(_meta(obj).get("order_id") or obj.get("client_reference_id") or ""),
        amount_total=int(obj.get("amount_total") or 0),
        currency=str(obj.get("currency") or ""),
        payment_intent_id=_id(obj.get("payment_intent")),
        subscription_id=_id(obj.get("subscription")),
        customer_id=_id(obj.get("customer")),
    )


def charge_from(obj: dict[str, Any], *, order_id: str = "") -> PaymentState:
    return PaymentState(
        id=str(obj["id"]),
        payment_intent_id=_id(obj.get("payment_intent")),
        order_id=str(_meta(obj).get("order_id") or order_id),
        amount=int(obj.get("amount") or 0),
        amount_refunded=int(obj.get("amount_refunded") or 0),
        currency=str(obj.get("currency") or ""),
        status=str(obj.get("status") or ""),
        disputed=bool(obj.get("disputed")),
    )


def subscription_from(obj: dict[str, Any]) -> SubscriptionState:
    # Newer API versions keep the period on the subscription's items rather than the subscription.
    end = obj.get("current_period_end")
    if not end:
        items = ((obj.get("items") or {}).get("data")) or []
        end = items[0].get("current_period_end") if items else None
    return SubscriptionState(
        id=str(obj["id"]),
        status=str(obj.get("status") or ""),
        order_id=str(_meta(obj).get("order_id") or ""),
        customer_id=_id(obj.get("customer")),
        current_period_end=_when(end),
    )


def invoice_subscription_id(obj: dict[str, Any]) -> str:
    """`invoice.subscription` (older API versions) or `invoice.parent.subscription_details.subscription`."""
    sub = _id(obj.get("subscription"))
    if not sub:
        details = ((obj.get("parent") or {}).get("subscription_details")) or {}
        sub = _id(details.get("subscription"))
    return sub


def invoice_from(obj: dict[str, Any], *, order_id: str = "") -> InvoiceState:
    lines = ((obj.get("lines") or {}).get("data")) or []
    period_end = obj.get("period_end")
    if lines and (lines[0].get("period") or {}).get("end"):
        period_end = lines[0]["period"]["end"]  # the service period, not the invoice's draft window
    pi = _id(obj.get("payment_intent"))
    if not pi:
        payments = ((obj.get("payments") or {}).get("data")) or []
        pi = _id((payments[0].get("payment") or {}).get("payment_intent")) if payments else ""
    details = ((obj.get("parent") or {}).get("subscription_details")) or {}
    meta_order = str((details.get("metadata") or {}).get("order_id") or _meta(obj).get("order_id") or "")
    return InvoiceState(
        id=str(obj["id"]),
        subscription_id=invoice_subscription_id(obj),
        order_id=meta_order or order_id,
        status=str(obj.get("status") or ""),
        amount_paid=int(obj.get("amount_paid") or 0),
        amount_due=int(obj.get("amount_due") or 0),
        currency=str(obj.get("currency") or ""),
        billing_reason=str(obj.get("billing_reason") or ""),
        period_end=_when(period_end),
        payment_intent_id=pi,
    )


def dispute_from(obj: dict[str, Any], *, charge: PaymentState | None = None) -> DisputeState:
    return DisputeState(
        id=str(obj["id"]),
        charge_id=_id(obj.get("charge")),
        payment_intent_id=_id(obj.get("payment_intent")) or (charge.payment_intent_id if charge else ""),
        order_id=str(_meta(obj).get("order_id") or (charge.order_id if charge else "")),
        amount=int(obj.get("amount") or 0),
        status=str(obj.get("status") or ""),
        reason=str(obj.get("reason") or ""),
    )
