"""Vault ingest throughput and tenant-filtered search latency at scale; prints one JSON object.

    .venv/bin/python bench/vault_bench.py --n 100000 [--tenants 100] [--queries 300]

N synthetic memories spread over T tenants (one user and private namespace each) are written through
`vault.services.memory_create_batch`, and the index outbox is drained after every batch (embedding +
Milvus upsert), as the worker would. ingest_per_s covers all of it: database rows, versions, audit,
outbox, embeddings, index writes. Then each query searches one random tenant through
`vault.selectors.memory_search` (top 10): search_ms is that end-to-end latency (query embedding, Milvus,
database re-check); index_search_ms is the Milvus part alone (VectorIndex.search with a given vector),
and index_search_ms_by_mode repeats that for each route (dense, sparse, hybrid).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    Timer,
    drain_outbox,
    emit,
    latency_summary,
    machine,
    make_tenant,
    synthetic_memory,
    synthetic_query,
    vault_environment,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=10_000, help="memories to ingest")
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--batch", type=int, default=500, help="memories per memory_create_batch call")
    parser.add_argument("--mode", choices=["dense", "sparse", "hybrid"], default=None)
    parser.add_argument("--settings", default="config.settings.local", help="Django settings module")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)

    with vault_environment(settings_module=args.settings, collection_prefix="bench_vault"):
        from django.conf import settings

        from vault.embedding import get_embedder
        from vault.index import IndexFilter, get_index
        from vault.models import LIVE_STATES
        from vault.selectors import memory_search
        from vault.services import memory_create_batch

        index = get_index()
        index.ensure_collection()
        get_embedder().embed(["warm-up"])  # model load is start-up cost, not ingest
        mode = args.mode or settings.VAULT_SEARCH_MODE
        batch = min(args.batch, settings.VAULT_MAX_BATCH)
        tenants = [make_tenant(f"bench-{t:04d}") for t in range(args.tenants)]
        per_tenant = [
            args.n // args.tenants + (1 if t < args.n % args.tenants else 0) for t in range(args.tenants)
        ]
        base = datetime(2024, 1, 1, tzinfo=UTC)

        written = 0
        clock = Timer()
        while written < args.n:
            for t, (_, namespace, subject) in enumerate(tenants):
                take = min(batch, per_tenant[t])
                if take <= 0:
                    continue
                items = [
                    {
                        "text": synthetic_memory(rng, written + j),
                        "tags": [f"topic-{int(rng.integers(0, 20))}"],
                        "semantic_type": "event",
                        "valid_from": base + timedelta(days=int(rng.integers(0, 365))),
                    }
                    for j in range(take)
                ]
                memory_create_batch(actor=subject, namespace_key=namespace.key, items=items)
                drain_outbox()
                per_tenant[t] -= take
                written += take
        ingest_s = clock.seconds
        index.flush()
        time.sleep(2)  # let milvus-lite finish building the last segment indexes before timing reads

        queries = [synthetic_query(rng) for _ in range(args.queries)]
        picks = rng.integers(0, args.tenants, size=args.queries)
        embedder = get_embedder()
        end_to_end: list[float] = []
        index_only: list[float] = []
        warmup = min(20, args.queries // 10)
        for i, (query, t) in enumerate(zip(queries, picks, strict=True)):
            _, namespace, subject = tenants[int(t)]
            clock = Timer()
            memory_search(
                actor=subject, query=query, namespace_keys=[namespace.key], top_k=args.top_k, mode=mode
            )
            elapsed = clock.seconds * 1000
            vector = embedder.embed([query])[0]
            clock = Timer()
            index.search(
                query=query,
                filters=IndexFilter(namespaces=[str(namespace.id)], states=list(LIVE_STATES)),
                top_k=args.top_k * 2 + 5,  # what memory_search asks the index for
                mode=mode,
                query_vector=vector,
            )
            if i >= warmup:
                end_to_end.append(elapsed)
                index_only.append(clock.seconds * 1000)

        # The same queries per retrieval route, index only: shows which route dominates at this size.
        by_mode: dict[str, dict[str, float]] = {}
        vectors = embedder.embed(queries)
        for route in ("dense", "sparse", "hybrid"):
            timings: list[float] = []
            for i, (query, t) in enumerate(zip(queries, picks, strict=True)):
                _, namespace, _ = tenants[int(t)]
                clock = Timer()
                index.search(
                    query=query,
                    filters=IndexFilter(namespaces=[str(namespace.id)], states=list(LIVE_STATES)),
                    top_k=args.top_k * 2 + 5,
                    mode=route,
                    query_vector=vectors[i],
                )
                if i >= warmup:
                    timings.append(clock.seconds * 1000)
            by_mode[route] = latency_summary(timings)

        emit(
            {
                "n": args.n,
                "tenants": args.tenants,
                "indexed": index.count(),
                "mode": mode,
                "ingest_per_s": round(args.n / ingest_s, 1),
                "search_ms": latency_summary(end_to_end),
                "index_search_ms": latency_summary(index_only),
                "index_search_ms_by_mode": by_mode,
                "queries": len(end_to_end),
                "embedding": settings.EMBEDDING_BACKEND,
                "machine": machine(),
            }
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
