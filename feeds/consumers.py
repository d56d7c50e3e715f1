"""`ws/feeds/<feed id>/?cursor=N`: a feed over WebSocket, replayed from the client's cursor, then live.

The client keeps the `seq` of the last entry it received and reconnects with it as `cursor`; it gets
every later entry, in order, once (`feeds.live.feed_follow`: the log is the truth, the channel layer
only a nudge). Without a cursor it follows from now; `cursor=0` replays the whole log. The first
message, `{"type": "ready", "cursor": n}`, says where the stream starts; entries follow as
`{"type": "entry", ...entry document}`.

Who may connect: a browser session (AuthMiddlewareStack) or `Authorization: Bearer mh_...` in the
handshake, whose token needs the `feeds` scope. The handshake is accepted and then closed with a code
a client can read (a refusal before accepting reaches browsers as a bare HTTP 403):
4400 a bad cursor, 4401 not authenticated, 4403 the token lacks the `feeds` scope, 4404 no such feed
or not one the user may read (the same answer for both). A follow that ends because the user may no
longer read the feed (the licence ended) closes with 4404 as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from accounts.models import ALL_SCOPES, TokenScope
from governance.policy import Subject

logger = logging.getLogger("feeds.consumers")

CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404


def _bearer(scope: dict[str, Any]) -> str | None:
    """The raw token of an `Authorization: Bearer ...` handshake header; "" when malformed."""
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            parts = value.decode("latin-1").split()
            if len(parts) == 2 and parts[0] in ("Bearer", "Token"):
                return parts[1]
            return ""
    return None


def _token_subject(raw: str) -> Subject | int:
    """The subject a bearer token stands for, or the close code refusing it."""
    from accounts.selectors import api_token_lookup

    token = api_token_lookup(raw=raw) if raw else None
    if token is None or not token.user.is_active:
        return CLOSE_UNAUTHENTICATED
    scopes = frozenset(token.scopes or ())
    if TokenScope.FEEDS.value not in scopes:
        return CLOSE_FORBIDDEN
    return Subject(user=token.user, scopes=scopes, token_id=token.pk)


def _session_subject(user: Any) -> Subject | int:
    if user is None or not user.is_authenticated or not user.is_active:
        return CLOSE_UNAUTHENTICATED
    return Subject(user=user, scopes=frozenset(ALL_SCOPES))


def _cursor(query_string: bytes) -> int | None:
    """The `cursor` query parameter: a non-negative integer, -1 when absent (follow from now), None
    when invalid."""
    values = parse_qs(query_string.decode("latin-1")).get("cursor")
    if not values:
        return -1
    try:
        cursor = int(values[-1])
    except ValueError:
        return None
    return cursor if cursor >= 0 else None


class FeedConsumer(AsyncJsonWebsocketConsumer):
    """Thin: authenticates, then relays what `feeds.live.feed_follow` yields."""

    follower: asyncio.Task[None] | None = None
    acked: int = 0

    async def connect(self) -> None:
        await self.accept()
        cursor = _cursor(self.scope.get("query_string", b""))
        raw = _bearer(self.scope)
        if raw is not None:
            subject = await database_sync_to_async(_token_subject)(raw)
        else:
            subject = _session_subject(self.scope.get("user"))
        if isinstance(subject, int):
            await self.close(code=subject)
            return
        if cursor is None:
            await self.close(code=CLOSE_BAD_REQUEST, reason="cursor must be a non-negative integer")
            return
        from feeds.live import feed_head, viewer_open

        feed_id = str(self.scope["url_route"]["kwargs"]["feed_id"])
        viewer = await database_sync_to_async(viewer_open)(actor=subject, feed_id=feed_id)
        if viewer is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        if cursor < 0:
            cursor = await database_sync_to_async(feed_head)(feed_id=feed_id)
        # The position the stream follows from: a client that connected without a cursor learns it,
        # and anything appended from here on reaches it.
        await self.send_json({"type": "ready", "feed": feed_id, "cursor": cursor})
        self.follower = asyncio.create_task(self._relay(viewer, cursor))

    async def _relay(self, viewer: Any, cursor: int) -> None:
        from feeds.live import feed_follow

        try:
            async with contextlib.aclosing(feed_follow(viewer=viewer, cursor=cursor)) as documents:
                async for document in documents:
                    if document is not None:
                        await self.send_json({"type": "entry", **document})
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("feed follower for %s failed", viewer.feed.pk)
            with contextlib.suppress(Exception):
                await self.close(code=1011)
            return
        # The follow ended: the user may no longer read the feed.
        with contextlib.suppress(Exception):
            await self.close(code=CLOSE_NOT_FOUND)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """`{"type": "ack", "seq": n}` records how far the client has processed (optional; the
        cursor a client reconnects with is what counts). Anything else is ignored."""
        if isinstance(content, dict) and content.get("type") == "ack":
            seq = content.get("seq")
            if isinstance(seq, int) and not isinstance(seq, bool) and seq > self.acked:
                self.acked = seq

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any
    ) -> None:
        with contextlib.suppress(ValueError, TypeError):
            await super().receive(text_data=text_data, bytes_data=bytes_data, **kwargs)

    async def disconnect(self, code: int) -> None:
        if self.follower is not None:
            self.follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.follower
