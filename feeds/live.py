"""Live feed followers (WebSocket and server-sent events): replay from a cursor, then follow the log.

The durable log (`FeedEntry`, `seq` contiguous per feed) is the truth; the channel layer only nudges.
A nudge is at-most-once and does not cross processes on the embedded default (in-memory layer, Celery
in another process), so every follower also re-reads the log every `MEMHUB_FEED_POLL_S`: a lost nudge
costs at most one poll interval, never an entry.

With a thousand followers of one feed in one process, a nudge must not turn into a thousand queries.
So per process and event loop there is one channel-layer listener per followed feed (the `_Hub`), the
feed's head (`last_seq`) is shared and refreshed by one query per poll interval, and entries read from
the database are kept in a small per-process cache by (feed, seq): one query serves every follower at
the same cursor (single flight), and each follower only watermarks the cached entry for its viewer,
which is pure Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.exceptions import SynchronousOnlyOperation
from django.db import transaction

from core.errors import NotFound
from governance.policy import Subject

logger = logging.getLogger("feeds.live")

BATCH = 100  # entries read per query (a follower far behind catches up in batches)
CACHE_MAX = 4096  # entries kept per process, all feeds together
RECHECK_POLLS = 10  # re-check the viewer's credentials and licence every this many poll intervals
NUDGE_TYPE = "feed.nudge"
GROUP_REREGISTER_S = 3600.0  # channel-layer group memberships expire (channels_redis: a day)


def poll_seconds() -> float:
    return float(getattr(settings, "MEMHUB_FEED_POLL_S", 1.0))


def feed_group(feed_id: Any) -> str:
    """The channel-layer group of a feed's nudges (group names allow only ASCII letters, digits, .-_)."""
    return f"feed.{uuid.UUID(str(feed_id)).hex}"


# --- nudges -----------------------------------------------------------------------------------------


def nudge_send(*, feed_id: str, seq: int) -> bool:
    """Tell this feed's followers that entry `seq` is committed. Never raises: the entry is in the log
    already, and followers that miss the nudge find it at their next poll."""
    try:
        layer = get_channel_layer()
        if layer is None:
            return False
        async_to_sync(layer.group_send)(feed_group(feed_id), {"type": NUDGE_TYPE, "seq": int(seq)})
        return True
    except Exception:  # a layer outage must never fail the write that made the entry
        logger.warning("feed nudge for %s#%s failed; followers will poll", feed_id, seq, exc_info=True)
        return False


def nudge_on_commit(*, feed_id: str, seq: int) -> None:
    """Nudge the feed's followers once the caller's transaction commits (a rolled-back entry never
    existed, so nobody may hear of it)."""
    transaction.on_commit(lambda: nudge_send(feed_id=str(feed_id), seq=int(seq)))


# --- the per-process view of the log ----------------------------------------------------------------

_lock = threading.Lock()
_entries: OrderedDict[tuple[str, int], Any] = OrderedDict()  # (feed id, seq) -> FeedEntry
_heads: dict[str, tuple[int, float]] = {}  # feed id -> (last_seq known committed, monotonic when read)


def _cache_put(feed_id: str, entries: list[Any]) -> None:
    with _lock:
        for entry in entries:
            _entries[(feed_id, int(entry.seq))] = entry
            _entries.move_to_end((feed_id, int(entry.seq)))
        while len(_entries) > CACHE_MAX:
            _entries.popitem(last=False)
        if entries:
            _head_raise_locked(feed_id, int(entries[-1].seq), fresh=False)


def _cache_run(feed_id: str, cursor: int, head: int) -> list[Any] | None:
    """Cached entries cursor+1..min(head, cursor+BATCH) if every one is cached, else None."""
    stop = min(head, cursor + BATCH)
    with _lock:
        run = [_entries.get((feed_id, seq)) for seq in range(cursor + 1, stop + 1)]
    if any(e is None for e in run):
        return None
    return run


def _head_raise_locked(feed_id: str, seq: int, *, fresh: bool) -> None:
    known, read_at = _heads.get(feed_id, (0, 0.0))
    _heads[feed_id] = (max(known, seq), time.monotonic() if fresh else read_at)


def head_raise(feed_id: str, seq: int) -> None:
    """Entry `seq` of the feed is committed (a nudge said so, or a query returned it)."""
    with _lock:
        _head_raise_locked(feed_id, seq, fresh=False)


def head_known(feed_id: str) -> tuple[int, float]:
    with _lock:
        return _heads.get(feed_id, (0, 0.0))


def cache_clear() -> None:
    """Forget every cached entry and head (tests: a fresh database reuses nothing)."""
    with _lock:
        _entries.clear()
        _heads.clear()
        _keys.clear()


def _read_head(feed_id: str) -> int:
    from feeds.models import Feed

    seq = Feed.objects.filter(pk=feed_id).values_list("last_seq", flat=True).first() or 0
    with _lock:
        _head_raise_locked(feed_id, int(seq), fresh=True)
    return int(seq)


def _read_entries(feed_id: str, cursor: int) -> list[Any]:
    """Entries after `cursor` from the log, each rendered once unwatermarked (and the feed's watermark
    key read) here, in the database thread, so that followers render in the event loop without a query."""
    from feeds.models import Feed
    from feeds.selectors import entries_after

    feed = Feed.objects.select_related("pack__publisher__namespace").get(pk=feed_id)
    entries = list(entries_after(feed=feed, cursor=cursor, limit=BATCH))
    for entry in entries:
        entry.feed = feed  # one Feed object for the batch, already loaded
        _base_document(entry)
    _cache_put(feed_id, entries)
    return entries


@dataclass
class _FeedFollowers:
    wakers: set[asyncio.Event] = field(default_factory=set)
    listener: asyncio.Task[None] | None = None
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)


class _Hub:
    """One event loop's followers: per feed, one channel-layer listener that wakes them all, and the
    queries in flight (so followers at the same cursor share one)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.feeds: dict[str, _FeedFollowers] = {}
        self.inflight: dict[tuple[str, Any], asyncio.Task[Any]] = {}

    async def join(self, feed_id: str, waker: asyncio.Event) -> None:
        """Follow the feed's nudges from now on (waits briefly until the group is joined, so a nudge
        sent after this returns is heard)."""
        followers = self.feeds.setdefault(feed_id, _FeedFollowers())
        followers.wakers.add(waker)
        if followers.listener is None or followers.listener.done():
            followers.subscribed = asyncio.Event()
            followers.listener = asyncio.create_task(self._listen(feed_id, followers))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(followers.subscribed.wait(), timeout=max(1.0, poll_seconds()))

    def leave(self, feed_id: str, waker: asyncio.Event) -> None:
        followers = self.feeds.get(feed_id)
        if followers is None:
            return
        followers.wakers.discard(waker)
        if not followers.wakers:
            if followers.listener is not None:
                followers.listener.cancel()
            del self.feeds[feed_id]

    async def _listen(self, feed_id: str, followers: _FeedFollowers) -> None:
        layer = get_channel_layer()
        if layer is None:
            followers.subscribed.set()  # nothing to hear: followers poll
            return
        group = feed_group(feed_id)
        while True:
            channel = ""
            try:
                channel = await layer.new_channel()
                await layer.group_add(group, channel)
                followers.subscribed.set()
                while True:
                    try:
                        message = await asyncio.wait_for(layer.receive(channel), GROUP_REREGISTER_S)
                    except TimeoutError:
                        await layer.group_add(group, channel)
                        continue
                    if message.get("type") != NUDGE_TYPE:
                        continue
                    head_raise(feed_id, int(message.get("seq") or 0))
                    for waker in list(followers.wakers):
                        waker.set()
            except asyncio.CancelledError:
                if channel:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(layer.group_discard(group, channel), 2.0)
                raise
            except Exception:  # the layer is only a nudge: followers keep polling meanwhile
                followers.subscribed.set()
                logger.warning("feed %s: channel layer listener failed; retrying", feed_id, exc_info=True)
                await asyncio.sleep(max(1.0, poll_seconds() * 5))

    async def single_flight(self, key: tuple[str, Any], fn: Callable[[], Any]) -> Any:
        """Run `fn` in the database thread once for everyone asking for `key` at the same time."""
        task = self.inflight.get(key)
        if task is None or task.done():
            task = asyncio.create_task(_off_loop(fn))
            self.inflight[key] = task
            task.add_done_callback(
                lambda t: self.inflight.pop(key, None) if self.inflight.get(key) is t else None
            )
        # shielded: one follower leaving must not cancel the query the others wait for
        return await asyncio.shield(task)


async def _off_loop(fn: Callable[[], Any]) -> Any:
    """Run a follower's database work in the thread pool rather than the one thread-sensitive thread:
    a thousand followers re-checking their licence must not queue the read that everyone waits for
    behind them (nor behind the handshakes of new connections)."""
    return await database_sync_to_async(fn, thread_sensitive=False)()


_hubs: dict[int, _Hub] = {}


def _hub() -> _Hub:
    loop = asyncio.get_running_loop()
    hub = _hubs.get(id(loop))
    if hub is None or hub.loop is not loop:
        for key, old in list(_hubs.items()):
            if old.loop.is_closed():
                del _hubs[key]
        hub = _hubs[id(loop)] = _Hub(loop)
    return hub


async def _entries_after(hub: _Hub, feed_id: str, cursor: int) -> list[Any]:
    head, _ = head_known(feed_id)
    if cursor >= head:
        return []
    cached = _cache_run(feed_id, cursor, head)
    if cached is not None:
        return cached
    return list(await hub.single_flight((feed_id, cursor), lambda: _read_entries(feed_id, cursor)))


async def _refresh_head(hub: _Hub, feed_id: str, *, max_age: float) -> int:
    head, read_at = head_known(feed_id)
    if time.monotonic() - read_at < max_age:
        return head
    return int(await hub.single_flight((feed_id, "head"), lambda: _read_head(feed_id)))


# --- viewers ----------------------------------------------------------------------------------------


@dataclass
class Viewer:
    """Who follows, and what they see: the feed and the watermark id their copies carry."""

    actor: Subject
    feed: Any
    watermark_id: str


def viewer_open(*, actor: Subject, feed_id: Any) -> Viewer | None:
    """The viewer of a feed, or None when the actor may not read it (or it does not exist: the same
    answer, so nothing leaks)."""
    from feeds.render import viewer_watermark_id
    from feeds.selectors import feed_get

    try:
        feed = feed_get(actor=actor, feed_id=feed_id)
    except NotFound:
        return None
    return Viewer(actor=actor, feed=feed, watermark_id=viewer_watermark_id(user=actor.user, pack=feed.pack))


def credentials_live(actor: Subject) -> bool:
    """Whether what the follower connected with still stands: the user is active and, for a bearer
    token, the token is neither revoked nor expired (a stream outlives neither)."""
    from django.db.models import Q
    from django.utils import timezone

    from accounts.models import ApiToken, User

    if not User.objects.filter(pk=actor.user.pk, is_active=True).exists():
        return False
    token_id = getattr(actor, "token_id", None)
    if token_id is None:
        return True
    return (
        ApiToken.objects.filter(pk=token_id, revoked_at__isnull=True)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))
        .exists()
    )


def viewer_still_reads(viewer: Viewer) -> bool:
    """Whether the viewer may still read the feed (a licence can end mid-stream); refreshes the
    watermark id (an installation may have appeared)."""
    from feeds.models import Feed
    from feeds.render import viewer_watermark_id
    from feeds.selectors import feed_readable

    if not credentials_live(viewer.actor):
        return False
    feed = Feed.objects.select_related("pack").filter(pk=viewer.feed.pk).first()
    if feed is None or not feed_readable(actor=viewer.actor, feed=feed):
        return False
    viewer.feed = feed
    viewer.watermark_id = viewer_watermark_id(user=viewer.actor.user, pack=feed.pack)
    return True


def feed_head(*, feed_id: Any) -> int:
    return _read_head(str(feed_id))


def _render(entry: Any, watermark_id: str) -> dict[str, Any]:
    from feeds.render import entry_document

    return entry_document(entry, watermark_id=watermark_id)


_keys: dict[str, bytes] = {}  # feed id -> its publisher's watermark key (never changes once made)


def _feed_key(entry: Any) -> bytes:
    """The watermark key `entry_document` would use for the entry's feed, read once per process."""
    feed_id = str(entry.feed_id)
    key = _keys.get(feed_id)
    if key is None:
        from governance.watermarking import watermark_key

        key = _keys[feed_id] = watermark_key(entry.feed.pack.publisher.namespace)
    return key


def _base_document(entry: Any) -> dict[str, Any]:
    """The entry's unwatermarked document, rendered once per process (with the feed's key loaded)."""
    doc = getattr(entry, "_live_document", None)
    if doc is None:
        from feeds.render import entry_document

        doc = entry_document(entry)
        _feed_key(entry)
        entry._live_document = doc
    return doc


def _render_cached(entry: Any, watermark_id: str) -> dict[str, Any]:
    """`entry_document(entry, watermark_id=...)` with the feed's key read once per process, so a
    thousand followers cost no database work: the per-viewer part is pure Python."""
    if not watermark_id:
        return _base_document(entry)
    from feeds.render import entry_document

    return entry_document(entry, watermark_id=watermark_id, key=_feed_key(entry))


async def _render_async(entry: Any, watermark_id: str) -> dict[str, Any]:
    try:
        return _render_cached(entry, watermark_id)
    except SynchronousOnlyOperation:  # something was not loaded after all: render in the DB thread
        return await database_sync_to_async(_render)(entry, watermark_id)


# --- the follower both channels use -----------------------------------------------------------------


async def feed_follow(
    *,
    viewer: Viewer,
    cursor: int,
    until: float | None = None,
    idle_s: float | None = None,
    joined: Callable[[], None] | None = None,
) -> AsyncGenerator[dict[str, Any] | None, None]:
    """Entries of the viewer's feed after `cursor`, rendered for the viewer, in `seq` order, each once;
    then, as they are appended, forever (or until the monotonic time `until`). Yields None after
    `idle_s` seconds without an entry (a keep-alive for the caller). Stops when the viewer may no
    longer read the feed. Joins the feed's nudges before the first read, so nothing falls between the
    replay and going live."""
    hub = _hub()
    feed_id = str(viewer.feed.pk)
    waker = asyncio.Event()
    await hub.join(feed_id, waker)
    if joined is not None:
        joined()
    poll = poll_seconds()
    last = int(cursor)
    recheck_at = time.monotonic() + poll * RECHECK_POLLS * random.uniform(0.8, 1.2)
    idle_since = time.monotonic()
    try:
        await _refresh_head(hub, feed_id, max_age=0.0)
        while True:
            batch = await _entries_after(hub, feed_id, last)
            for entry in batch:
                if entry.seq <= last:
                    continue  # never twice
                yield await _render_async(entry, viewer.watermark_id)
                last = int(entry.seq)
                idle_since = time.monotonic()
            if len(batch) >= BATCH:
                continue
            now = time.monotonic()
            if until is not None and now >= until:
                return
            timeout = poll
            if until is not None:
                timeout = min(timeout, until - now)
            if idle_s is not None:
                timeout = min(timeout, max(0.0, idle_since + idle_s - now))
            waker.clear()
            head, _ = head_known(feed_id)
            if head <= last or not batch:  # caught up (or the log has less than the head says: wait)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waker.wait(), timeout=max(0.0, timeout))
            if not waker.is_set():
                await _refresh_head(hub, feed_id, max_age=poll)
            now = time.monotonic()
            if idle_s is not None and now - idle_since >= idle_s:
                yield None
                idle_since = now
            if now >= recheck_at:
                if not await _off_loop(lambda: viewer_still_reads(viewer)):
                    return
                recheck_at = now + poll * RECHECK_POLLS * random.uniform(0.8, 1.2)
    finally:
        hub.leave(feed_id, waker)


def feed_follow_sync(
    *, viewer: Viewer, cursor: int, until: float, idle_s: float | None = None
) -> Iterator[dict[str, Any] | None]:
    """The same, for a WSGI server (no event loop, no nudges): replay, then poll the log until `until`."""
    from feeds.selectors import entries_after

    poll = poll_seconds()
    last = int(cursor)
    idle_since = time.monotonic()
    recheck_at = time.monotonic() + poll * RECHECK_POLLS
    while True:
        batch = list(entries_after(feed=viewer.feed, cursor=last, limit=BATCH))
        for entry in batch:
            if entry.seq <= last:
                continue
            yield _render(entry, viewer.watermark_id)
            last = int(entry.seq)
            idle_since = time.monotonic()
        if len(batch) >= BATCH:
            continue
        now = time.monotonic()
        if now >= until:
            return
        time.sleep(min(poll, until - now))
        now = time.monotonic()
        if idle_s is not None and now - idle_since >= idle_s:
            yield None
            idle_since = now
        if now >= recheck_at:
            if not viewer_still_reads(viewer):
                return
            recheck_at = now + poll * RECHECK_POLLS
