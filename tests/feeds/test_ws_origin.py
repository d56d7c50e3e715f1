"""Who gets past the WebSocket origin check: browsers from this site (their `Origin` names an allowed
host) and agents that authenticate with a bearer token and send no `Origin`; a page on another site is
refused even when it sends a bearer header."""

from __future__ import annotations

from typing import Any

import pytest
from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator

from accounts import services as account_services
from config.routing import websocket_urlpatterns
from core.websocket import AgentAwareOriginValidator

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio, pytest.mark.timeout(60)]


def websocket_app() -> Any:
    """The WebSocket stack of `config.asgi`, built now: the origin check reads ALLOWED_HOSTS when built
    (the test settings allow every host, which lets every origin through)."""
    return AgentAwareOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))


async def handshake(feed_id: str, headers: list[tuple[bytes, bytes]]) -> tuple[bool, dict]:
    comm = WebsocketCommunicator(websocket_app(), f"/ws/feeds/{feed_id}/", headers=headers)
    connected, _ = await comm.connect(timeout=10)
    first = await comm.receive_output(timeout=10) if connected else {}
    await comm.disconnect()
    return connected, first


async def test_an_agent_with_a_bearer_token_and_no_origin_connects(feed_world, settings):
    settings.ALLOWED_HOSTS = ["localhost"]
    _, raw = await database_sync_to_async(account_services.api_token_create)(
        user=feed_world.subscriber, name="agent", scopes=["feeds"]
    )
    bearer = (b"authorization", f"Bearer {raw}".encode())
    feed = str(feed_world.feed.pk)

    connected, first = await handshake(feed, [(b"host", b"localhost"), bearer])
    assert connected and first["type"] == "websocket.send" and '"ready"' in first["text"], first
    # Without a token and without an Origin: refused at the handshake, as before.
    connected, _ = await handshake(feed, [(b"host", b"localhost")])
    assert not connected
    # A page on another site sends its Origin: refused, bearer header or not.
    connected, _ = await handshake(
        feed, [(b"host", b"localhost"), (b"origin", b"https://evil.example"), bearer]
    )
    assert not connected
    # This site's own pages pass the origin check.
    connected, first = await handshake(
        feed, [(b"host", b"localhost"), (b"origin", b"http://localhost"), bearer]
    )
    assert connected and first["type"] == "websocket.send" and '"ready"' in first["text"], first
