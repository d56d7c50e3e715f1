"""Orders: checkout (seat reservation, idempotency), the state changes webhooks cause, refunds, usage.

An order's every transition is an `OrderEvent` with the gateway event that caused it and the money it
moved (a refund is negative), so the history is complete and earnings are a sum over it. A licence is
granted only by `order_apply_session` / `order_apply_invoice`, which only the verified webhook path calls
(with the object re-read from the gateway), never by a success page.

Outbound gateway calls are kept outside the transaction that reserves seats (a slow gateway must not hold
the pack's row lock) and carry idempotency keys derived from the order id and the operation, so a retried
call (by the buyer, or by Celery) never creates a second session, refund or cancellation.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import uuid
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import Organization, Role
from core.errors import ApplicationError, Conflict, NotFound, PermissionDenied
from governance.audit import audit_record
from governance.policy import Subject, SubjectKind
from marketplace.models import (
    Licence,
    LicenceStatus,
    LicenceUsage,
    Order,
    OrderEvent,
    OrderStatus,
    Pack,
    PriceModel,
    PublisherRole,
)
from marketplace.payments import get_gateway
from marketplace.payments.gateway import (
    CheckoutRequest,
    CheckoutSession,
    DisputeState,
    GatewayError,
    InvoiceState,
    PaymentState,
    SubscriptionState,
)
from marketplace.services.common import publisher_role, require_marketplace

MAX_SEATS_PER_ORDER = 1000
MAX_IDEMPOTENCY_KEY = 255
# Once a licence stopped for one of these reasons, no later payment event brings it back.
_FINAL_LICENCE = (LicenceStatus.REFUNDED, LicenceStatus.REVOKED, LicenceStatus.CANCELLED)
_OPEN = (OrderStatus.CREATED, OrderStatus.PENDING)


def fee_bps(pack: Pack) -> int:
    bps = pack.publisher.fee_basis_points
    return int(settings.MEMHUB_PLATFORM_FEE_BPS if bps is None else bps)


def idempotency_key(order: Order, operation: str, *parts: Any) -> str:
    """The key a gateway call carries: the same order, operation and state always give the same key."""
    return ":".join(["memhub", "order", str(order.pk), operation, *(str(p) for p in parts)])


def request_fingerprint(*, pack: Pack, seats: int, organization: Organization | None) -> str:
    body = {
        "pack": str(pack.pk),
        "seats": seats,
        "organization": str(organization.pk) if organization else None,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _transition(
    order: Order, to: str, *, reason: str, event_id: str = "", amount: int = 0, fields: tuple[str, ...] = ()
) -> OrderEvent:
    """Move `order` (locked by the caller) to `to` and record the step; `to` may equal the current status
    for a step that only moves money (a renewal, a partial refund)."""
    previous = order.status
    order.status = to
    # The row was valid when locked and only these fields moved: check them, not every constraint and
    # foreign key again (a query each, on the webhook's hot path).
    order.full_clean(
        exclude=[f.name for f in Order._meta.fields if f.name not in ("status", *fields)],
        validate_unique=False,
        validate_constraints=False,
    )
    order.save(update_fields=["status", "updated_at", *fields])
    return OrderEvent.objects.create(
        order=order,
        from_status=previous,
        to_status=to,
        reason=reason[:300],
        gateway_event_id=event_id[:100],
        amount_cents=amount,
    )


def _release_seats(order: Order) -> None:
    """Give back the seats this order reserved (its checkout expired or failed, or it was refunded first)."""
    reserved = int(order.meta.get("seats_reserved") or 0)
    if not reserved:
        return
    Pack.objects.filter(pk=order.pack_id, seats_sold__gte=reserved).update(
        seats_sold=F("seats_sold") - reserved
    )
    order.meta = {**order.meta, "seats_reserved": 0}
    order.save(update_fields=["meta", "updated_at"])


def _require_org_buyer(actor: Subject, organization: Organization) -> None:
    role = actor.roles.get(organization.pk)
    if role is None:
        raise NotFound("Organization not found.")
    if role not in (Role.OWNER, Role.ADMIN):
        raise PermissionDenied(f"Only the owners and admins of '{organization.slug}' buy for it.")


def _replay(existing: Order, fingerprint: str, key: str) -> Order:
    if existing.request_sha256 != fingerprint:
        raise Conflict(
            f"Idempotency-Key '{key}' was already used for a different checkout request; "
            "send a new key for a new request.",
            {"idempotency_key": key, "order": str(existing.pk)},
            code="idempotency_key_reused",
        )
    return existing


def checkout_start(
    *,
    actor: Subject,
    pack: Pack,
    seats: int = 1,
    organization: Organization | None = None,
    idempotency_key: str = "",
) -> tuple[Order, bool]:
    """`checkout_create`, also saying whether the order is new (False: the same Idempotency-Key and
    request were seen before, and this is that order)."""
    require_marketplace(actor)
    if not actor.is_user:
        raise PermissionDenied("Only a signed-in user buys packs.")
    if pack.is_free:
        raise ApplicationError(
            f"'{pack}' is free: free packs are installed directly, without checkout.", code="free_pack"
        )
    if not pack.releases.filter(yanked=False).exists():
        # Nothing to deliver yet: selling it would take money for an install that cannot happen.
        raise ApplicationError(
            f"'{pack}' has no published release yet, so it cannot be bought.", status=409, code="not_released"
        )
    if not 1 <= seats <= MAX_SEATS_PER_ORDER:
        raise ApplicationError(f"seats must be between 1 and {MAX_SEATS_PER_ORDER}.", code="invalid_seats")
    if len(idempotency_key) > MAX_IDEMPOTENCY_KEY:
        raise ApplicationError(
            f"The Idempotency-Key header is longer than {MAX_IDEMPOTENCY_KEY} characters.",
            code="invalid_idempotency_key",
        )
    if organization is not None:
        _require_org_buyer(actor, organization)
    user = actor.user
    fingerprint = request_fingerprint(pack=pack, seats=seats, organization=organization)
    if idempotency_key:
        existing = Order.objects.filter(buyer=user, idempotency_key=idempotency_key).first()
        if existing is not None:
            return _replay(existing, fingerprint, idempotency_key), False
    gateway = get_gateway()
    bps = fee_bps(pack)
    amount = pack.price_cents * seats
    try:
        with transaction.atomic():
            # The pack row is the seat counter: concurrent checkouts queue here, so no more seats are
            # reserved than the listing has on sale.
            locked = Pack.objects.select_for_update().get(pk=pack.pk)
            needed = seats * max(1, locked.seats)
            if locked.seat_limit is not None:
                left = locked.seat_limit - locked.seats_sold
                if needed > left:
                    raise Conflict(
                        f"'{pack}' is sold out: {max(0, left)} of {locked.seat_limit} seats are left and "
                        f"this order needs {needed}.",
                        {"seats_left": max(0, left), "seat_limit": locked.seat_limit},
                        code="sold_out",
                    )
                Pack.objects.filter(pk=locked.pk).update(seats_sold=F("seats_sold") + needed)
            order = Order(
                pack=locked,
                buyer=user,
                buyer_org=organization,
                status=OrderStatus.CREATED,
                gateway=gateway.name,
                price_model=locked.price_model,
                seats=seats,
                amount_cents=amount,
                currency=locked.currency,
                fee_cents=amount * bps // 10_000,
                idempotency_key=idempotency_key,
                request_sha256=fingerprint,
                meta={
                    "fee_bps": bps,
                    "seats_reserved": needed if locked.seat_limit is not None else 0,
                    "destination": pack.publisher.payout_account_id,
                },
            )
            order.full_clean()
            order.save()
            OrderEvent.objects.create(
                order=order, from_status="", to_status=OrderStatus.CREATED, reason="checkout"
            )
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key created the order first (our reservation
        # rolled back with the failed insert).
        existing = Order.objects.filter(buyer=user, idempotency_key=idempotency_key).first()
        if existing is None:
            raise
        return _replay(existing, fingerprint, idempotency_key), False

    site = settings.MEMHUB_SITE_URL.rstrip("/")
    request = CheckoutRequest(
        order_id=str(order.pk),
        mode="payment" if pack.price_model == PriceModel.ONE_TIME else "subscription",
        price_model=pack.price_model,
        product_name=f"{pack.title} ({pack})",
        # Metered: a monthly subscription of no base price; usage is billed as invoice items.
        unit_amount_cents=0 if pack.price_model == PriceModel.METERED else pack.price_cents,
        quantity=seats,
        currency=pack.currency,
        fee_bps=bps,
        fee_cents=order.fee_cents,
        destination_account=pack.publisher.payout_account_id,
        success_url=f"{site}/marketplace/orders/{order.pk}?checkout=success",
        cancel_url=f"{site}/marketplace/orders/{order.pk}?checkout=cancelled",
        idempotency_key=idempotency_key_for_checkout(order),
        customer_email=getattr(user, "email", "") or "",
        metadata={"pack": str(pack)},
    )
    try:
        session = gateway.checkout_create(request)
    except GatewayError as exc:
        with transaction.atomic():
            order = Order.objects.select_for_update().get(pk=order.pk)
            if order.status in _OPEN:
                _release_seats(order)
                _transition(order, OrderStatus.FAILED, reason=f"checkout could not start: {exc.message}")
        raise
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=order.pk)
        order.checkout_session_id = session.id
        order.checkout_url = session.url
        order.save(update_fields=["checkout_session_id", "checkout_url", "updated_at"])
        if order.status == OrderStatus.CREATED:
            _transition(order, OrderStatus.PENDING, reason=f"checkout session {session.id} opened")
        audit_record(
            actor=actor,
            operation="order.checkout",
            object_type="order",
            object_ids=[str(order.pk)],
            details={"pack": str(pack), "seats": seats, "amount_cents": amount, "gateway": gateway.name},
        )
    return order, True


def idempotency_key_for_checkout(order: Order) -> str:
    return idempotency_key(order, "checkout")


def checkout_create(
    *,
    actor: Subject,
    pack: Pack,
    seats: int = 1,
    organization: Organization | None = None,
    idempotency_key: str = "",
) -> Order:
    """Start buying a paid pack: reserve its seats (409 when sold out), create the order and open a
    checkout session at the instance's gateway. The licence comes later, from the verified webhook."""
    return checkout_start(
        actor=actor, pack=pack, seats=seats, organization=organization, idempotency_key=idempotency_key
    )[0]


# --- what verified webhook events do (the caller holds the order's row lock) ----------------------------


def order_locked(order_id: str) -> Order | None:
    try:
        pk = uuid.UUID(str(order_id))
    except ValueError:  # a malformed id in an object's metadata is not one of our orders
        return None
    return (
        Order.objects.select_for_update(of=("self",))
        .select_related("pack__publisher", "buyer", "buyer_org")
        .filter(pk=pk)
        .first()
    )


def _grant(order: Order, *, reason: str) -> Licence:
    from marketplace.services.licences import licence_grant

    # The caller (the webhook path, reconcile) holds the order's row lock and read it under that lock.
    if order.buyer_org_id is not None:
        licence = licence_grant(
            pack=order.pack, holder_org=order.buyer_org, order=order, reason=reason, order_is_locked=True
        )
    else:
        licence = licence_grant(
            pack=order.pack, holder_user=order.buyer, order=order, reason=reason, order_is_locked=True
        )
    order.licence = licence
    if order.subscription_id and not licence.gateway_subscription_id:
        Licence.objects.filter(pk=licence.pk).update(gateway_subscription_id=order.subscription_id)
    return licence


def _paid(order: Order, *, amount: int, event_id: str, reason: str) -> str:
    """The money arrived: PAID, and the licence (idempotent per order)."""
    if order.status == OrderStatus.PAID and order.licence_id is not None:
        return "already paid"
    if order.status in (OrderStatus.REFUNDED, OrderStatus.DISPUTED):
        # The refund (or dispute) overtook the payment's own event: book the money, grant nothing.
        _transition(
            order,
            order.status,
            reason=f"{reason}, after its {order.status}: no licence",
            event_id=event_id,
            amount=amount,
        )
        return f"paid after {order.status}: no licence"
    fields = ("payment_intent_id", "subscription_id", "meta")
    if order.status != OrderStatus.PAID:
        _transition(order, OrderStatus.PAID, reason=reason, event_id=event_id, amount=amount, fields=fields)
    else:
        order.save(update_fields=["updated_at", *fields])
    _grant(order, reason=f"order {order.pk} paid")
    return "paid: licence granted"


def order_apply_session(order: Order, session: CheckoutSession, *, event_type: str, event_id: str) -> str:
    """A checkout session event, acted on by the session's state as re-read from the gateway."""
    if session.payment_intent_id and not order.payment_intent_id:
        order.payment_intent_id = session.payment_intent_id
    if session.subscription_id and not order.subscription_id:
        order.subscription_id = session.subscription_id
    if session.customer_id:
        order.meta = {**order.meta, "customer_id": session.customer_id}
    if session.paid:
        return _paid(
            order,
            amount=session.amount_total,
            event_id=event_id,
            reason=f"checkout session {session.id} paid",
        )
    if session.status == "expired":
        if order.status not in _OPEN:
            return f"session expired; order is {order.status}"
        _release_seats(order)
        _transition(
            order, OrderStatus.CANCELLED, reason=f"checkout session {session.id} expired", event_id=event_id
        )
        return "expired: seats released"
    if session.status == "complete":  # completed, but an async payment has not settled
        if order.status not in _OPEN:
            return f"unpaid session; order is {order.status}"
        if event_type == "checkout.session.async_payment_failed":
            _release_seats(order)
            _transition(
                order,
                OrderStatus.FAILED,
                reason=f"payment for session {session.id} failed",
                event_id=event_id,
                fields=("payment_intent_id", "subscription_id", "meta"),
            )
            return "payment failed: seats released"
        _transition(
            order,
            OrderStatus.PENDING,
            reason=f"session {session.id} completed, payment pending",
            event_id=event_id,
            fields=("payment_intent_id", "subscription_id", "meta"),
        )
        return "pending: awaiting async payment"
    return f"session is {session.status}: nothing to do"


def order_apply_invoice(order: Order, invoice: InvoiceState, *, event_type: str, event_id: str) -> str:
    """`invoice.paid` (first payment or renewal) and `invoice.payment_failed`, by the re-read invoice."""
    from marketplace.services.licences import licence_past_due, licence_renew

    seen = list(order.meta.get("invoices_paid") or [])
    if invoice.subscription_id and not order.subscription_id:
        order.subscription_id = invoice.subscription_id
    if event_type == "invoice.payment_failed" and invoice.status != "paid":
        licence = order.licence
        if licence is None:
            return "payment failed before any licence: nothing to suspend"
        grace = timezone.now() + dt.timedelta(days=settings.MEMHUB_PAYMENT_GRACE_DAYS)
        licence_past_due(licence=licence, grace_until=grace, reason=f"invoice {invoice.id} payment failed")
        _transition(
            order,
            order.status,
            reason=f"invoice {invoice.id} payment failed; grace until {grace:%Y-%m-%d}",
            event_id=event_id,
            fields=("subscription_id",),
        )
        return "past due"
    if invoice.status != "paid":
        return f"invoice is {invoice.status}: nothing to do"
    if invoice.id in seen:
        return "invoice already booked"
    order.meta = {**order.meta, "invoices_paid": [*seen, invoice.id]}
    if invoice.payment_intent_id:
        order.payment_intent_id = invoice.payment_intent_id  # refunds go against the latest payment
    if order.licence_id is None or order.status != OrderStatus.PAID:
        # The first invoice may overtake checkout.session.completed: it proves the payment as well.
        return _paid(
            order, amount=invoice.amount_paid, event_id=event_id, reason=f"invoice {invoice.id} paid"
        )
    if invoice.billing_reason == "subscription_create":
        order.save(update_fields=["meta", "payment_intent_id", "subscription_id", "updated_at"])
        return "first invoice: already booked with the checkout"
    _transition(
        order,
        OrderStatus.PAID,
        reason=f"renewal: invoice {invoice.id} paid",
        event_id=event_id,
        amount=invoice.amount_paid,
        fields=("meta", "payment_intent_id", "subscription_id"),
    )
    licence = order.licence
    assert licence is not None
    try:
        licence_renew(licence=licence, until=invoice.period_end, reason=f"invoice {invoice.id} paid")
    except Conflict:
        return f"renewal paid but the licence was {licence.status}: not renewed"
    return "renewed"


def _cancel_subscription_later(order: Order) -> None:
    if order.subscription_id:
        from marketplace.tasks.payments import subscription_cancel

        order_id = str(order.pk)
        transaction.on_commit(lambda: subscription_cancel.delay(order_id))


def _end_licence(order: Order, status: str, reason: str) -> None:
    from marketplace.services.licences import licence_end

    licence = order.licence
    if licence is not None and licence.status not in _FINAL_LICENCE:
        licence_end(licence=licence, status=status, reason=reason)


def order_apply_charge(order: Order, charge: PaymentState, *, event_id: str) -> str:
    """`charge.refunded`: book what the charge's refunded total grew by; a full refund ends the licence."""
    by_charge = dict(order.meta.get("refunded_by_charge") or {})
    delta = charge.amount_refunded - int(by_charge.get(charge.id, 0))
    if delta <= 0:
        return "refund already booked"
    by_charge[charge.id] = charge.amount_refunded
    order.meta = {**order.meta, "refunded_by_charge": by_charge}
    order.refunded_cents += delta
    full = charge.amount_refunded >= charge.amount
    fields = ("meta", "refunded_cents")
    if not full:
        _transition(
            order,
            order.status,
            reason=f"partial refund on {charge.id}",
            event_id=event_id,
            amount=-delta,
            fields=fields,
        )
        return "partial refund booked"
    was = order.status
    if was in _OPEN:
        _release_seats(order)
    _transition(
        order,
        OrderStatus.REFUNDED,
        reason=f"charge {charge.id} refunded",
        event_id=event_id,
        amount=-delta,
        fields=fields,
    )
    _end_licence(order, LicenceStatus.REFUNDED, f"order {order.pk} refunded")
    _cancel_subscription_later(order)
    return "refunded: licence ended"


def order_apply_dispute(order: Order, dispute: DisputeState, *, event_id: str) -> str:
    if order.status == OrderStatus.DISPUTED:
        return "already disputed"
    if order.status in _OPEN:
        _release_seats(order)
    # The card network withdraws the disputed amount when the dispute opens (it comes back if won).
    withdrawn = min(dispute.amount, max(0, paid_cents(order) - order.refunded_cents))
    _transition(
        order,
        OrderStatus.DISPUTED,
        reason=f"dispute {dispute.id} ({dispute.reason or 'no reason'})",
        event_id=event_id,
        amount=-withdrawn,
    )
    _end_licence(order, LicenceStatus.REVOKED, f"payment for order {order.pk} disputed")
    _cancel_subscription_later(order)
    return "disputed: licence revoked"


def order_apply_subscription(order: Order, sub: SubscriptionState, *, event_id: str) -> str:
    """`customer.subscription.deleted`: the subscription (re-read) is cancelled, and so is the licence."""
    if sub.status != "canceled":
        return f"subscription is {sub.status}: nothing to do"
    if order.status in (
        OrderStatus.CANCELLED,
        OrderStatus.REFUNDED,
        OrderStatus.DISPUTED,
        OrderStatus.FAILED,
    ):
        return f"order already {order.status}"
    if order.status in _OPEN:
        _release_seats(order)
    _transition(order, OrderStatus.CANCELLED, reason=f"subscription {sub.id} cancelled", event_id=event_id)
    _end_licence(order, LicenceStatus.CANCELLED, f"subscription {sub.id} cancelled")
    return "cancelled: licence ended"


# --- refunds, cancellation, metered usage ---------------------------------------------------------------


def paid_cents(order: Order) -> int:
    return sum(e.amount_cents for e in order.events.all() if e.amount_cents > 0)


def _can_refund(actor: Subject, order: Order) -> bool:
    if actor.kind == SubjectKind.SYSTEM:
        return True
    if actor.is_user and actor.user.is_staff:
        return True
    return publisher_role(actor=actor, publisher=order.pack.publisher) == PublisherRole.OWNER


@transaction.atomic
def order_refund(*, actor: Subject, order: Order, amount_cents: int | None = None) -> Order:
    """Refund a paid order, fully (default) or in part, at its gateway. A full refund ends the licence
    (through the same path as the gateway's `charge.refunded`). Publisher owners and staff only."""
    require_marketplace(actor)
    if not _can_refund(actor, order):
        raise PermissionDenied(
            f"Only the owners of publisher '{order.pack.publisher.slug}' refund its orders."
        )
    order = Order.objects.select_for_update().select_related("pack__publisher").get(pk=order.pk)
    if order.status != OrderStatus.PAID or not order.payment_intent_id:
        raise Conflict(
            f"Order {order.pk} is {order.status}; only a paid order can be refunded.", code="not_refundable"
        )
    left = paid_cents(order) - order.refunded_cents
    amount = left if amount_cents is None else amount_cents
    if amount <= 0 or amount > left:
        raise ApplicationError(
            f"amount_cents {amount} is more than the {left} paid and not yet refunded on order {order.pk}.",
            {"refundable_cents": left},
            code="refund_too_large",
        )
    gateway = get_gateway(order.gateway)
    result = gateway.refund_create(
        payment_intent_id=order.payment_intent_id,
        amount_cents=amount,
        idempotency_key=idempotency_key(order, "refund", order.refunded_cents, amount),
        order_id=str(order.pk),
        reverse_transfer=bool(order.meta.get("destination")),
    )
    audit_record(
        actor=actor,
        operation="order.refund",
        namespace=order.pack.publisher.namespace,
        object_type="order",
        object_ids=[str(order.pk)],
        details={"amount_cents": amount, "refund": result.id, "gateway": gateway.name},
    )
    order.refresh_from_db()
    if result.charge_id and result.status in ("succeeded", "pending"):
        # Book it now from the gateway's own record; the charge.refunded webhook then finds it booked.
        charge = gateway.charge_retrieve(result.charge_id)
        order_apply_charge(order, charge, event_id="")
    order.refresh_from_db()
    return order


def subscription_cancel(*, order_id: str) -> str:
    """Cancel an order's subscription at its gateway (after a refund or dispute). Idempotent: the same
    key every time, and a cancelled subscription stays cancelled."""
    order = Order.objects.filter(pk=order_id).first()
    if order is None or not order.subscription_id:
        return "no subscription"
    state = get_gateway(order.gateway).subscription_cancel(
        order.subscription_id, idempotency_key=idempotency_key(order, "subscription-cancel")
    )
    return state.status


@transaction.atomic
def metered_usage_report(*, order: Order) -> int:
    """Bill a metered subscription's retrievals not billed yet, per started 1,000, as an item on the
    subscription's next invoice. Returns the amount billed (cents). Idempotent: the rows' `billed_units`
    move with the gateway call, whose key names the units billed."""
    order = Order.objects.select_for_update().select_related("pack").get(pk=order.pk)
    if order.price_model != PriceModel.METERED or order.licence_id is None or not order.subscription_id:
        return 0
    rows = list(
        LicenceUsage.objects.select_for_update().filter(licence_id=order.licence_id).order_by("period_start")
    )
    units = {r.pk: math.ceil(r.retrievals / 1000) - r.billed_units for r in rows}
    total = sum(u for u in units.values() if u > 0)
    if total <= 0:
        return 0
    already = sum(r.billed_units for r in rows)
    amount = total * order.pack.price_cents
    get_gateway(order.gateway).usage_bill(
        subscription_id=order.subscription_id,
        customer_id=str(order.meta.get("customer_id") or ""),
        amount_cents=amount,
        currency=order.currency,
        description=f"{order.pack}: {total} x 1,000 retrievals",
        idempotency_key=idempotency_key(order, "usage", already, total),
    )
    for r in rows:
        if units[r.pk] > 0:
            r.billed_units += units[r.pk]
            r.save(update_fields=["billed_units", "updated_at"])
    order.meta = {**order.meta, "usage_billed_cents": int(order.meta.get("usage_billed_cents") or 0) + amount}
    order.save(update_fields=["meta", "updated_at"])
    return amount


def checkout_reconcile(*, order_id: str) -> str:
    """Re-read an open order's checkout session and act on its state, as its webhook would have (for a
    lost webhook). Safe to repeat: the same transitions are idempotent."""
    order = Order.objects.filter(pk=order_id).first()
    if order is None or order.status not in _OPEN or not order.checkout_session_id:
        return "nothing to reconcile"
    session = get_gateway(order.gateway).checkout_retrieve(order.checkout_session_id)
    with transaction.atomic():
        locked = order_locked(str(order.pk))
        if locked is None:
            return "order gone"
        return order_apply_session(locked, session, event_type="reconcile", event_id="")


def checkout_reconcile_stale(*, older_than_hours: int = 25) -> int:
    cutoff = timezone.now() - dt.timedelta(hours=older_than_hours)
    ids = list(
        Order.objects.filter(status__in=_OPEN, created_at__lt=cutoff).values_list("pk", flat=True)[:500]
    )
    for pk in ids:
        checkout_reconcile(order_id=str(pk))
    return len(ids)


LEDGER_ACTIONS = ("pay", "pay_async", "settle", "fail", "expire", "renew", "renew_fail", "dispute")


def ledger_order_action(*, actor: Subject, order_id: Any, action: str) -> Order:
    """What a buyer does at the built-in test ledger's checkout (pay, fail, ...) or later (a renewal, a
    dispute): the ledger changes its own objects and delivers the signed events to our webhook path, as a
    real gateway would. Only the order's buyer, only for ledger orders (404 otherwise)."""
    from marketplace.payments import ledger
    from marketplace.selectors.orders import order_get

    if action not in LEDGER_ACTIONS:
        raise ApplicationError(
            f"Unknown ledger action '{action}'; expected one of {', '.join(LEDGER_ACTIONS)}.",
            extra={"field": "action"},
        )
    order = order_get(actor=actor, order_id=order_id)
    if order.gateway != "ledger" or not actor.is_user or order.buyer_id != actor.user.pk:
        raise NotFound("Order not found.")
    if action in ("pay", "pay_async", "settle", "fail", "expire") and not order.checkout_session_id:
        raise ApplicationError("The order has no checkout session.", status=409, code="no_session")
    if action == "pay":
        ledger.ledger_session_pay(order.checkout_session_id)
    elif action == "pay_async":
        ledger.ledger_session_pay(order.checkout_session_id, async_payment=True)
    elif action == "settle":
        ledger.ledger_session_settle(order.checkout_session_id, succeed=True)
    elif action == "fail":
        ledger.ledger_session_settle(order.checkout_session_id, succeed=False)
    elif action == "expire":
        ledger.ledger_session_expire(order.checkout_session_id)
    elif action in ("renew", "renew_fail"):
        if not order.subscription_id:
            raise ApplicationError("The order has no subscription.", status=409, code="no_subscription")
        metered_usage_report(order=order)
        ledger.ledger_subscription_renew(order.subscription_id, paid=action == "renew")
    else:
        if not order.payment_intent_id:
            raise ApplicationError("The order has no payment to dispute.", status=409, code="no_payment")
        ledger.ledger_dispute(order.payment_intent_id)
    return order_get(actor=actor, order_id=order_id)
