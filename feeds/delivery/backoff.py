"""How long a failing delivery, and a failing destination's circuit, wait before the next try."""

from __future__ import annotations

import random

from django.conf import settings


def retry_delay_s(attempts: int, *, retry_after_s: float | None = None) -> float:
    """Seconds until the next try after `attempts` failed ones.

    A `Retry-After` from the receiver (408/429) is honoured, up to MEMHUB_DELIVERY_RETRY_AFTER_MAX_S.
    Otherwise exponential: BASE * 2**(attempts-1), capped at MAX, with jitter (between half and all of
    it) so that the destinations an outage hit all at once do not all come back at once."""
    if retry_after_s is not None:
        return min(max(0.0, float(retry_after_s)), float(settings.MEMHUB_DELIVERY_RETRY_AFTER_MAX_S))
    base = float(settings.MEMHUB_DELIVERY_BACKOFF_BASE_S)
    cap = float(settings.MEMHUB_DELIVERY_BACKOFF_MAX_S)
    delay = min(base * 2 ** max(0, min(attempts - 1, 60)), cap)
    return delay * random.uniform(0.5, 1.0)  # jitter, not a secret


def circuit_open_s(opens: int) -> float:
    """How long the circuit stays open the `opens`-th time in a row: OPEN_S doubling, up to OPEN_MAX_S."""
    base = float(settings.MEMHUB_DELIVERY_CIRCUIT_OPEN_S)
    return min(base * 2 ** max(0, min(opens - 1, 60)), float(settings.MEMHUB_DELIVERY_CIRCUIT_OPEN_MAX_S))
