"""Subscription reads: the caller's subscriptions (their own and those of organizations they
administer), one of them (404 for anyone else's), its deliveries."""

from __future__ import annotations

import uuid
from typing import Any

from django.db.models import Q, QuerySet

from accounts.models import Role
from core.errors import NotFound
from feeds.models import Delivery, DeliveryStatus, Subscription
from governance.policy import Subject, SubjectKind


def _admin_orgs(actor: Subject) -> list[Any]:
    return [org for org, role in actor.roles.items() if role in (Role.OWNER, Role.ADMIN)]


def subscriptions_of(*, actor: Subject) -> QuerySet[Subscription]:
    """The actor's personal subscriptions and their administered organizations' subscriptions."""
    base = Subscription.objects.select_related("feed__pack__publisher", "organization", "owner_user")
    if actor.kind == SubjectKind.SYSTEM:
        return base.order_by("-created_at", "id")
    if not actor.is_user:
        return Subscription.objects.none()
    return base.filter(
        Q(owner_user=actor.user, organization__isnull=True) | Q(organization_id__in=_admin_orgs(actor))
    ).order_by("-created_at", "id")


def subscription_manageable(*, actor: Subject, subscription: Subscription) -> bool:
    """Whether the actor may see and change this subscription."""
    if actor.kind == SubjectKind.SYSTEM:
        return True
    if not actor.is_user:
        return False
    if subscription.organization_id is not None:
        return subscription.organization_id in _admin_orgs(actor)
    return subscription.owner_user_id == actor.user.pk


def subscription_get(*, actor: Subject, subscription_id: Any) -> Subscription:
    """The subscription, if it is the actor's (or their organization's); else 404."""
    try:
        pk = uuid.UUID(str(subscription_id))
    except ValueError:
        raise NotFound("Subscription not found.") from None
    sub = subscriptions_of(actor=actor).filter(pk=pk).first()
    if sub is None:
        raise NotFound("Subscription not found.")
    return sub


def deliveries_of(*, subscription: Subscription, status: str | None = None) -> QuerySet[Delivery]:
    """The subscription's deliveries, newest entry first (`status`: e.g. `dead` for the dead letters)."""
    qs = Delivery.objects.filter(destination__subscription=subscription).select_related(
        "destination", "entry"
    )
    if status:
        if status not in DeliveryStatus.values:
            from core.errors import ApplicationError

            raise ApplicationError(
                f"Unknown delivery status '{status}'; expected one of {', '.join(DeliveryStatus.values)}.",
                extra={"field": "status"},
            )
        qs = qs.filter(status=status)
    return qs.order_by("-seq", "destination__kind")
