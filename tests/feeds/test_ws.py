"""A feed over WebSocket: replay from the client's cursor, then live; who may connect."""

from __future__ import annotations

import json
import uuid
from importlib import import_module
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from accounts import services as account_services
from config.asgi import application

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio, pytest.mark.timeout(120)]

BASE_HEADERS = [(b"origin", b"http://localhost"), (b"host", b"localhost")]


def _session_cookie(user: Any) -> bytes:
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY

    session = import_module(settings.SESSION_ENGINE).SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    return f"sessionid={session.session_key}".encode()


async def open_ws(
    feed_id: Any, *, user: Any = None, token: str | None = None, cursor: int | str | None = None
) -> WebsocketCommunicator:
    headers = list(BASE_HEADERS)
    if user is not None:
        headers.append((b"cookie", await database_sync_to_async(_session_cookie)(user)))
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    query = "" if cursor is None else f"?cursor={cursor}"
    comm = WebsocketCommunicator(application, f"/ws/feeds/{feed_id}/{query}", headers=headers)
    connected, _ = await comm.connect(timeout=10)
    assert connected
    return comm


async def follow(feed_id: Any, **kwargs: Any) -> tuple[WebsocketCommunicator, int]:
    """A connection that the server accepted for following: (it, the cursor it follows from)."""
    comm = await open_ws(feed_id, **kwargs)
    ready = await comm.receive_json_from(timeout=10)
    assert ready["type"] == "ready", ready
    return comm, int(ready["cursor"])


async def close_code(comm: WebsocketCommunicator) -> int:
    """The code the server closed the socket with (after accepting it)."""
    message = await comm.receive_output(timeout=10)
    assert message["type"] == "websocket.close", message
    return int(message["code"])


async def receive_entries(comm: WebsocketCommunicator, n: int) -> list[dict[str, Any]]:
    return [await comm.receive_json_from(timeout=10) for _ in range(n)]


def visible_text(document: dict[str, Any]) -> str:
    """The document's data as text, without the watermark's zero-width characters."""
    from governance.watermark.normalize import is_format_char

    return "".join(c for c in json.dumps(document["data"], ensure_ascii=False) if not is_format_char(c))


async def head_of(world: Any) -> int:
    def read() -> int:
        world.feed.refresh_from_db()
        return int(world.feed.last_seq)

    return await database_sync_to_async(read)()


async def test_reconnecting_with_cursor_gets_the_50_missed_entries_in_order_then_live(feed_world):
    # Given a subscriber following the feed from now, who receives one update live
    start = await head_of(feed_world)
    comm, cursor = await follow(feed_world.feed.pk, user=feed_world.subscriber)
    assert cursor == start
    first = await database_sync_to_async(feed_world.upsert)("The VAT rate is now nineteen percent.")
    got = await comm.receive_json_from(timeout=10)
    assert got["type"] == "entry" and got["seq"] == first.seq == start + 1
    assert got["kind"] == "memory.upserted" and got["feed"] == str(feed_world.feed.pk)
    cursor = got["seq"]
    # When it disconnects and the publisher appends 50 entries meanwhile
    await comm.disconnect()

    def publish_50() -> list[int]:
        return [feed_world.upsert(f"Price list item {i} now costs {i + 10} euros.").seq for i in range(50)]

    missed = await database_sync_to_async(publish_50)()
    assert missed == list(range(cursor + 1, cursor + 51))
    # Then reconnecting with its cursor replays exactly those 50, in order
    comm, _ = await follow(feed_world.feed.pk, user=feed_world.subscriber, cursor=cursor)
    replayed = await receive_entries(comm, 50)
    assert [e["seq"] for e in replayed] == missed
    assert all(e["type"] == "entry" and e["kind"] == "memory.upserted" for e in replayed)
    assert [f"item {i} " in visible_text(e) for i, e in enumerate(replayed)] == [True] * 50
    assert await comm.receive_nothing(timeout=0.6)  # nothing twice
    # And then the live ones
    live = await database_sync_to_async(feed_world.upsert)("The VAT rate is back to twenty percent.")
    got = await comm.receive_json_from(timeout=10)
    assert got["seq"] == live.seq == cursor + 51
    assert await comm.receive_nothing(timeout=0.6)
    await comm.disconnect()


async def test_a_client_without_cursor_follows_from_now_and_cursor_zero_replays_everything(feed_world):
    for i in range(3):
        await database_sync_to_async(feed_world.upsert)(f"Old fact number {i}.")
    head = await head_of(feed_world)
    # from now: the old entries are not sent
    comm, cursor = await follow(feed_world.feed.pk, user=feed_world.subscriber)
    assert cursor == head
    assert await comm.receive_nothing(timeout=0.8)
    await comm.disconnect()
    # from the start: every entry of the log, in order
    comm, _ = await follow(feed_world.feed.pk, user=feed_world.subscriber, cursor=0)
    entries = await receive_entries(comm, head)
    assert [e["seq"] for e in entries] == list(range(1, head + 1))
    await comm.disconnect()


async def test_a_token_with_the_feeds_scope_follows_and_acks_are_accepted(feed_world):
    _, raw = await database_sync_to_async(account_services.api_token_create)(
        user=feed_world.subscriber, name="agent", scopes=["feeds"]
    )
    comm, _ = await follow(feed_world.feed.pk, token=raw)
    await comm.send_json_to({"type": "ack", "seq": 0})
    await comm.send_to(text_data="not json")  # ignored, the socket stays open
    await comm.send_json_to({"type": "something-else"})
    entry = await database_sync_to_async(feed_world.upsert)("Agents hear of this within seconds.")
    got = await comm.receive_json_from(timeout=10)
    assert got["seq"] == entry.seq
    await comm.send_json_to({"type": "ack", "seq": entry.seq})
    assert await comm.receive_nothing(timeout=0.5)
    await comm.disconnect()


async def test_refusals_close_with_a_code_the_client_can_read(feed_world):
    _, unscoped = await database_sync_to_async(account_services.api_token_create)(
        user=feed_world.subscriber, name="reader", scopes=["memories:read"]
    )
    _, other_token = await database_sync_to_async(account_services.api_token_create)(
        user=feed_world.other, name="other", scopes=["feeds"]
    )
    feed_id = feed_world.feed.pk
    # no credentials
    assert await close_code(await open_ws(feed_id)) == 4401
    # a token that does not exist
    assert await close_code(await open_ws(feed_id, token="mh_not_a_real_token")) == 4401
    # a token without the feeds scope
    assert await close_code(await open_ws(feed_id, token=unscoped)) == 4403
    # another user's feed (no licence), by session and by token; a feed that does not exist: the same
    assert await close_code(await open_ws(feed_id, user=feed_world.other)) == 4404
    assert await close_code(await open_ws(feed_id, token=other_token)) == 4404
    assert await close_code(await open_ws(uuid.uuid4(), user=feed_world.subscriber)) == 4404
    # a bad cursor
    assert await close_code(await open_ws(feed_id, user=feed_world.subscriber, cursor="-3")) == 4400
    assert await close_code(await open_ws(feed_id, user=feed_world.subscriber, cursor="ten")) == 4400


async def test_the_publisher_admin_may_follow_its_own_feed(feed_world):
    comm, _ = await follow(feed_world.feed.pk, user=feed_world.publisher_user)
    entry = await database_sync_to_async(feed_world.upsert)("Publisher watches its own feed.")
    got = await comm.receive_json_from(timeout=10)
    assert got["seq"] == entry.seq
    await comm.disconnect()
