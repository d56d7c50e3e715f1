"""Transports: how a delivery reaches a destination of one kind, registered by kind.

A transport takes the delivery (with its destination and entry loaded) and returns an `Outcome`; it
never raises for the destination's own failures (a refused connection, a 503, a timeout): those are
outcomes. The engine (`feeds.delivery.engine`) decides what an outcome means: delivered, retry later
(with backoff, or at `retry_after_s`), dead letter, or gone (the destination asked never to be called
again: a webhook's 410).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from feeds.models import Delivery


@dataclass(frozen=True)
class Outcome:
    """`result`: "delivered" | "retry" | "dead" | "gone". `status_code`: the HTTP status when there was
    one. `retry_after_s`: when the destination said when to come back (408/429 `Retry-After`)."""

    result: str
    status_code: int | None = None
    error: str = ""
    retry_after_s: float | None = None
    response_excerpt: str = ""

    @classmethod
    def delivered(cls, status_code: int | None = None, response_excerpt: str = "") -> Outcome:
        return cls("delivered", status_code=status_code, response_excerpt=response_excerpt)


Transport = Callable[["Delivery"], Outcome]

_transports: dict[str, Transport] = {}


def register_transport(kind: str, fn: Transport) -> None:
    """Name the transport for destinations of `kind` (registering again replaces it)."""
    _transports[kind] = fn


def transport_for(kind: str) -> Transport:
    try:
        return _transports[kind]
    except KeyError:
        raise LookupError(f"No transport is registered for {kind!r} destinations.") from None
