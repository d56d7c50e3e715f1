"""Feed reads (selectors)."""

from feeds.selectors.feeds import (
    entries_after,
    feed_for_subscribing,
    feed_get,
    feed_readable,
    feeds_visible,
)
from feeds.selectors.subscriptions import (
    deliveries_of,
    subscription_get,
    subscription_manageable,
    subscriptions_of,
)

__all__ = [
    "deliveries_of",
    "entries_after",
    "feed_for_subscribing",
    "feed_get",
    "feed_readable",
    "feeds_visible",
    "subscription_get",
    "subscription_manageable",
    "subscriptions_of",
]
