"""Reads: licences a caller holds (their own and their organizations'), seats, usage per period."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Q, QuerySet

from core.errors import NotFound
from governance.policy import Subject
from marketplace.models import Licence, LicenceUsage, SeatAssignment
from marketplace.services.common import require_marketplace
from marketplace.services.metering import period_start, usage_for_period


def licences_visible(*, actor: Subject) -> QuerySet[Licence]:
    """The caller's own licences and those of every organization they belong to, newest first."""
    require_marketplace(actor)
    if not actor.is_user:
        return Licence.objects.none()
    return (
        Licence.objects.filter(Q(holder_user=actor.user) | Q(holder_org_id__in=list(actor.roles)))
        .select_related("pack__publisher", "holder_user", "holder_org")
        .annotate(seats_assigned=Count("seat_assignments"))
        .order_by("-created_at", "id")
    )


def licence_get(*, actor: Subject, licence_id: Any) -> Licence:
    """One licence of the caller's (or their organization's); anyone else's is a 404."""
    licence = licences_visible(actor=actor).filter(pk=licence_id).first()
    if licence is None:
        raise NotFound("Licence not found.")
    return licence


def seat_list(*, licence: Licence) -> QuerySet[SeatAssignment]:
    return licence.seat_assignments.select_related("user", "assigned_by").order_by("created_at", "id")


def usage_list(*, licence: Licence) -> list[LicenceUsage]:
    """Every period with use, newest first, the current period always included (zero if unused)."""
    rows = list(licence.usage.order_by("-period_start"))
    current = period_start()
    if not rows or rows[0].period_start != current:
        rows.insert(0, usage_for_period(licence=licence, period=current))
    return rows
