"""A feed as server-sent events through a real ASGI server (uvicorn on loopback, in a thread):
replay after `since` / `Last-Event-ID`, then live; the errors a client can get."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn

from accounts import services as account_services
from feeds.models import FeedEntry

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]


@dataclass
class Event:
    id: str = ""
    event: str = ""
    data: str = ""
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def document(self) -> dict[str, Any]:
        return json.loads(self.data)


def sse_events(response: httpx.Response) -> Iterator[Event]:
    """A small parser of the text/event-stream format (what EventSource does), one event per blank line;
    comment-only blocks come through as events without data."""
    current = Event()
    for line in response.iter_lines():
        if line == "":
            yield current
            current = Event()
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "":
            current.comments.append(value)
        elif name == "id":
            current.id = value
        elif name == "event":
            current.event = value
        elif name == "data":
            current.data = f"{current.data}\n{value}" if current.data else value
        elif name == "retry":
            current.retry = int(value)


def next_entries(events: Iterator[Event], n: int) -> list[Event]:
    got: list[Event] = []
    for event in events:
        if event.data:
            got.append(event)
            if len(got) == n:
                break
    return got


@pytest.fixture
def server(transactional_db: Any) -> Iterator[str]:
    """config.asgi.application under uvicorn on a free loopback port."""
    from config.asgi import application

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    config = uvicorn.Config(application, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=15)


@pytest.fixture
def token_of() -> Any:
    def make(user: Any, scopes: list[str] | None = None) -> str:
        _, raw = account_services.api_token_create(user=user, name="sse", scopes=scopes or ["feeds"])
        return raw

    return make


def stream(
    client: httpx.Client, server: str, feed_id: Any, token: str, *, since: Any = None, last_event_id: str = ""
) -> Any:
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    params = {} if since is None else {"since": since}
    return client.stream("GET", f"{server}/api/v1/feeds/{feed_id}/events", params=params, headers=headers)


def test_reconnecting_with_last_event_id_gets_the_50_missed_entries_in_order_then_live(
    server, feed_world, token_of
):
    token = token_of(feed_world.subscriber)
    feed_world.feed.refresh_from_db()
    start = feed_world.feed.last_seq
    with httpx.Client(timeout=httpx.Timeout(20.0)) as client:
        # Given a subscriber following from `since`, who receives one entry live
        with stream(client, server, feed_world.feed.pk, token, since=start) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = sse_events(response)
            hello = next(events)
            assert hello.retry and hello.retry > 0
            first: FeedEntry = feed_world.upsert("The deposit rate rises to four percent.")
            (got,) = next_entries(events, 1)
            assert got.id == str(first.seq) == str(start + 1)
            assert got.event == "memory.upserted" and got.document["seq"] == first.seq
        # When it drops the connection and 50 entries are appended meanwhile
        missed = [feed_world.upsert(f"Tariff line {i} is now {i + 3} percent.").seq for i in range(50)]
        assert missed == list(range(first.seq + 1, first.seq + 51))
        # Then reconnecting with Last-Event-ID (the URL still says the first `since`: the header wins)
        with stream(client, server, feed_world.feed.pk, token, since=start, last_event_id=got.id) as response:
            assert response.status_code == 200
            events = sse_events(response)
            replayed = next_entries(events, 50)
            assert [int(e.id) for e in replayed] == missed
            assert [e.document["seq"] for e in replayed] == missed
            assert all(e.event == "memory.upserted" for e in replayed)
            # and then live ones, nothing twice
            live = feed_world.upsert("The deposit rate falls back to three percent.")
            (after,) = next_entries(events, 1)
            assert int(after.id) == live.seq == missed[-1] + 1


def test_the_stream_ends_after_the_maximum_and_sends_keep_alives(server, feed_world, token_of, settings):
    settings.MEMHUB_SSE_MAX_S = 2.0
    token = token_of(feed_world.subscriber)
    started = time.monotonic()
    with httpx.Client(timeout=httpx.Timeout(20.0)) as client:
        with stream(client, server, feed_world.feed.pk, token) as response:
            events = list(sse_events(response))  # returns once the server ends the stream
    assert time.monotonic() - started < 15
    assert any("keep-alive" in c for e in events for c in e.comments)
    assert not [e for e in events if e.data]  # from now: nothing was appended


def test_bad_cursors_are_400_naming_the_field(server, feed_world, token_of):
    token = token_of(feed_world.subscriber)
    with httpx.Client(timeout=10.0) as client:
        for since in ("abc", "-1", "1.5", str(2**64)):
            resp = client.get(
                f"{server}/api/v1/feeds/{feed_world.feed.pk}/events",
                params={"since": since},
                headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"},
            )
            assert resp.status_code == 400, since
            assert resp.headers["content-type"].startswith("application/json")
            assert resp.json()["error"]["extra"]["field"] == "since"
        resp = client.get(
            f"{server}/api/v1/feeds/{feed_world.feed.pk}/events",
            headers={"Authorization": f"Bearer {token}", "Last-Event-ID": "seven"},
        )
        assert resp.status_code == 400
        assert resp.json()["error"]["extra"]["field"] == "Last-Event-ID"


def test_unreadable_or_missing_feed_is_404_and_a_token_needs_the_feeds_scope(server, feed_world, token_of):
    with httpx.Client(timeout=10.0) as client:
        url = f"{server}/api/v1/feeds/{feed_world.feed.pk}/events"
        other = client.get(url, headers={"Authorization": f"Bearer {token_of(feed_world.other)}"})
        assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"
        missing = client.get(
            f"{server}/api/v1/feeds/{uuid.uuid4()}/events",
            headers={"Authorization": f"Bearer {token_of(feed_world.subscriber)}"},
        )
        assert missing.status_code == 404 and missing.json() == other.json()
        unscoped = client.get(
            url,
            headers={
                "Authorization": f"Bearer {token_of(feed_world.subscriber, ['memories:read'])}",
                "Accept": "text/event-stream",
            },
        )
        assert unscoped.status_code == 403 and unscoped.json()["error"]["extra"]["scope"] == "feeds"
        anonymous = client.get(url)
        assert anonymous.status_code == 401


def test_under_a_wsgi_server_the_stream_polls_the_log_and_ends(feed_world, api_for, settings):
    """No event loop to follow on: the same events, read by polling, until the stream's maximum."""
    settings.MEMHUB_SSE_MAX_S = 1.0
    for i in range(3):
        feed_world.upsert(f"Polled tariff {i}.")
    feed_world.feed.refresh_from_db()
    head = feed_world.feed.last_seq
    client = api_for(feed_world.subscriber, ["feeds"])
    response = client.get(
        f"/api/v1/feeds/{feed_world.feed.pk}/events", {"since": head - 3}, HTTP_ACCEPT="text/event-stream"
    )
    assert response.status_code == 200
    text = b"".join(response.streaming_content).decode()
    ids = [int(line[4:]) for line in text.splitlines() if line.startswith("id: ")]
    assert ids == [head - 2, head - 1, head]
    assert text.startswith("retry: ")
