"""Celery tasks: payments. Tasks take ids and call a service imported inside the body; each is idempotent
(the gateway calls they make carry keys derived from the order id and the operation)."""

from __future__ import annotations

from celery import shared_task


@shared_task(
    name="marketplace.tasks.payments.subscription_cancel",
    ignore_result=True,
    autoretry_for=(Exception,),
    retry_backoff=True,
    max_retries=8,
)
def subscription_cancel(order_id: str) -> str:
    """Cancel the order's subscription at its gateway (after a full refund or a dispute)."""
    from marketplace.services.orders import subscription_cancel as cancel

    return cancel(order_id=order_id)


@shared_task(
    name="marketplace.tasks.payments.metered_usage_report",
    ignore_result=True,
    autoretry_for=(Exception,),
    retry_backoff=True,
    max_retries=8,
)
def metered_usage_report(order_id: str) -> int:
    from marketplace.models import Order
    from marketplace.services.orders import metered_usage_report as report

    order = Order.objects.filter(pk=order_id).first()
    return report(order=order) if order is not None else 0


@shared_task(name="marketplace.tasks.payments.metered_usage_sweep", ignore_result=True)
def metered_usage_sweep() -> int:
    """Report every paid metered subscription's unbilled retrievals (run daily by beat)."""
    from marketplace.models import Order, OrderStatus, PriceModel

    ids = Order.objects.filter(
        price_model=PriceModel.METERED, status=OrderStatus.PAID, licence__isnull=False
    ).values_list("pk", flat=True)
    for pk in ids:
        metered_usage_report.delay(str(pk))
    return len(ids)


@shared_task(name="marketplace.tasks.payments.checkout_reconcile_stale", ignore_result=True)
def checkout_reconcile_stale(older_than_hours: int = 25) -> int:
    """Orders whose checkout stayed open longer than a session lives (24 h): re-read the session and act
    on it as its webhook would have, so seats of abandoned checkouts come back even if the webhook was
    lost."""
    from marketplace.services.orders import checkout_reconcile_stale as reconcile

    return reconcile(older_than_hours=older_than_hours)
