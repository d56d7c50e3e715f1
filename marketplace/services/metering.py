"""Metering: how much of each licence was used in each period (a calendar month, UTC).

Counts only ever grow through single-statement `F()` updates on one row per licence and period, so
concurrent requests never lose an increment. Retrievals are capped at the licence's quota: the row is
locked while the grant is computed, so two requests racing for the last retrievals get them once between
them. Metered licences are billed from these rows (`billed_units` is the payments side's cursor).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from marketplace.models import Licence, LicenceUsage

COUNTERS = ("retrievals", "chats", "kv_uses", "adapter_uses")


def period_start(at: datetime | None = None) -> datetime:
    """The start of the calendar month (UTC) that `at` (default: now) falls in."""
    at = (at or timezone.now()).astimezone(UTC)
    return datetime(at.year, at.month, 1, tzinfo=UTC)


def _row(licence_id: Any, period: datetime) -> None:
    # INSERT ... ON CONFLICT DO NOTHING: the first use of a period creates its row exactly once.
    LicenceUsage.objects.bulk_create(
        [LicenceUsage(licence_id=licence_id, period_start=period)], ignore_conflicts=True
    )


def usage_retrievals(*, licence: Licence, period: datetime | None = None) -> int:
    row = LicenceUsage.objects.filter(licence=licence, period_start=period or period_start()).first()
    return row.retrievals if row else 0


def usage_add(
    *,
    licence: Licence,
    retrievals: int = 0,
    chats: int = 0,
    kv_uses: int = 0,
    adapter_uses: int = 0,
    cap: bool = True,
    at: datetime | None = None,
) -> int:
    """Count uses of `licence` in the current period; returns the retrievals granted: all of them, or
    (with `cap` and a quota) only what the quota has left, possibly 0. The other counters always count."""
    period = period_start(at)
    _row(licence.pk, period)
    rows = LicenceUsage.objects.filter(licence_id=licence.pk, period_start=period)
    granted = retrievals
    with transaction.atomic():
        if retrievals and cap and licence.quota_per_period is not None:
            used = rows.select_for_update().values_list("retrievals", flat=True).get()
            granted = max(0, min(retrievals, licence.quota_per_period - used))
        changes = {
            name: F(name) + value
            for name, value in (
                ("retrievals", granted),
                ("chats", chats),
                ("kv_uses", kv_uses),
                ("adapter_uses", adapter_uses),
            )
            if value
        }
        if changes:
            rows.update(**changes, updated_at=timezone.now())
    return granted


def usage_for_period(*, licence: Licence, period: datetime | None = None) -> LicenceUsage:
    """The period's counts (an unsaved zero row if nothing was used yet)."""
    period = period or period_start()
    row = LicenceUsage.objects.filter(licence=licence, period_start=period).first()
    return row or LicenceUsage(licence=licence, period_start=period)
