"""A publisher's earnings: gross, platform fees, refunds and net, per period, from the order history.

Every money movement is an `OrderEvent` with `amount_cents` (payments and renewals positive, refunds and
disputes negative), so the report is a sum over events, dated when the money moved. The platform's fee
on a payment is the order's fee rate (`meta.fee_bps`, fixed at checkout); refunds return the fee pro
rata (refunds are created with `refund_application_fee`), so fees are reported net of that.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.utils import timezone

from core.errors import ApplicationError
from governance.policy import Subject
from marketplace.models import OrderEvent, OrderStatus, Publisher
from marketplace.services.common import require_publisher_admin

PERIODS = ("day", "month", "year", "all")


def _period_start(when: dt.datetime, period: str) -> str:
    when = timezone.localtime(when, dt.UTC)
    if period == "day":
        return when.strftime("%Y-%m-%d")
    if period == "month":
        return when.strftime("%Y-%m")
    if period == "year":
        return when.strftime("%Y")
    return "all"


def earnings_report(
    *,
    actor: Subject,
    publisher: Publisher,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    period: str = "month",
) -> dict[str, Any]:
    """Gross, fees, refunds and net per period (and in total), per currency, for the publisher's owners."""
    require_publisher_admin(actor=actor, publisher=publisher, owner=True, write=False)
    if period not in PERIODS:
        raise ApplicationError(
            f"Unknown period '{period}'. Use one of: {', '.join(PERIODS)}.", code="invalid_period"
        )
    if start is not None and end is not None and end < start:
        raise ApplicationError("'to' is before 'from'.", code="invalid_range")
    events = OrderEvent.objects.filter(order__pack__publisher=publisher).exclude(amount_cents=0)
    if start is not None:
        events = events.filter(created_at__gte=start)
    if end is not None:
        events = events.filter(created_at__lt=end)
    rows: dict[tuple[str, str], dict[str, int]] = {}
    for e in events.select_related("order").order_by("created_at", "id"):
        key = (_period_start(e.created_at, period), e.order.currency)
        row = rows.setdefault(
            key, {"gross_cents": 0, "fees_cents": 0, "refunds_cents": 0, "disputes_cents": 0, "orders": 0}
        )
        fee = round(e.amount_cents * int(e.order.meta.get("fee_bps") or 0) / 10_000)
        if e.amount_cents > 0:
            row["gross_cents"] += e.amount_cents
            row["orders"] += 1 if e.to_status == OrderStatus.PAID and e.from_status != OrderStatus.PAID else 0
        elif e.to_status == OrderStatus.DISPUTED:
            row["disputes_cents"] += -e.amount_cents
        else:
            row["refunds_cents"] += -e.amount_cents
        row["fees_cents"] += fee
    periods: list[dict[str, Any]] = []
    for (label, currency), row in sorted(rows.items()):
        net = row["gross_cents"] - row["refunds_cents"] - row["disputes_cents"] - row["fees_cents"]
        periods.append({"period": label, "currency": currency, **row, "net_cents": net})
    totals: dict[str, dict[str, int]] = {}
    for p in periods:
        t = totals.setdefault(
            p["currency"],
            {
                k: 0
                for k in (
                    "gross_cents",
                    "fees_cents",
                    "refunds_cents",
                    "disputes_cents",
                    "net_cents",
                    "orders",
                )
            },
        )
        for k in t:
            t[k] += p[k]
    return {
        "publisher": publisher.slug,
        "period": period,
        "from": start,
        "to": end,
        "periods": periods,
        "totals": [{"currency": c, **t} for c, t in sorted(totals.items())],
    }
