"""Installing a large pack, with and without reusing the publisher's vectors, on PostgreSQL.

    .venv/bin/python bench/install_bench.py [--memories 10000] [--sample 500]

Prints one JSON object:
`{"memories": M, "with_reuse": {"seconds", "memories_per_s", "reused", "embedded", "phases"},
  "without_reuse": {...}, "reuse_cosine": {"mean", "min", "p5", "sample"}, "embeddings_saved": n}`.

A free pack of M synthetic memories is authored, released and its publisher index built (not timed).
Then two buyers install it inline (`pack_install(inline=True)`): the first with
`VAULT_INSTALL_VECTOR_REUSE` on (the default), the second with it off. Each install is timed from the
call until a search as the buyer finds an installed memory (watermarked, indexed, searchable).
`reuse_cosine` compares, for a sample of the first buyer's copies, the reused vector stored in the index
with a fresh embedding of the watermarked copy: how much the reuse changes what the index holds.

Its own PostgreSQL database (DATABASE_URL, default .../memhub_bench_install, dropped first and at the end)
and its own milvus-lite server (`_common.vault_environment`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import drain_outbox, emit, machine, percentile, vault_environment

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/memhub_bench_install"


def _memory(i: int) -> str:
    # Varied English, so the watermark's lexical variants have slots to mark (and to change).
    subjects = ["The ferry", "Our warehouse", "The regional office", "Each courier", "The night shift"]
    verbs = ["opens", "closes", "checks every parcel", "confirms large orders", "reports delays"]
    tails = [
        "in order to keep the schedule, and about twenty staff help",
        "before they are shipped abroad, but only on working days",
        "until the parcel has left the depot, so customers can still change it",
        "as soon as the manager approves it, and it is logged",
    ]
    return (
        f"{subjects[i % 5]} {verbs[(i // 5) % 5]} at {6 + i % 12} o'clock {tails[(i // 25) % 4]} "
        f"(note K{i:05d})."
    )


def _setup(m: int) -> Any:
    from accounts import services as accounts
    from governance.policy import Subject
    from marketplace.services import releases, studio

    owner = accounts.user_create(username="ibowner")
    org = accounts.organization_create(owner=owner, slug="ibpub")
    actor = Subject(user=owner)
    publisher = studio.publisher_create(actor=actor, organization=org, slug="ibpub")
    pack = studio.pack_create(actor=actor, publisher=publisher, slug="big", title="Ten thousand notes")
    for start in range(0, m, 500):
        studio.pack_add_memories(
            actor=actor, pack=pack, items=[{"text": _memory(i)} for i in range(start, min(m, start + 500))]
        )
    drain_outbox()
    from core.errors import Conflict

    for _ in range(30):  # the PII scan of the release runs as a task (eager here): publish once it is done
        try:
            release = releases.release_publish(actor=actor, pack=pack, version="1.0.0")
            break
        except Conflict as exc:
            if "being scanned" not in exc.message:
                raise
            time.sleep(1)
    else:
        raise SystemExit("the PII scan did not finish")
    drain_outbox()
    return release


def _install(release: Any, username: str, m: int, *, reuse: bool) -> tuple[Any, dict[str, Any]]:
    from django.conf import settings

    from accounts import services as accounts
    from governance.policy import Subject
    from marketplace.services import installs
    from vault.selectors import memory_search

    settings.VAULT_INSTALL_VECTOR_REUSE = reuse
    buyer = accounts.user_create(username=username)
    actor = Subject(user=buyer)
    started = time.perf_counter()
    installation = installs.pack_install(actor=actor, release=release, inline=True)
    copied = time.perf_counter()
    while drain_outbox():
        pass
    probe = m // 2
    found = memory_search(actor=actor, query=f"note K{probe:05d}", top_k=10, meter=False)
    seconds = time.perf_counter() - started
    if not [r for r in found.results if r.memory.namespace_id == installation.namespace_id]:
        raise SystemExit(f"search found no installed memory ({len(found.results)} results)")
    vectors = installation.progress.get("vectors", {})
    return installation, {
        "seconds": round(seconds, 2),
        "memories_per_s": round(m / seconds, 1),
        "reused": vectors.get("reused", 0),
        "embedded": vectors.get("embedded", 0),
        "steps": installation.progress.get("timings", {}),
        "phases": {
            "install_s": round(copied - started, 2),
            "drain_and_search_s": round(seconds - (copied - started), 2),
        },
    }


def _cosines(installation: Any, sample: int) -> dict[str, float]:
    import numpy as np

    from vault.index import get_index
    from vault.models import MemCube

    cubes = list(
        MemCube.objects.filter(namespace=installation.namespace, is_canary=False).order_by("id")[:sample]
    )
    index = get_index()
    stored = index.vectors([str(c.id) for c in cubes])
    texts = [c.text for c in cubes if str(c.id) in stored]
    fresh = index.embedder.embed(texts)
    values = [
        float(np.dot(stored[str(c.id)][1], f))
        for c, f in zip([c for c in cubes if str(c.id) in stored], fresh, strict=True)
    ]
    return {
        "mean": round(float(np.mean(values)), 4) if values else 0.0,
        "min": round(min(values), 4) if values else 0.0,
        "p5": round(percentile(values, 5), 4),
        "sample": len(values),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memories", type=int, default=10_000)
    parser.add_argument("--sample", type=int, default=500)
    args = parser.parse_args(argv)
    url = os.environ.setdefault("DATABASE_URL", DEFAULT_URL)
    # Tasks (the release's PII scan) run in this process; the install is inline anyway.
    os.environ.setdefault("CELERY_TASK_ALWAYS_EAGER", "true")
    from market_bench import _recreate_database

    _recreate_database(url)
    try:
        with vault_environment(settings_module="config.settings.local", collection_prefix="bench_install"):
            release = _setup(args.memories)
            with_reuse_inst, with_reuse = _install(release, "ibbuyer1", args.memories, reuse=True)
            _, without = _install(release, "ibbuyer2", args.memories, reuse=False)
            emit(
                {
                    "memories": args.memories,
                    "with_reuse": with_reuse,
                    "without_reuse": without,
                    "reuse_cosine": _cosines(with_reuse_inst, args.sample),
                    "embeddings_saved": without["embedded"] - with_reuse["embedded"],
                    "machine": machine(),
                }
            )
    finally:
        _recreate_database(url, drop_only=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
