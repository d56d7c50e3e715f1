"""Stripe: Checkout Sessions (one-time and monthly prices) as Connect destination charges.

The publisher's Connect account (`Publisher.payout_account_id`) receives the charge and the platform keeps
its application fee (`application_fee_amount` for one-time, `application_fee_percent` for subscriptions).
Every call that a Celery retry may repeat carries the idempotency key the caller derived from the order
id and the operation, so a retry never charges, refunds or cancels twice. `STRIPE_API_BASE` points the
real SDK elsewhere (the tests' local stand-in).
"""

from __future__ import annotations

from typing import Any

import stripe
from django.conf import settings

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


def _plain(obj: Any) -> dict[str, Any]:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


class StripeGateway:
    name = "stripe"

    def __init__(self) -> None:
        if not settings.STRIPE_SECRET_KEY:
            raise GatewayError(
                "Stripe is not configured: set STRIPE_SECRET_KEY (or use MEMHUB_PAYMENT_GATEWAY=ledger).",
                status=503,
                code="gateway_unconfigured",
            )
        bases: dict[str, str] = {}
        if settings.STRIPE_API_BASE:
            bases["api"] = settings.STRIPE_API_BASE.rstrip("/")
        # Retries are Celery's (with the same idempotency key), not the SDK's hidden ones.
        self.client = stripe.StripeClient(
            settings.STRIPE_SECRET_KEY,
            base_addresses=bases or None,  # type: ignore[arg-type]
            max_network_retries=0,
        )

    @property
    def webhook_secret(self) -> str:
        return str(settings.STRIPE_WEBHOOK_SECRET)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return _plain(fn(*args, **kwargs))
        except stripe.InvalidRequestError as exc:
            raise GatewayError(f"Stripe refused the request: {exc.user_message or exc}", status=400) from exc
        except stripe.StripeError as exc:
            raise GatewayError(f"Stripe could not be reached or failed: {exc.user_message or exc}") from exc

    def checkout_create(self, request: CheckoutRequest) -> CheckoutSession:
        metadata = {"order_id": request.order_id, **request.metadata}
        price_data: dict[str, Any] = {
            "currency": request.currency,
            "unit_amount": request.unit_amount_cents,
            "product_data": {"name": request.product_name},
        }
        params: dict[str, Any] = {
            "mode": request.mode,
            "client_reference_id": request.order_id,
            "metadata": metadata,
            "success_url": request.success_url,
            "cancel_url": request.cancel_url,
        }
        if request.customer_email:
            params["customer_email"] = request.customer_email
        connect = {"transfer_data": {"destination": request.destination_account}}
        if request.mode == "subscription":
            price_data["recurring"] = {"interval": "month"}
            sub: dict[str, Any] = {"metadata": metadata}
            if request.destination_account:
                sub |= connect | {"application_fee_percent": round(request.fee_bps / 100, 2)}
            params["subscription_data"] = sub
        else:
            pi: dict[str, Any] = {"metadata": metadata}
            if request.destination_account:
                pi |= connect | {"application_fee_amount": request.fee_cents}
            params["payment_intent_data"] = pi
        params["line_items"] = [{"price_data": price_data, "quantity": request.quantity}]
        obj = self._call(
            self.client.v1.checkout.sessions.create,
            params=params,
            options={"idempotency_key": request.idempotency_key},
        )
        return session_from(obj)

    def checkout_retrieve(self, session_id: str) -> CheckoutSession:
        return session_from(self._call(self.client.v1.checkout.sessions.retrieve, session_id))

    def _order_of_payment_intent(self, pi_id: str) -> str:
        if not pi_id:
            return ""
        pi = self._call(self.client.v1.payment_intents.retrieve, pi_id)
        order_id = str((pi.get("metadata") or {}).get("order_id") or "")
        return order_id

    def charge_retrieve(self, charge_id: str) -> PaymentState:
        obj = self._call(self.client.v1.charges.retrieve, charge_id)
        state = charge_from(obj)
        if not state.order_id:  # a subscription invoice's charge carries no metadata of ours
            state = charge_from(obj, order_id=self._order_of_payment_intent(state.payment_intent_id))
        return state

    def refund_create(
        self,
        *,
        payment_intent_id: str,
        amount_cents: int,
        idempotency_key: str,
        order_id: str,
        reverse_transfer: bool = False,
    ) -> RefundResult:
        params: dict[str, Any] = {
            "payment_intent": payment_intent_id,
            "amount": amount_cents,
            "metadata": {"order_id": order_id},
        }
        if reverse_transfer:  # the publisher returns its share and the platform its fee, pro rata
            params |= {"reverse_transfer": True, "refund_application_fee": True}
        obj = self._call(
            self.client.v1.refunds.create, params=params, options={"idempotency_key": idempotency_key}
        )
        return RefundResult(
            id=str(obj["id"]),
            amount=int(obj.get("amount") or 0),
            status=str(obj.get("status") or ""),
            payment_intent_id=str(obj.get("payment_intent") or payment_intent_id),
            charge_id=str(obj.get("charge") or ""),
        )

    def subscription_retrieve(self, subscription_id: str) -> SubscriptionState:
        return subscription_from(self._call(self.client.v1.subscriptions.retrieve, subscription_id))

    def subscription_cancel(self, subscription_id: str, *, idempotency_key: str) -> SubscriptionState:
        obj = self._call(
            self.client.v1.subscriptions.cancel, subscription_id, options={"idempotency_key": idempotency_key}
        )
        return subscription_from(obj)

    def invoice_retrieve(self, invoice_id: str) -> InvoiceState:
        obj = self._call(self.client.v1.invoices.retrieve, invoice_id)
        state = invoice_from(obj)
        if not state.order_id and state.subscription_id:
            state = invoice_from(obj, order_id=self.subscription_retrieve(state.subscription_id).order_id)
        return state

    def dispute_retrieve(self, dispute_id: str) -> DisputeState:
        obj = self._call(self.client.v1.disputes.retrieve, dispute_id)
        charge_id = str(obj.get("charge") or "")
        charge = self.charge_retrieve(charge_id) if charge_id else None
        return dispute_from(obj, charge=charge)

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
        # An invoice item on the subscription lands on its next invoice: metered use is billed in arrears.
        obj = self._call(
            self.client.v1.invoice_items.create,
            params={
                "customer": customer_id,
                "subscription": subscription_id,
                "amount": amount_cents,
                "currency": currency,
                "description": description,
            },
            options={"idempotency_key": idempotency_key},
        )
        return str(obj["id"])
