"""Evidence-retrieval evaluation through the vault's own paths (LoCoMo-style data); prints JSON.

Each namespace of the corpus becomes a tenant (one user with its private namespace). The corpus goes in
through `vault.services.memory_create_batch` and the index outbox (embedding + Milvus upsert), exactly as
API writes do; each query goes through `vault.selectors.memory_search` restricted to its tenant.

    .venv/bin/python bench/retrieval_eval.py --data /work/shared/data/locomo-dev --k 5 10 25
    .venv/bin/python bench/retrieval_eval.py --data /work/shared/data/locomo-dev --loo

recall@k: fraction of a query's relevant ids in the top k, averaged per category, per conversation and
over all queries ("overall"). One search per query at the largest k; smaller k use its prefix. MRR uses
the first relevant hit within the largest k.

Reproducible: ids come from a seeded generator (`--seed`), each conversation gets a milvus-lite partition
bucket of its own, the index is flushed once after the whole corpus is in and reloaded so every
segment's indexes are built before the first query (milvus-lite keeps BM25 statistics per sealed segment
and builds indexes in the background), the milvus-lite server builds HNSW graphs on one thread, and ties
are broken by corpus order. Two identical runs print the same recall.

--loo (leave one conversation out): every configuration of a small grid is evaluated once; for each
conversation, the configuration with the best recall@10 on the other four is chosen and its recall on
the held-out one is reported. The mean of the five held-out figures is the honest estimate of the
defaults' quality on conversations they were not tuned on (docs/vault-index.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timer, drain_outbox, emit, latency_summary, machine, make_tenant, vault_environment

# The grid --loo tunes over: kept small (every configuration costs one pass over all queries). A first
# run also held dense weights 0.45 and 0.6 and bm25_half 4: no fold ever chose them (docs/vault-index.md).
LOO_GRID: list[dict[str, Any]] = [
    {"fusion": "weighted", "dense_weight": w, "bm25_half": h}
    for w in (0.2, 0.3, 0.4)
    for h in (8.0, 16.0, 32.0)
] + [{"fusion": "minmax", "dense_weight": 0.4, "bm25_half": 8.0}]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def parse_ts(value: str | None) -> datetime | None:
    if not value:
        return None
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def corpus_item(doc: dict[str, Any]) -> dict[str, Any]:
    """A corpus line as a memory: the turn is the text; when it was said is when the fact holds."""
    meta = dict(doc.get("metadata") or {})
    item: dict[str, Any] = {"text": doc["text"], "metadata": {**meta, "corpus_id": doc["id"]}}
    valid_from = parse_ts(doc.get("timestamp"))
    if valid_from is not None:
        item["valid_from"] = valid_from
    if meta.get("speaker"):
        item["source"] = {"speaker": str(meta["speaker"])}
    return item


def seed_ids(seed: int) -> None:
    """Make every UUID primary key the run creates come from a seeded generator.

    Memory and namespace ids are random otherwise, and they decide which milvus-lite partition bucket
    a tenant lands in, the order rows are inserted into a segment's HNSW graph and how exact ties
    break, so two runs would differ by chance. With seeded ids, identical runs are identical.
    """
    import random
    import uuid

    from django.apps import apps

    rng = random.Random(seed)

    def seeded() -> uuid.UUID:
        return uuid.UUID(int=rng.getrandbits(128), version=4)

    for model in apps.get_models():
        for model_field in model._meta.concrete_fields:
            if model_field.default is uuid.uuid4:
                model_field.default = seeded


def load() -> float:
    return round(os.getloadavg()[0], 2)


class _MemoEmbedder:
    """Caches query embeddings across configurations: the grid varies fusion, not the query vector."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name, self.dim = inner, inner.name, inner.dim
        self.cache: dict[str, Any] = {}

    def embed(self, texts: list[str]) -> Any:
        if len(texts) != 1:
            return self.inner.embed(texts)
        if texts[0] not in self.cache:
            self.cache[texts[0]] = self.inner.embed(texts)
        return self.cache[texts[0]]


def evaluate(
    queries: list[dict[str, Any]],
    tenants: dict[str, tuple[Any, Any]],
    cube_to_corpus: dict[str, tuple[int, str]],
    *,
    ks: list[int],
    mode: str,
    dense_weight: float | None,
) -> dict[str, Any]:
    """One pass over the queries with the index's current tuning: per-query recall at each k."""
    from vault.selectors import memory_search

    top_k = ks[-1]
    per_query: list[dict[str, Any]] = []
    latencies: list[float] = []
    for query in queries:
        namespace, subject = tenants[query["namespace"]]
        clock = Timer()
        response = memory_search(
            actor=subject,
            query=query["text"],
            namespace_keys=[namespace.key],
            top_k=top_k,
            mode=mode,
            dense_weight=dense_weight,
        )
        latencies.append(clock.seconds * 1000)
        # Equal scores keep corpus order, so ties do not depend on random memory ids.
        scored = [(-r.score, *cube_to_corpus.get(str(r.memory.id), (10**9, ""))) for r in response.results]
        ranked = [cid for _, _, cid in sorted(scored)]
        relevant = set(query["relevant_ids"])
        recall = {k: (len(relevant & set(ranked[:k])) / len(relevant) if relevant else 0.0) for k in ks}
        first = next((i for i, cid in enumerate(ranked, start=1) if cid in relevant), None)
        per_query.append(
            {
                "namespace": query["namespace"],
                "category": query.get("category") or "uncategorised",
                "recall": recall,
                "rr": 1.0 / first if first else 0.0,
            }
        )
    return {"per_query": per_query, "latencies": latencies, "load": load()}


def mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 4) if values else 0.0


def summarise(per_query: list[dict[str, Any]], ks: list[int]) -> dict[str, Any]:
    recall: dict[str, dict[str, float]] = {}
    for k in ks:
        groups: dict[str, list[float]] = defaultdict(list)
        for q in per_query:
            groups[q["category"]].append(q["recall"][k])
            groups[f"conv:{q['namespace']}"].append(q["recall"][k])
            groups["overall"].append(q["recall"][k])
        recall[str(k)] = {name: mean(v) for name, v in sorted(groups.items())}
    return {"recall": recall, "mrr": mean([q["rr"] for q in per_query])}


def recall_at(
    per_query: list[dict[str, Any]], k: int, *, only: str | None = None, skip: str | None = None
) -> float:
    return mean(
        [
            q["recall"][k]
            for q in per_query
            if (only is None or q["namespace"] == only) and (skip is None or q["namespace"] != skip)
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, type=Path, help="folder with corpus.jsonl and queries.jsonl")
    parser.add_argument("--k", nargs="+", type=int, default=[5, 10, 25])
    parser.add_argument("--settings", default="config.settings.local", help="Django settings module")
    parser.add_argument("--mode", choices=["dense", "sparse", "hybrid"], default=None)
    parser.add_argument("--dense-weight", type=float, default=None)
    parser.add_argument("--fusion", choices=["weighted", "minmax", "rrf"], default=None)
    parser.add_argument("--bm25-half", type=float, default=None)
    parser.add_argument(
        "--loo", action="store_true", help="leave-one-conversation-out tuning over a small grid"
    )
    parser.add_argument("--limit-queries", type=int, default=0, help="evaluate only the first N queries")
    parser.add_argument("--batch", type=int, default=500, help="memories per memory_create_batch call")
    parser.add_argument("--seed", type=int, default=0, help="seed for the ids the run creates")
    args = parser.parse_args(argv)

    corpus = read_jsonl(args.data / "corpus.jsonl")
    queries = read_jsonl(args.data / "queries.jsonl")
    if args.limit_queries:
        queries = queries[: args.limit_queries]
    ks = sorted(set(args.k) | ({10} if args.loo else set()))
    load_start = load()

    with vault_environment(settings_module=args.settings, collection_prefix="bench_retrieval"):
        from django.conf import settings

        if args.fusion:
            settings.VAULT_FUSION = args.fusion
        if args.bm25_half is not None:
            settings.VAULT_BM25_HALF = args.bm25_half
        # No periodic flushes during ingest: one flush after it (below) makes BM25 statistics independent
        # of flush timing.
        settings.VAULT_LITE_FLUSH_EVERY = 0
        from vault.index import get_index, reset_index_cache
        from vault.services import memory_create_batch

        seed_ids(args.seed)
        reset_index_cache()
        index = get_index()
        index.ensure_collection()
        mode = args.mode or settings.VAULT_SEARCH_MODE
        batch = min(args.batch, settings.VAULT_MAX_BATCH)

        by_namespace: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
        for position, doc in enumerate(corpus):
            by_namespace[doc["namespace"]].append((position, doc))
        # milvus-lite keeps BM25 statistics per segment, and a segment holds one partition bucket: each
        # conversation gets a bucket of its own, so its statistics are its own and do not change with
        # the random namespace ids (a namespace that lands in a taken bucket is created again).
        tenants: dict[str, tuple[Any, Any]] = {}
        taken: set[str] = set()
        for name in by_namespace:
            for attempt in range(100):
                _, namespace, subject = make_tenant(f"eval-{name}{f'-{attempt}' if attempt else ''}"[:150])
                bucket = (index._lite_partitions([str(namespace.id)]) or [""])[0]
                if not bucket or bucket not in taken:
                    break
            taken.add(bucket)
            tenants[name] = (namespace, subject)

        # Ingest: create through the service, then drain the outbox (embedding + index upsert).
        cube_to_corpus: dict[str, tuple[int, str]] = {}
        clock = Timer()
        for name, docs in by_namespace.items():
            namespace, subject = tenants[name]
            for start in range(0, len(docs), batch):
                chunk = docs[start : start + batch]
                cubes = memory_create_batch(
                    actor=subject, namespace_key=namespace.key, items=[corpus_item(d) for _, d in chunk]
                )
                cube_to_corpus.update(
                    {str(c.id): (p, d["id"]) for c, (p, d) in zip(cubes, chunk, strict=True)}
                )
                drain_outbox()
        index.settle()
        ingest_s = clock.seconds

        # Which milvus-lite partition bucket each tenant landed in (BM25 statistics are per segment,
        # so tenants sharing a bucket share statistics; namespace ids, and so buckets, vary per run).
        buckets = {name: index._lite_partitions([str(ns.id)]) for name, (ns, _) in tenants.items()}
        base = {
            "dataset": args.data.name,
            "lite_buckets": {name: b[0] if b else None for name, b in buckets.items()},
            "docs": len(corpus),
            "queries": len(queries),
            "tenants": len(tenants),
            "mode": mode,
            "embedding": f"{settings.EMBEDDING_BACKEND}",
            "ingest_per_s": round(len(corpus) / ingest_s, 1),
            "seed": args.seed,
        }
        if not args.loo:
            run = evaluate(queries, tenants, cube_to_corpus, ks=ks, mode=mode, dense_weight=args.dense_weight)
            tuning = index.tuning
            emit(
                {
                    **base,
                    "fusion": tuning.fusion,
                    "dense_weight": args.dense_weight
                    if args.dense_weight is not None
                    else tuning.dense_weight,
                    "bm25_half": tuning.bm25_half,
                    **summarise(run["per_query"], ks),
                    "search_ms": latency_summary(run["latencies"]),
                    "load": {"start_1m": load_start, "end_1m": run["load"]},
                    "machine": machine(),
                }
            )
            return 0

        index.embedder = _MemoEmbedder(index.embedder)
        default = dataclasses.replace(index.tuning)
        configs = [
            {"fusion": default.fusion, "dense_weight": default.dense_weight, "bm25_half": default.bm25_half}
        ]
        configs += [c for c in LOO_GRID if c != configs[0]]
        runs = []
        for config in configs:
            index.tuning = dataclasses.replace(default, **config)
            run = evaluate(queries, tenants, cube_to_corpus, ks=ks, mode=mode, dense_weight=None)
            runs.append((config, run))
            overall = recall_at(run["per_query"], 10)
            print(
                json.dumps({"config": config, "recall@10": overall, "load_1m": run["load"]}), file=sys.stderr
            )
        index.tuning = default

        conversations = sorted(tenants)
        folds = []
        for held_out in conversations:
            scored = [(recall_at(run["per_query"], 10, skip=held_out), i) for i, (_, run) in enumerate(runs)]
            train, best = max(scored, key=lambda s: (s[0], -s[1]))  # ties: the earlier (default first)
            config, run = runs[best]
            folds.append(
                {
                    "held_out": held_out,
                    "chosen": config,
                    "train_recall@10": train,
                    "held_out_recall@10": recall_at(run["per_query"], 10, only=held_out),
                    "default_held_out_recall@10": recall_at(runs[0][1]["per_query"], 10, only=held_out),
                    "load_1m": run["load"],
                }
            )
        emit(
            {
                **base,
                "loo": {
                    "folds": folds,
                    "mean_held_out_recall@10": mean([f["held_out_recall@10"] for f in folds]),
                    "mean_default_held_out_recall@10": mean([f["default_held_out_recall@10"] for f in folds]),
                },
                "grid": [
                    {"config": c, "recall@10": recall_at(r["per_query"], 10), "load_1m": r["load"]}
                    for c, r in runs
                ],
                "default": {"config": configs[0], **summarise(runs[0][1]["per_query"], ks)},
                "load": {"start_1m": load_start, "end_1m": load()},
                "machine": machine(),
            }
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
