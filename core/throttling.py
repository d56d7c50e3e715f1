"""Rate limits for costly endpoints: per user and per API token, 429 with Retry-After.

Rates come from `settings.MEMHUB_THROTTLE_RATES` (read on every request, so a deployment or a test can
change them), counters from the "throttle" cache (Redis when scaled out, so every web process shares
them). A view names its bucket: `throttle_classes = throttles("chat")`.

Two counters per bucket: one per user (all their tokens and sessions together) and one per token, so a
leaked token is limited on its own and a user cannot multiply the limit by minting tokens.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.core.cache import caches
from rest_framework.throttling import BaseThrottle

_PERIODS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


def parse_rate(rate: str) -> tuple[int, int]:
    """'60/min' -> (60 requests, 60 seconds)."""
    count, _, period = rate.partition("/")
    seconds = _PERIODS.get(period.strip().lower())
    if seconds is None or not count.strip().isdigit():
        raise ValueError(f"Bad throttle rate {rate!r}; expected e.g. '60/min'.")
    return int(count), seconds


def _rate(bucket: str) -> tuple[int, int] | None:
    raw = getattr(settings, "MEMHUB_THROTTLE_RATES", {}).get(bucket)
    return parse_rate(raw) if raw else None


def hit(*, bucket: str, keys: list[str]) -> float | None:
    """Count one request against each key of `bucket`. Returns seconds to wait if any key is over its
    limit (nothing is counted then), else None. A fixed window per key: cheap, one cache round trip
    per key, and good enough for abuse limits."""
    rate = _rate(bucket)
    if rate is None:
        return None
    limit, period = rate
    cache = caches["throttle"]
    now = time.time()
    window = int(now // period)
    wait: float | None = None
    scope = getattr(settings, "MEMHUB_THROTTLE_NAMESPACE", "")  # instances sharing one Redis
    names = [f"{scope}{bucket}:{key}:{window}" for key in keys]
    counts = cache.get_many(names)
    for name in names:
        if int(counts.get(name, 0)) >= limit:
            wait = max(wait or 0.0, (window + 1) * period - now)
    if wait is not None:
        return max(1.0, wait)
    for name in names:
        if cache.add(name, 1, timeout=period + 1):
            continue
        try:
            cache.incr(name)
        except ValueError:  # expired between add and incr
            cache.set(name, 1, timeout=period + 1)
    return None


class BucketThrottle(BaseThrottle):
    bucket = ""

    def __init__(self) -> None:
        self._wait: float | None = None

    def allow_request(self, request: Any, view: Any) -> bool:
        user: Any = getattr(request, "user", None)
        if user is not None and getattr(user, "is_authenticated", False):
            keys = [f"user:{user.pk}"]
            token_pk = getattr(getattr(request, "auth", None), "pk", None)
            if token_pk is not None:
                keys.append(f"token:{token_pk}")
        else:
            keys = [f"ip:{self.get_ident(request)}"]
        self._wait = hit(bucket=self.bucket, keys=keys)
        return self._wait is None

    def wait(self) -> float | None:
        return self._wait


def throttles(bucket: str) -> list[type[BaseThrottle]]:
    """Throttle classes for a view: `throttle_classes = throttles("chat")`."""
    return [type(f"{bucket.title().replace('_', '')}Throttle", (BucketThrottle,), {"bucket": bucket})]
