"""The live follower under the WebSocket and SSE channels: nudges after commit only, writes that survive a
channel-layer outage, followers that poll when no nudge comes, and many followers sharing one read."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import transaction
from django.test.utils import CaptureQueriesContext

from feeds import live
from feeds.models import FeedEntry
from governance.policy import Subject

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio, pytest.mark.timeout(120)]


class Rollback(Exception):
    pass


@pytest.fixture(autouse=True)
def _fresh_cache() -> Any:
    live.cache_clear()
    yield
    live.cache_clear()


async def viewer_of(world: Any, user: Any = None) -> live.Viewer:
    viewer = await database_sync_to_async(live.viewer_open)(
        actor=Subject(user=user or world.subscriber), feed_id=world.feed.pk
    )
    assert viewer is not None
    return viewer


async def collect(viewer: live.Viewer, cursor: int, n: int, *, timeout: float = 15) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []

    async def run() -> None:
        async for document in live.feed_follow(viewer=viewer, cursor=cursor):
            assert document is not None
            got.append(document)
            if len(got) == n:
                return

    await asyncio.wait_for(run(), timeout)
    return got


async def test_a_nudge_is_sent_after_commit_and_never_for_a_rolled_back_entry(feed_world):
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(live.feed_group(feed_world.feed.pk), channel)

    def append_and_roll_back() -> None:
        with contextlib.suppress(Rollback), transaction.atomic():
            feed_world.upsert("This update is withdrawn before it commits.")
            raise Rollback

    await database_sync_to_async(append_and_roll_back)()
    entry: FeedEntry = await database_sync_to_async(feed_world.upsert)("This one commits.")
    message = await asyncio.wait_for(layer.receive(channel), 5)
    # the first nudge the group hears is the committed entry's: the rolled-back one was never announced
    assert message == {"type": live.NUDGE_TYPE, "seq": entry.seq}
    assert await database_sync_to_async(FeedEntry.objects.filter(feed=feed_world.feed).count)() == entry.seq
    await layer.group_discard(live.feed_group(feed_world.feed.pk), channel)


async def test_a_channel_layer_outage_neither_fails_the_write_nor_loses_the_entry(feed_world, settings):
    # Given a channel layer that cannot be reached (Redis on a closed port)
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]},
        }
    }
    viewer = await viewer_of(feed_world)
    start = await database_sync_to_async(live.feed_head)(feed_id=feed_world.feed.pk)
    follower = asyncio.create_task(collect(viewer, start, 2))
    await asyncio.sleep(0.3)
    # When the publisher appends (the nudge fails after commit)
    first = await database_sync_to_async(feed_world.upsert)("Written while the layer is down.")
    second = await database_sync_to_async(feed_world.upsert)("And another one.")
    # Then the writes are there and the follower finds them by polling the log
    assert live.nudge_send(feed_id=str(feed_world.feed.pk), seq=second.seq) is False
    got = await follower
    assert [d["seq"] for d in got] == [first.seq, second.seq]


async def test_without_any_channel_layer_followers_poll_the_log(feed_world, settings):
    """The embedded default's worker writes in another process: no nudge reaches the web process."""
    settings.CHANNEL_LAYERS = {}
    viewer = await viewer_of(feed_world)
    start = await database_sync_to_async(live.feed_head)(feed_id=feed_world.feed.pk)
    follower = asyncio.create_task(collect(viewer, start, 3))
    await asyncio.sleep(0.3)
    seqs = [(await database_sync_to_async(feed_world.upsert)(f"Polled fact {i}.")).seq for i in range(3)]
    got = await follower
    assert [d["seq"] for d in got] == seqs


async def test_many_followers_get_every_entry_once_in_order_from_shared_reads(feed_world):
    # Given entries already in the log and followers at different cursors
    for i in range(5):
        await database_sync_to_async(feed_world.upsert)(f"Backlog fact {i}.")
    head = await database_sync_to_async(live.feed_head)(feed_id=feed_world.feed.pk)
    viewers = [await viewer_of(feed_world) for _ in range(3)] + [
        await viewer_of(feed_world, feed_world.publisher_user)
    ]

    def capture_start() -> CaptureQueriesContext:
        from django.db import connection

        ctx = CaptureQueriesContext(connection)
        ctx.__enter__()
        return ctx

    capture = await database_sync_to_async(capture_start)()
    cursors = [head - 5, head - 2, head] * 20  # 60 followers
    tasks = [
        asyncio.create_task(collect(viewers[i % len(viewers)], cursor, head + 10 - cursor))
        for i, cursor in enumerate(cursors)
    ]
    await asyncio.sleep(0.5)
    # When ten more entries are appended
    appended = [(await database_sync_to_async(feed_world.upsert)(f"Live fact {i}.")).seq for i in range(10)]
    results = await asyncio.gather(*tasks)
    await database_sync_to_async(lambda: capture.__exit__(None, None, None))()
    # Then each follower got every entry after its cursor, in order, once
    for cursor, docs in zip(cursors, results, strict=True):
        assert [d["seq"] for d in docs] == list(range(cursor + 1, head + 11))
    assert appended == list(range(head + 1, head + 11))
    # and the follower read the log far fewer times than once per follower and entry
    entry_reads = [q for q in capture.captured_queries if 'FROM "feeds_feedentry"' in q["sql"]]
    assert len(entry_reads) < 60, len(entry_reads)


async def test_a_follower_stops_when_the_viewer_may_no_longer_read(feed_world, settings):
    settings.MEMHUB_FEED_POLL_S = 0.05
    viewer = await viewer_of(feed_world)
    start = await database_sync_to_async(live.feed_head)(feed_id=feed_world.feed.pk)

    def revoke() -> None:
        from marketplace.models import Licence, LicenceStatus

        Licence.objects.filter(holder_user=feed_world.subscriber).update(status=LicenceStatus.REVOKED)

    async def run() -> list[Any]:
        return [d async for d in live.feed_follow(viewer=viewer, cursor=start)]

    follower = asyncio.create_task(run())
    await asyncio.sleep(0.3)
    await database_sync_to_async(revoke)()
    assert await asyncio.wait_for(follower, 15) == []
