"""Reads of orders: a buyer's own, one with its history, and what a publisher's owners may see."""

from __future__ import annotations

import uuid

from django.db.models import QuerySet

from core.errors import NotFound
from governance.policy import Subject, SubjectKind
from marketplace.models import Order, PublisherRole
from marketplace.services.common import publisher_role, require_marketplace


def order_list(*, actor: Subject) -> QuerySet[Order]:
    """The caller's own orders, newest first."""
    require_marketplace(actor)
    if not actor.is_user:
        return Order.objects.none()
    return (
        Order.objects.filter(buyer=actor.user)
        .select_related("pack__publisher", "buyer_org", "licence")
        .order_by("-created_at", "-id")
    )


def order_visible(*, actor: Subject, order: Order) -> bool:
    if actor.kind == SubjectKind.SYSTEM:
        return True
    if not actor.is_user:
        return False
    if order.buyer_id == actor.user.pk or actor.user.is_staff:
        return True
    return publisher_role(actor=actor, publisher=order.pack.publisher) == PublisherRole.OWNER


def order_get(*, actor: Subject, order_id: str | uuid.UUID) -> Order:
    """One order with its events, for its buyer, the pack's publisher owners and staff; else 404."""
    require_marketplace(actor)
    order = (
        Order.objects.select_related("pack__publisher", "buyer_org", "licence")
        .prefetch_related("events")
        .filter(pk=order_id)
        .first()
    )
    if order is None or not order_visible(actor=actor, order=order):
        raise NotFound("Order not found.")
    return order


def ledger_order_for_session(*, actor: Subject, session_id: str) -> Order | None:
    """The caller's own test-ledger order behind a checkout session (None for anyone else's)."""
    if not actor.is_user:
        return None
    return (
        Order.objects.select_related("pack__publisher")
        .filter(gateway="ledger", checkout_session_id=session_id[:100], buyer=actor.user)
        .first()
    )
