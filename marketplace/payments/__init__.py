"""Payment gateways behind one interface (`gateway.py`): Stripe and the built-in test ledger.

`get_gateway()` answers the instance's gateway (`settings.MEMHUB_PAYMENT_GATEWAY`); `get_gateway(name)` a
named one (an order keeps the gateway it was created with, so webhooks re-read from that one).
"""

from __future__ import annotations

from django.conf import settings

from marketplace.payments.gateway import GatewayError, PaymentGateway

GATEWAYS = ("stripe", "ledger")


def get_gateway(name: str | None = None) -> PaymentGateway:
    name = name or settings.MEMHUB_PAYMENT_GATEWAY
    if name == "ledger":
        from marketplace.payments.ledger import LedgerGateway

        return LedgerGateway()
    if name == "stripe":
        from marketplace.payments.stripe_gateway import StripeGateway

        return StripeGateway()
    raise GatewayError(f"Unknown payment gateway '{name}'. Known: {', '.join(GATEWAYS)}.", status=500)


__all__ = ["GATEWAYS", "GatewayError", "PaymentGateway", "get_gateway"]
