"""Feed fixtures: a publisher with a released pack and its feed, a subscriber holding a licence and a
ready installation of it, and another user who holds no licence."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from accounts import services as accounts
from accounts.models import User
from feeds.models import Feed, FeedEntry, Subscription
from governance.policy import Subject
from marketplace.models import Installation, Pack, PackRelease

TEXTS = (
    "The corporate tax rate is twenty-one percent of taxable income for the current fiscal year.",
    "A refund request must be filed within ninety days of the original purchase date.",
    "The list price of the standard widget is twelve dollars and fifty cents per unit.",
)


@dataclass
class FeedWorld:
    publisher_user: User
    pack: Pack
    release: PackRelease
    feed: Feed
    subscriber: User
    installation: Installation
    other: User
    extra: dict[str, Any] = field(default_factory=dict)

    def upsert(self, text: str, **fields: Any) -> FeedEntry:
        """Publish a memory update as the publisher (a new memory, or with `provenance_id` a new version)."""
        from feeds.services.publish import feed_memory_upsert

        return feed_memory_upsert(
            actor=Subject(user=self.publisher_user), pack=self.pack, memory={"text": text, **fields}
        )

    def retract(self, provenance_id: Any, reason: str = "") -> FeedEntry:
        from feeds.services.publish import feed_memory_retract

        return feed_memory_retract(
            actor=Subject(user=self.publisher_user),
            pack=self.pack,
            provenance_id=provenance_id,
            reason=reason,
        )

    def subscribe(self, user: User | None = None, **fields: Any) -> tuple[Subscription, str | None]:
        """A subscription of `user` (default: the subscriber) to the feed, from now."""
        from feeds.services.subscriptions import subscription_create

        return subscription_create(actor=Subject(user=user or self.subscriber), feed=self.feed, **fields)


@pytest.fixture
def feed_world(make_user) -> FeedWorld:  # type: ignore[no-untyped-def]
    """`acme` (an organization publisher owned by `expert`) with the free pack `acme/facts` released as
    1.0.0 (its memories indexed), its feed, `subscriber` with the free licence and a ready installation,
    and `other` with no licence."""
    from feeds.services.log import feed_for_pack
    from marketplace import services as market
    from marketplace.services import installs
    from vault.services import index_outbox_process

    expert = make_user("expert")
    org = accounts.organization_create(owner=expert, slug="acme")
    publisher = market.publisher_create(
        actor=Subject(user=expert), organization=org, slug="acme", display_name="Acme"
    )
    pack = market.pack_create(actor=Subject(user=expert), publisher=publisher, slug="facts", title="Facts")
    market.pack_add_memories(actor=Subject(user=expert), pack=pack, items=[{"text": t} for t in TEXTS])
    release = market.release_publish(actor=Subject(user=expert), pack=pack, version="1.0.0")
    index_outbox_process()
    subscriber = make_user("subscriber")
    installation = installs.pack_install(actor=Subject(user=subscriber), release=release)
    index_outbox_process()
    other = make_user("other")
    return FeedWorld(
        publisher_user=expert,
        pack=pack,
        release=release,
        feed=feed_for_pack(pack),
        subscriber=subscriber,
        installation=installation,
        other=other,
    )


@pytest.fixture
def loopback(settings):  # type: ignore[no-untyped-def]
    """The test receivers live on 127.0.0.1: this instance must be told it may call private addresses."""
    settings.MEMHUB_OUTBOUND_ALLOW_PRIVATE = True
    return settings


@pytest.fixture
def receiver():  # type: ignore[no-untyped-def]
    """A real webhook receiver on loopback (`tests.feeds.receiver.Receiver`), closed after the test."""
    from tests.feeds.receiver import Receiver

    rx = Receiver()
    try:
        yield rx
    finally:
        rx.close()
