"""MemStore benchmark on PostgreSQL: webhook throughput, checkout-to-licence latency, a 10k-memory install.

    .venv/bin/python bench/market_bench.py [--events 300] [--checkouts 50] [--memories 10000]

Prints exactly one JSON object:
`{"webhook_events_per_s": ..., "checkout_to_licence_ms": {"p50": ..., "p95": ...},
  "install_10k": {"seconds": ..., "memories_per_s": ...}}`.

It creates a fresh PostgreSQL database (DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/memhub_bench_market; dropped first and again at the end) and its own
milvus-lite server (`_common.vault_environment`), with the built-in test ledger as the gateway.

- webhook_events_per_s: E buyers each open a checkout of a paid pack (not timed); the ledger's signed
  `checkout.session.completed` events are captured instead of delivered, then all E are POSTed, one after
  another, to `/api/v1/marketplace/webhooks/ledger` through the Django WSGI stack (signature check,
  dedupe row, re-read of the session, order lock, state change, licence grant, audit). E / seconds.
  The test client and middleware add a few per cent to the endpoint's own work (profiled), so this is
  the endpoint's serial processing rate; `--webhook-workers W` delivers from W threads at once.
- checkout_to_licence_ms: C buyers, each through the API with a bearer token: POST checkout, then the
  ledger's `pay` action (which signs and delivers the webhook through the same path), until the order
  has its licence. p50 / p95 of that wall time.
- install_10k: a free pack of M synthetic memories is authored, released and its publisher index built
  (not timed); then `marketplace.services.pack_install` (inline) for a buyer, the index outbox drained,
  and a search as the buyer must find an installed memory: seconds, and M / seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timer, drain_outbox, emit, percentile, vault_environment

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/memhub_bench_market"
_ADJ = "old new red small large quiet busy broken shiny cheap rare local favourite shared".split()
_NOUN = (
    "bicycle kitchen garden piano laptop invoice contract recipe camera novel workshop guitar tent".split()
)
_HOW = "oil it weekly|keep it dry|label every part|store it upright|check the seals|clean the filter".split(
    "|"
)


def _recreate_database(url: str, *, drop_only: bool = False) -> None:
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if not name.startswith("memhub_bench"):
        raise SystemExit(
            f"Refusing to drop '{name}': the benchmark database's name must start with memhub_bench."
        )
    admin = urlunsplit(parts._replace(scheme="postgresql", path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not drop_only:
            conn.execute(f'CREATE DATABASE "{name}"')


def _memory(i: int) -> str:
    return (
        f"Care note {i}: for the {_ADJ[i % len(_ADJ)]} {_NOUN[(i // 7) % len(_NOUN)]}, "
        f"{_HOW[(i // 3) % len(_HOW)]} and record code K{i:05d} in the log."
    )


def _setup_market(prefix: str) -> dict[str, Any]:
    from accounts import services as accounts
    from governance.policy import Subject
    from marketplace.models import Pack, PriceModel
    from marketplace.services import studio

    owner = accounts.user_create(username=f"{prefix}owner")
    org = accounts.organization_create(owner=owner, slug=f"{prefix}pub")
    publisher = studio.publisher_create(actor=Subject(user=owner), organization=org, slug=f"{prefix}pub")
    pack = studio.pack_create(actor=Subject(user=owner), publisher=publisher, slug="paid", title="Paid pack")
    # A pack is sold only once it has a release to deliver: one memory, published.
    studio.pack_add_memories(actor=Subject(user=owner), pack=pack, items=[{"text": _memory(0)}])
    _publish(Subject(user=owner), pack)
    Pack.objects.filter(pk=pack.pk).update(price_cents=1200, price_model=PriceModel.ONE_TIME)
    pack.refresh_from_db()
    return {"owner": owner, "publisher": publisher, "pack": pack}


def _deliver(payloads: list[str]) -> None:
    """POST each signed event, one after another, through the whole Django stack (one client, one
    database connection: that of the calling thread)."""
    from django.db import connection
    from django.test import Client

    from marketplace.payments import ledger

    client = Client()
    try:
        for payload in payloads:
            r = client.post(
                "/api/v1/marketplace/webhooks/ledger",
                payload,
                content_type="application/json",
                HTTP_STRIPE_SIGNATURE=ledger.sign(payload),
            )
            if r.status_code != 200:
                raise SystemExit(f"webhook answered {r.status_code}: {r.content[:300]!r}")
    finally:
        if threading.current_thread() is not threading.main_thread():
            connection.close()


def bench_webhooks(n: int, workers: int = 1) -> float:

    from accounts import services as accounts
    from governance.policy import Subject
    from marketplace.models import Licence
    from marketplace.payments import ledger
    from marketplace.services.orders import checkout_create

    market = _setup_market("wh")
    captured: list[str] = []
    real_emit = ledger._emit
    ledger._emit = lambda t, obj: captured.append(ledger.event_payload(t, obj))  # type: ignore[assignment]
    try:
        for i in range(n):
            buyer = accounts.user_create(username=f"whbuyer{i:05d}")
            order = checkout_create(actor=Subject(user=buyer), pack=market["pack"])
            ledger.ledger_session_pay(order.checkout_session_id)
    finally:
        ledger._emit = real_emit  # type: ignore[assignment]
    timer = Timer()
    if workers <= 1:
        _deliver(captured)
    else:
        # Several deliveries at once, as a web server with several workers receives them (each thread
        # has its own database connection); every event still goes through the whole endpoint.
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_deliver, [captured[w::workers] for w in range(workers)]))
    seconds = timer.seconds
    granted = Licence.objects.filter(pack=market["pack"]).count()
    if granted != n:
        raise SystemExit(f"{n} events granted {granted} licences")
    return round(n / seconds, 1)


def bench_checkout(n: int) -> dict[str, float]:
    from rest_framework.test import APIClient

    from accounts import services as accounts
    from marketplace.models import Order

    market = _setup_market("co")
    pack = market["pack"]
    url = f"/api/v1/marketplace/packs/{pack.publisher.slug}/{pack.slug}/checkout"
    clients = []
    for i in range(n):
        buyer = accounts.user_create(username=f"cobuyer{i:04d}")
        _, raw = accounts.api_token_create(user=buyer, name="bench")
        c = APIClient()
        c.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        clients.append(c)
    ms: list[float] = []
    for c in clients:
        started = time.perf_counter()
        r = c.post(url, {}, format="json")
        if r.status_code != 201:
            raise SystemExit(f"checkout answered {r.status_code}: {r.content[:300]!r}")
        order_id = r.json()["id"]
        a = c.post(f"/api/v1/marketplace/ledger/orders/{order_id}/action", {"action": "pay"}, format="json")
        if a.status_code != 200 or not Order.objects.filter(pk=order_id, licence__isnull=False).exists():
            raise SystemExit(f"no licence after paying: {a.status_code} {a.content[:300]!r}")
        ms.append((time.perf_counter() - started) * 1000)
    return {"p50": round(percentile(ms, 50), 2), "p95": round(percentile(ms, 95), 2)}


def _publish(actor: Any, pack: Any) -> Any:
    """Publish 1.0.0; the PII scan of a large pack runs in the worker, so run it here and publish again."""
    from core.errors import Conflict
    from governance.pii import pii_scan_execute
    from marketplace.services import releases

    for _ in range(3):
        try:
            return releases.release_publish(actor=actor, pack=pack, version="1.0.0")
        except Conflict as exc:
            if exc.code != "pii_scan_pending":
                raise
            pii_scan_execute(report_id=exc.extra["report"])
    raise SystemExit("the PII scan never finished")


def bench_install(m: int) -> dict[str, float]:
    from accounts import services as accounts
    from governance.policy import Subject
    from marketplace.services import installs, studio
    from vault.selectors import memory_search

    owner = accounts.user_create(username="inowner")
    org = accounts.organization_create(owner=owner, slug="inpub")
    actor = Subject(user=owner)
    publisher = studio.publisher_create(actor=actor, organization=org, slug="inpub")
    pack = studio.pack_create(actor=actor, publisher=publisher, slug="big", title="Ten thousand notes")
    batch = 500
    for start in range(0, m, batch):
        studio.pack_add_memories(
            actor=actor, pack=pack, items=[{"text": _memory(i)} for i in range(start, min(m, start + batch))]
        )
    drain_outbox()
    release = _publish(actor, pack)
    drain_outbox()
    buyer = accounts.user_create(username="inbuyer")
    bactor = Subject(user=buyer)
    timer = Timer()
    installation = installs.pack_install(actor=bactor, release=release, inline=True)
    while drain_outbox():
        pass
    probe = m // 2
    found = memory_search(actor=bactor, query=f"code K{probe:05d} care note {probe}", top_k=10, meter=False)
    seconds = timer.seconds
    in_install = [r for r in found.results if r.memory.namespace_id == installation.namespace_id]
    if not in_install:
        raise SystemExit(f"search found no installed memory (results: {len(found.results)})")
    return {"seconds": round(seconds, 2), "memories_per_s": round(m / seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--checkouts", type=int, default=50)
    parser.add_argument("--memories", type=int, default=10_000)
    parser.add_argument(
        "--webhook-workers",
        type=int,
        default=1,
        help="deliver the webhook events from this many threads at once (default 1: serially)",
    )
    args = parser.parse_args(argv)
    url = os.environ.setdefault("DATABASE_URL", DEFAULT_URL)
    os.environ.setdefault("MEMHUB_PAYMENT_GATEWAY", "ledger")
    _recreate_database(url)
    try:
        with vault_environment(collection_prefix="bench_market"):
            from django.conf import settings

            settings.MEMHUB_THROTTLE_RATES = {k: "1000000/min" for k in settings.MEMHUB_THROTTLE_RATES}
            settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
            webhooks = bench_webhooks(args.events, args.webhook_workers)
            checkout = bench_checkout(args.checkouts)
            install = bench_install(args.memories)
    finally:
        from django.db import connections

        connections.close_all()
        _recreate_database(url, drop_only=True)
    emit({"webhook_events_per_s": webhooks, "checkout_to_licence_ms": checkout, "install_10k": install})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
