"""`GET /api/v1/feeds/{id}/events?since=N`: a feed as server-sent events, for clients that cannot hold
a WebSocket. Same semantics as the WebSocket (`feeds.live.feed_follow`): replay after the cursor from the
durable log, then live.

Each event is `id: <seq>`, `event: <kind>`, `data: <entry document as JSON>`. An `EventSource` that
reconnects sends the last id it saw as `Last-Event-ID`, which therefore wins over `since` (the URL it
reconnects to still carries the first `since`). Without either, the stream starts from now. The stream
ends after `MEMHUB_SSE_MAX_S` (so no server holds a connection forever; the `retry:` hint tells the
client how soon to come back) and sends a comment line as keep-alive while nothing happens, so proxies
do not cut an idle stream.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.exceptions import NotAcceptable
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request

from core.errors import ApplicationError, NotFound
from feeds.apis.base import MAX_SEQ, FeedsApi, FeedsErrorOutput, actor_of
from feeds.live import Viewer, feed_follow, feed_follow_sync, feed_head, viewer_open

RETRY_MS = 3000
KEEPALIVE_S = 15.0


class EventStreamNegotiation(DefaultContentNegotiation):
    """A request that accepts only `text/event-stream` (what `EventSource` sends) still gets in: the
    stream is a StreamingHttpResponse that no renderer touches, and errors before it are JSON in the one
    error shape."""

    def select_renderer(self, request: Any, renderers: Any, format_suffix: Any = None) -> Any:
        try:
            return super().select_renderer(request, renderers, format_suffix)
        except NotAcceptable:
            return renderers[0], renderers[0].media_type


def _seq_param(value: str, field: str) -> int:
    """A cursor from the query or a header: a non-negative integer a `seq` column can hold."""
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_SEQ:
        raise ApplicationError(
            f"{field} must be a non-negative integer (an entry's seq).",
            extra={"field": field},
            code="invalid",
        )
    return int(text)


def sse_event(document: dict[str, Any]) -> str:
    data = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    return f"id: {document['seq']}\nevent: {document['kind']}\ndata: {data}\n\n"


def _keepalive_s() -> float:
    return min(KEEPALIVE_S, max(0.5, float(settings.MEMHUB_SSE_MAX_S) / 4))


async def _async_stream(viewer: Viewer, cursor: int) -> AsyncIterator[str]:
    yield f"retry: {RETRY_MS}\n: following feed {viewer.feed.pk} after {cursor}\n\n"
    until = time.monotonic() + float(settings.MEMHUB_SSE_MAX_S)
    documents = feed_follow(viewer=viewer, cursor=cursor, until=until, idle_s=_keepalive_s())
    async with contextlib.aclosing(documents):  # a client that goes away stops following at once
        async for document in documents:
            yield ": keep-alive\n\n" if document is None else sse_event(document)


def _sync_stream(viewer: Viewer, cursor: int) -> Iterator[str]:
    yield f"retry: {RETRY_MS}\n: following feed {viewer.feed.pk} after {cursor}\n\n"
    until = time.monotonic() + float(settings.MEMHUB_SSE_MAX_S)
    for document in feed_follow_sync(viewer=viewer, cursor=cursor, until=until, idle_s=_keepalive_s()):
        yield ": keep-alive\n\n" if document is None else sse_event(document)


class FeedEventsApi(FeedsApi):
    renderer_classes = [JSONRenderer]
    content_negotiation_class = EventStreamNegotiation

    @extend_schema(
        operation_id="feeds_events",
        summary="Follow a feed as server-sent events",
        description=(
            "Replays the entries after `since` (or after the `Last-Event-ID` header, which wins: it is "
            "what a reconnecting EventSource sends), then streams new ones as they are appended. Each "
            "event: `id: <seq>`, `event: <kind>`, `data: <entry document JSON>` (memory text watermarked "
            "for you). Without a cursor the stream starts from now. The stream ends after the instance's "
            "MEMHUB_SSE_MAX_S; reconnect with Last-Event-ID to continue without a gap."
        ),
        parameters=[
            OpenApiParameter(
                "since",
                OpenApiTypes.INT,
                OpenApiParameter.QUERY,
                required=False,
                description="Replay entries with a seq above this (0: the whole log).",
            ),
            OpenApiParameter(
                "Last-Event-ID",
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                required=False,
                description="The seq of the last event received; wins over `since`.",
            ),
        ],
        responses={
            (200, "text/event-stream"): OpenApiResponse(
                response=OpenApiTypes.STR,
                description="A text/event-stream of feed entries (see the FeedEntryDocument schema).",
            ),
            **{(status, "application/json"): FeedsErrorOutput for status in (400, 401, 403, 404)},
        },
        tags=["feeds"],
    )
    def get(self, request: Request, feed_id: Any) -> StreamingHttpResponse:
        last_event_id = request.headers.get("Last-Event-ID")
        since = request.query_params.get("since")
        cursor: int | None = None
        if since is not None:
            cursor = _seq_param(since, "since")
        if last_event_id is not None and last_event_id.strip():
            cursor = _seq_param(last_event_id, "Last-Event-ID")
        viewer = viewer_open(actor=actor_of(request, "feeds.events"), feed_id=feed_id)
        if viewer is None:
            raise NotFound("Feed not found.")
        if cursor is None:
            cursor = feed_head(feed_id=viewer.feed.pk)
        stream: Iterator[str] | AsyncIterator[str]
        if isinstance(request._request, ASGIRequest):
            stream = _async_stream(viewer, cursor)
        else:  # a WSGI server has no event loop to follow on: poll the log in its thread
            stream = _sync_stream(viewer, cursor)
        response = StreamingHttpResponse(stream, content_type="text/event-stream; charset=utf-8")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # let proxies pass each event through as it comes
        return response
