"""A feed with many subscribers: WebSocket latency, webhook latency, vault apply latency, nothing lost.

    .venv/bin/python bench/feed_bench.py [--subscribers 1000] [--updates 3] [--interval 2.0] [--workers 2]
                                         [--warmup 1] [--timeout 360] [--ws-only]

Prints one JSON line:
`{"subscribers": N, "ws_ms": {"p50", "p95"}, "webhook_ms": {"p50", "p95"}, "applied_ms": {"p95"},
  "lost": 0, "duplicates": 0, ...details}`.

Set-up (not timed): a free pack of two memories, released; N subscribers, each a user who installed it
(a licence and a ready installation) and subscribed with a webhook on loopback (so each has a vault and a
webhook destination), and an API token with the `feeds` scope.

Then, as separate processes on this machine: the ASGI server (`uvicorn config.asgi:application`), Celery
worker(s) on a Redis broker (the delivery engine: webhooks and vault applies), one process holding N
WebSocket clients (`websockets`, one per subscriber, each with its own token, following from the current
head), and one HTTP server for the N webhook endpoints (one path each). Nudges cross processes through
the Redis channel layer. The bench then publishes `--updates` memory upserts, one every `--interval`
seconds, and waits until every client, endpoint and installation has every entry (or `--timeout`).

Latencies are milliseconds from the publisher's call (before the entry's transaction) to receipt by a
WebSocket client / a webhook endpoint, and to the moment an installation's `AppliedCursor` passed the
entry (sampled every 50 ms). `lost`: (client or endpoint or installation, entry) pairs not received or
applied by the end of the wait (`detail.deliveries.pending` > 0 means some were still queued: late, not
lost; raise `--timeout`); `duplicates`: pairs received more than once (webhooks are at-least-once by
contract, so a redelivery counts here too).

Its own PostgreSQL database (DATABASE_URL, default .../memhub_bench_feed, dropped first and at the end),
Redis databases 7 (channel layer) and 8 (broker) unless REDIS_URL / CELERY_BROKER_URL are set, and its
own milvus-lite server (`_common.vault_environment`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, emit, machine, percentile, vault_environment

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/memhub_bench_feed"
DEFAULT_REDIS = "redis://127.0.0.1:6379/7"
DEFAULT_BROKER = "redis://127.0.0.1:6379/8"


def _raise_nofile() -> None:
    """A thousand sockets per process: lift the soft limit on open files to the hard one."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- child: the webhook endpoints ---------------------------------------------------------------------


def child_hooks(port: int, out: str) -> int:
    received: list[tuple[str, str, int, float]] = []  # (path, webhook-id, seq, received at)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            at = time.time()
            try:
                seq = int(json.loads(body)["data"]["seq"])
            except (ValueError, KeyError, TypeError):
                seq = -1
            received.append((self.path, self.headers.get("webhook-id", ""), seq, at))
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.request_queue_size = 1024

    def dump(*_: Any) -> None:
        Path(out).write_text(json.dumps(received))
        os._exit(0)

    signal.signal(signal.SIGTERM, dump)
    server.serve_forever()
    return 0


# --- child: the WebSocket clients ---------------------------------------------------------------------


def child_ws(url: str, tokens_file: str, out: str, ready: str) -> int:
    import websockets

    tokens: list[str] = json.loads(Path(tokens_file).read_text())
    received: list[tuple[int, int, float]] = []  # (client, seq, received at)
    failures: list[str] = []
    stop = asyncio.Event()

    settled = {"connected": 0, "failed": 0}

    async def client(i: int, token: str, gate: asyncio.Semaphore) -> None:
        async with gate:
            try:
                ws = await websockets.connect(
                    url,
                    additional_headers={"Authorization": f"Bearer {token}"},
                    origin=websockets.Origin("http://127.0.0.1"),
                    open_timeout=60,
                    max_queue=None,
                    ping_interval=None,
                )
            except Exception as exc:
                settled["failed"] += 1
                failures.append(f"{i}: connect {exc!r}")
                return
            settled["connected"] += 1
        try:
            async for message in ws:
                document = json.loads(message)
                if document.get("type") == "entry":
                    received.append((i, int(document["seq"]), time.time()))
            if not stop.is_set():
                failures.append(f"{i}: closed {ws.close_code}")
        except websockets.ConnectionClosed as exc:
            if not stop.is_set():
                failures.append(f"{i}: closed {exc.rcvd.code if exc.rcvd else '?'}")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        gate = asyncio.Semaphore(50)
        tasks = [asyncio.create_task(client(i, t, gate)) for i, t in enumerate(tokens)]
        while settled["connected"] + settled["failed"] < len(tokens):
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # the last accepted sockets finish joining their feed
        Path(ready).write_text(json.dumps({"clients": settled["connected"], "failures": failures[:5]}))
        await stop.wait()
        for t in tasks:
            t.cancel()
        Path(out).write_text(json.dumps({"received": received, "failures": failures}))

    asyncio.run(main())
    return 0


# --- the bench ----------------------------------------------------------------------------------------


def _setup(n: int, hook_port: int, *, subscribe: bool = True) -> dict[str, Any]:
    from accounts import services as accounts
    from config.celery import app
    from feeds.services.log import feed_for_pack
    from feeds.services.subscriptions import subscription_create
    from governance.policy import Subject
    from marketplace.services import installs, releases, studio
    from vault.services import index_outbox_process

    app.conf.task_always_eager = True  # set-up tasks (the release's PII scan) run here
    owner = accounts.user_create(username="fbowner")
    org = accounts.organization_create(owner=owner, slug="fbpub")
    actor = Subject(user=owner)
    publisher = studio.publisher_create(actor=actor, organization=org, slug="fbpub")
    pack = studio.pack_create(actor=actor, publisher=publisher, slug="rates", title="Rates")
    studio.pack_add_memories(
        actor=actor,
        pack=pack,
        items=[
            {"text": "The standard VAT rate is twenty percent of the net price."},
            {"text": "The reduced VAT rate of five percent applies to home energy."},
        ],
    )
    release = releases.release_publish(actor=actor, pack=pack, version="1.0.0")
    index_outbox_process()
    feed = feed_for_pack(pack)
    tokens: list[str] = []
    installations: list[str] = []
    started = time.perf_counter()
    for i in range(n):
        user = accounts.user_create(username=f"fbsub{i:05d}")
        subject = Subject(user=user)
        installation = installs.pack_install(actor=subject, release=release, inline=True)
        if subscribe:
            subscription_create(
                actor=subject, feed=feed, webhook_url=f"http://127.0.0.1:{hook_port}/hook/{i}"
            )
        _, raw = accounts.api_token_create(user=user, name="bench", scopes=["feeds"])
        tokens.append(raw)
        installations.append(str(installation.pk))
    while index_outbox_process():
        pass
    setup_s = time.perf_counter() - started
    app.conf.task_always_eager = False
    feed.refresh_from_db()
    return {
        "owner": owner,
        "pack": pack,
        "feed": feed,
        "tokens": tokens,
        "installations": installations,
        "head": feed.last_seq,
        "setup_s": setup_s,
    }


def _wait_for(path: Path, seconds: float, what: str, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        for proc in procs:
            if proc.poll() is not None:
                raise SystemExit(f"{what}: a process exited early ({proc.args!r}, rc {proc.returncode})")
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not ready after {seconds:.0f} s")
        time.sleep(0.2)


def _wait_http(port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    raise SystemExit(f"nothing listens on {port} after {seconds:.0f} s")


def _stop(proc: subprocess.Popen[bytes], *, timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from django.db.models import Min

    from feeds.models import AppliedCursor, Delivery, DeliveryStatus
    from feeds.services.publish import feed_memory_upsert
    from governance.policy import Subject

    work = Path(tempfile.mkdtemp(prefix="memhub-feed-bench-"))
    hook_port, web_port = _free_port(), _free_port()
    world = _setup(args.subscribers, hook_port, subscribe=not args.ws_only)
    feed, head, n = world["feed"], world["head"], args.subscribers
    (work / "tokens.json").write_text(json.dumps(world["tokens"]))
    py = sys.executable
    me = str(Path(__file__).resolve())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs: list[subprocess.Popen[bytes]] = []
    logs = {name: open(work / f"{name}.log", "wb") for name in ("web", "worker", "hooks", "ws")}
    try:
        procs.append(
            subprocess.Popen(
                [py, me, "--child", "hooks", "--port", str(hook_port), "--out", str(work / "hooks.json")],
                env=env,
                stdout=logs["hooks"],
                stderr=subprocess.STDOUT,
                preexec_fn=_raise_nofile,
            )
        )
        procs.append(
            subprocess.Popen(
                [py, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1",
                 "--port", str(web_port), "--log-level", "warning", "--backlog", "2048"],
                cwd=REPO, env=env, stdout=logs["web"], stderr=subprocess.STDOUT, preexec_fn=_raise_nofile,
            )
        )  # fmt: skip
        worker = subprocess.Popen(
            [py, "-m", "celery", "-A", "config", "worker", "--pool=prefork", f"--concurrency={args.workers}",
             "-Q", "default", "--loglevel=WARNING", "--without-gossip", "--without-mingle"],
            cwd=REPO, env=env, stdout=logs["worker"], stderr=subprocess.STDOUT, preexec_fn=_raise_nofile,
        )  # fmt: skip
        procs.append(worker)
        _wait_http(hook_port, 30)
        _wait_http(web_port, 60)
        url = f"ws://127.0.0.1:{web_port}/ws/feeds/{feed.pk}/?cursor={head}"
        ws_proc = subprocess.Popen(
            [py, me, "--child", "ws", "--url", url, "--tokens", str(work / "tokens.json"),
             "--out", str(work / "ws.json"), "--ready", str(work / "ws.ready")],
            env=env, stdout=logs["ws"], stderr=subprocess.STDOUT, preexec_fn=_raise_nofile,
        )  # fmt: skip
        procs.append(ws_proc)
        connect_started = time.perf_counter()
        _wait_for(work / "ws.ready", 300, "websocket clients", procs)
        ws_ready = json.loads((work / "ws.ready").read_text())
        connect_s = time.perf_counter() - connect_started
        time.sleep(3.0)  # let the worker start its pool

        actor = Subject(user=world["owner"])

        def publish(i: int) -> tuple[int, float, float]:
            at = time.time()
            entry = feed_memory_upsert(
                actor=actor,
                pack=world["pack"],
                memory={
                    "text": f"Rate notice {i}: the energy VAT rate is now {5 + i} percent.",
                    "tags": ["vat"],
                },
            )
            return int(entry.seq), at, time.time()

        def all_applied(seq: int, seconds: float) -> bool:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                if AppliedCursor.objects.filter(feed=feed, seq__gte=seq).count() >= n:
                    return True
                time.sleep(0.1)
            return False

        # Warm-up (not measured): the worker loads its models, every path is taken once
        for i in range(args.warmup):
            warm_seq, _, _ = publish(1000 + i)
            if args.ws_only:
                time.sleep(3.0)
            else:
                all_applied(warm_seq, args.timeout)

        # Publish
        published: dict[int, float] = {}
        publish_ms: list[float] = []
        for i in range(args.updates):
            seq, at, done = publish(i)
            published[seq] = at
            publish_ms.append((done - at) * 1000)
            if i < args.updates - 1:
                time.sleep(args.interval)
        last_seq = max(published)

        # Wait for the vault applies (sampling the cursors), then give the streams a moment
        applied_at: dict[tuple[str, int], float] = {}
        installations = set(world["installations"])
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            now = time.time()
            for inst, seq in AppliedCursor.objects.filter(feed=feed).values_list("installation_id", "seq"):
                for s in published:
                    if s <= seq and (str(inst), s) not in applied_at:
                        applied_at[(str(inst), s)] = now
            low = AppliedCursor.objects.filter(feed=feed).aggregate(low=Min("seq"))["low"] or 0
            count = AppliedCursor.objects.filter(feed=feed, seq__gte=last_seq).count()
            pending = Delivery.objects.filter(
                destination__subscription__feed=feed, status=DeliveryStatus.PENDING
            ).count()
            if args.ws_only or (count >= len(installations) and low >= last_seq and pending == 0):
                break
            time.sleep(0.05)
        time.sleep(2.0)
        dead = Delivery.objects.filter(
            destination__subscription__feed=feed, status=DeliveryStatus.DEAD
        ).count()
        pending = Delivery.objects.filter(
            destination__subscription__feed=feed, status=DeliveryStatus.PENDING
        ).count()
    finally:
        for proc in reversed(procs):
            _stop(proc)
        for f in logs.values():
            f.close()

    ws_out = json.loads((work / "ws.json").read_text()) if (work / "ws.json").exists() else {"received": []}
    hooks_out = json.loads((work / "hooks.json").read_text()) if (work / "hooks.json").exists() else []

    def tally(pairs: list[tuple[Any, int, float]], members: int) -> tuple[list[float], int, int]:
        seen: dict[tuple[Any, int], int] = {}
        ms: list[float] = []
        for member, seq, at in pairs:
            if seq not in published:
                continue
            seen[(member, seq)] = seen.get((member, seq), 0) + 1
            if seen[(member, seq)] == 1:
                ms.append((at - published[seq]) * 1000)
        lost = members * len(published) - len(seen)
        duplicates = sum(c - 1 for c in seen.values())
        return ms, lost, duplicates

    ws_ms, ws_lost, ws_dup = tally([tuple(r) for r in ws_out["received"]], n)  # type: ignore[misc]
    hook_ms, hook_lost, hook_dup = tally(
        [(p, s, at) for p, _id, s, at in hooks_out], 0 if args.ws_only else n
    )
    applied_ms = [(at - published[s]) * 1000 for (_i, s), at in applied_at.items()]
    applied_lost = 0 if args.ws_only else len(installations) * len(published) - len(applied_at)
    return {
        "subscribers": n,
        **({"mode": "ws_only"} if args.ws_only else {}),
        "ws_ms": {"p50": round(percentile(ws_ms, 50), 1), "p95": round(percentile(ws_ms, 95), 1)},
        "webhook_ms": {"p50": round(percentile(hook_ms, 50), 1), "p95": round(percentile(hook_ms, 95), 1)},
        "applied_ms": {"p95": round(percentile(applied_ms, 95), 1)},
        "lost": ws_lost + hook_lost + applied_lost,
        "duplicates": ws_dup + hook_dup,
        "detail": {
            "updates": len(published),
            "ws": {"lost": ws_lost, "duplicates": ws_dup, "max_ms": round(max(ws_ms, default=0.0), 1),
                   "connect_s": round(connect_s, 1), "failures": (ws_out.get("failures") or [])[:5]
                   + (ws_ready.get("failures") or [])[:5]},
            "webhook": {"lost": hook_lost, "duplicates": hook_dup,
                        "max_ms": round(max(hook_ms, default=0.0), 1)},
            "applied": {"lost": applied_lost, "max_ms": round(max(applied_ms, default=0.0), 1)},
            "deliveries": {"dead": dead, "pending": pending},
            "publish_ms": {"p50": round(percentile(publish_ms, 50), 1), "max": round(max(publish_ms), 1)},
            "setup_s": round(world["setup_s"], 1),
            "workers": args.workers,
            "machine": machine(),
        },
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between updates")
    parser.add_argument("--workers", type=int, default=2, help="Celery worker processes")
    parser.add_argument("--warmup", type=int, default=1, help="updates published first, not measured")
    parser.add_argument(
        "--ws-only",
        action="store_true",
        help="diagnostic: licensed WebSocket followers but no subscriptions (no webhooks, no vault applies), "
        "which isolates the live channel from the delivery engine's load",
    )
    parser.add_argument("--timeout", type=float, default=360.0, help="seconds to wait for every apply")
    parser.add_argument("--child", choices=["hooks", "ws"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--tokens", help=argparse.SUPPRESS)
    parser.add_argument("--ready", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "hooks":
        return child_hooks(args.port, args.out)
    if args.child == "ws":
        return child_ws(args.url, args.tokens, args.out, args.ready)

    _raise_nofile()
    url = os.environ.setdefault("DATABASE_URL", DEFAULT_DB)
    os.environ.setdefault("REDIS_URL", DEFAULT_REDIS)  # the channel layer: nudges cross processes
    os.environ.setdefault("CELERY_BROKER_URL", DEFAULT_BROKER)
    os.environ["CELERY_TASK_ALWAYS_EAGER"] = "false"
    os.environ.setdefault("MEMHUB_OUTBOUND_ALLOW_PRIVATE", "true")  # the webhook endpoints are on loopback
    os.environ.setdefault("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost")
    from market_bench import _recreate_database

    _recreate_database(url)
    import redis

    redis.Redis.from_url(os.environ["CELERY_BROKER_URL"]).delete("default")  # an earlier run's leftovers
    try:
        with vault_environment(settings_module="config.settings.local", collection_prefix="bench_feed"):
            emit(run(args))
    finally:
        _recreate_database(url, drop_only=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
