"""Killing the Celery worker in the middle of a fan-out loses and duplicates nothing once a worker runs
again: a real worker process (`celery -A config worker`), a Redis broker, webhook receivers on loopback.

The worker shares this test's database (a transactional test: what the test writes is committed, and the
worker reaches the test database by name). The broker keys carry a prefix of this run, so parallel runs on
one Redis do not take each other's tasks. The worker is started with a short lease and a short broker
visibility timeout, so the work the killed worker held comes back within seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from django.conf import settings as django_settings
from django.db import connection
from standardwebhooks.webhooks import Webhook

from feeds.delivery.engine import deliveries_sweep
from feeds.models import Delivery, DeliveryAttempt, DeliveryStatus, Destination, DestinationKind
from tests.django_scripts import ROOT, clean_env
from tests.feeds.receiver import Receiver, Reply

DESTINATIONS = 30
ENTRIES = 3
LEASE_S = 3
VISIBILITY_TIMEOUT_S = 5


def _database_url() -> str:
    db = connection.settings_dict
    user = quote(db.get("USER") or "postgres")
    password = f":{quote(db['PASSWORD'])}" if db.get("PASSWORD") else ""
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"


def _broker_url() -> str:
    return str(getattr(django_settings, "REDIS_URL", "redis://127.0.0.1:6379/1"))


@contextmanager
def _tasks_through_redis(settings: Any, options: dict[str, Any]) -> Iterator[None]:
    """This process sends its tasks to the Redis broker too (not eagerly): the drains that the fan-out
    and the sweep send must reach the worker."""
    from config.celery import app

    # Set on Celery's own conf too: a value once written there (another test's monkeypatch undo writes
    # one back) wins over the Django settings it was configured from. Read what to restore first.
    eager = app.conf.task_always_eager
    settings.CELERY_TASK_ALWAYS_EAGER = False
    settings.CELERY_BROKER_URL = _broker_url()
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = options
    app.conf.task_always_eager = False
    app._pool = None
    app.amqp._producer_pool = None
    try:
        yield
    finally:
        app.conf.task_always_eager = eager
        app._pool = None
        app.amqp._producer_pool = None


class Workers:
    """Celery worker processes, each in its own process group so that a kill reaches its pool too."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str) -> subprocess.Popen[bytes]:
        log = self.logs / f"{name}.log"
        out = log.open("wb")
        proc = subprocess.Popen(
            [
                str(ROOT / ".venv" / "bin" / "celery"),
                "-A",
                "config",
                "worker",
                "--loglevel=INFO",
                "--pool=prefork",
                "--concurrency=4",
                "--prefetch-multiplier=1",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                f"--hostname={name}-{uuid.uuid4().hex[:6]}@%h",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        self.procs.append(proc)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            if " ready." in text:
                return proc
            if proc.poll() is not None:
                raise AssertionError(f"the worker exited ({proc.returncode}):\n{text[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"the worker did not come up:\n{log.read_text(errors='replace')[-3000:]}")

    @staticmethod
    def kill(proc: subprocess.Popen[bytes]) -> None:
        """kill -9, the main process and its pool processes."""
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)

    def kill_all(self) -> None:
        for proc in self.procs:
            try:
                self.kill(proc)
            except Exception:  # noqa: S110 - best effort in a finally; the others must still be killed
                pass


def _purge(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(_broker_url())
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _worker_env(milvus_uri: str, tmp_path: Path) -> tuple[str, dict[str, Any], dict[str, str]]:
    """A broker key prefix of this run, the transport options, and the worker's environment: this
    test's database, the Redis broker, a short lease, loopback receivers allowed."""
    prefix = f"memhub-test-worker-{uuid.uuid4().hex[:10]}:"
    options = {"visibility_timeout": VISIBILITY_TIMEOUT_S, "global_keyprefix": prefix}
    env = clean_env(
        DJANGO_SETTINGS_MODULE="config.settings.test",
        DATABASE_URL=_database_url(),
        REDIS_URL=_broker_url(),
        CELERY_BROKER_URL=_broker_url(),
        CELERY_BROKER_TRANSPORT_OPTIONS=json.dumps(options),
        CELERY_TASK_ALWAYS_EAGER="false",
        MEMHUB_OUTBOUND_ALLOW_PRIVATE="true",
        MEMHUB_DELIVERY_LEASE_S=str(LEASE_S),
        MILVUS_URI=milvus_uri,
        MEMHUB_DATA_DIR=str(tmp_path),
        MEMHUB_EMBEDDING_CACHE_DIR=str(django_settings.EMBEDDING_CACHE_DIR),
    )
    return prefix, options, env


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_killing_the_worker_mid_fan_out_loses_and_duplicates_nothing(
    settings, feed_world, milvus_uri, tmp_path
) -> None:
    settings.MEMHUB_OUTBOUND_ALLOW_PRIVATE = True
    rx = Receiver(default=Reply(200, delay=0.15))  # slow answers: the kill lands mid-fan-out
    subs = []
    for n in range(DESTINATIONS):
        sub, secret = feed_world.subscribe(webhook_url=rx.url(f"/d{n}"), apply_to_vault=False)
        subs.append((sub, secret))
    prefix, options, env = _worker_env(milvus_uri, tmp_path)
    workers = Workers(env, tmp_path)
    try:
        with _tasks_through_redis(settings, options):
            first = workers.start("first")
            # The fan-out: each entry's deliveries are committed with it and its drains go to Redis.
            entries = [feed_world.upsert(f"Fan-out entry {n}: the new rate is {n}.") for n in range(ENTRIES)]
            total = DESTINATIONS * ENTRIES
            assert Delivery.objects.count() == total

            assert rx.wait_for(lambda got: len(got) >= total // 4, timeout=60), "the worker sent nothing"
            Workers.kill(first)
            seen_at_kill = len(rx.requests)
            delivered_at_kill = Delivery.objects.filter(status=DeliveryStatus.DELIVERED).count()
            assert 0 < delivered_at_kill < total, "the kill must land in the middle of the fan-out"

            # A new worker, and the sweep (beat's safety net) once the killed worker's leases run out.
            workers.start("second")
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if Delivery.objects.filter(status=DeliveryStatus.DELIVERED).count() == total:
                    break
                deliveries_sweep()
                time.sleep(1.0)
    finally:
        workers.kill_all()
        rx.close()
        _purge(prefix)

    # Nothing lost: every entry reached every destination, and the database says so exactly once.
    assert Delivery.objects.filter(status=DeliveryStatus.DELIVERED).count() == total
    for delivery in Delivery.objects.all():
        outcomes = list(DeliveryAttempt.objects.filter(delivery=delivery).values_list("outcome", flat=True))
        assert outcomes.count("delivered") == 1, (delivery.pk, outcomes)
    # In order per destination; a redelivery (the request in flight when the worker died) carries the
    # same webhook-id, so a Standard Webhooks receiver drops it; nothing else is seen twice.
    expected = [e.seq for e in entries]
    redelivered = 0
    for n, (sub, secret) in enumerate(subs):
        got = rx.requests_to(f"/d{n}")
        dest = Destination.objects.get(subscription=sub, kind=DestinationKind.WEBHOOK)
        ids = {d.seq: f"msg_{d.pk.hex}" for d in Delivery.objects.filter(destination=dest)}
        received = []
        for request in got:
            message = Webhook(secret).verify(request.body, request.headers)
            seq = message["data"]["seq"]
            assert request.headers["webhook-id"] == ids[seq]
            received.append(seq)
        assert received == sorted(received), (n, received)
        unique = list(dict.fromkeys(received))
        assert unique == expected, (n, received)
        redelivered += len(received) - len(unique)
    # At most the requests that were in flight when the worker died (one per pool process).
    assert redelivered <= 4
    assert seen_at_kill <= total + 4


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_retries_failed_deliveries_on_its_own_in_order(
    settings, feed_world, milvus_uri, tmp_path
) -> None:
    """No sweep here: after a failure the worker plans the next drain itself, at the retry's due time."""
    settings.MEMHUB_OUTBOUND_ALLOW_PRIVATE = True
    rx = Receiver()
    rx.respond("/hook", [503, 503, Reply(429, headers={"Retry-After": "1"}), 500])
    sub, secret = feed_world.subscribe(webhook_url=rx.url("/hook"), apply_to_vault=False)
    dest = Destination.objects.get(subscription=sub, kind=DestinationKind.WEBHOOK)
    prefix, options, env = _worker_env(milvus_uri, tmp_path)
    workers = Workers(env, tmp_path)
    try:
        with _tasks_through_redis(settings, options):
            workers.start("retrying")
            entries = [feed_world.upsert(f"Retried entry {n}.") for n in range(3)]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if not Delivery.objects.filter(destination=dest, status=DeliveryStatus.PENDING).exists():
                    break
                time.sleep(0.2)
    finally:
        workers.kill_all()
        rx.close()
        _purge(prefix)
    assert set(Delivery.objects.filter(destination=dest).values_list("status", flat=True)) == {"delivered"}
    received = [Webhook(secret).verify(r.body, r.headers)["data"]["seq"] for r in rx.requests]
    first, *rest = (e.seq for e in entries)
    assert received == [first] * 5 + rest
    head = Delivery.objects.get(destination=dest, entry=entries[0])
    assert list(DeliveryAttempt.objects.filter(delivery=head).values_list("status_code", flat=True)) == [
        503,
        503,
        429,
        500,
        200,
    ]
    after_429 = rx.requests[3].at - rx.requests[2].at
    assert after_429 >= 0.9  # Retry-After: 1
