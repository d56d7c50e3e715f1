"""Evidence-retrieval evaluation through the vault's own paths (LoCoMo-style data); prints one JSON object.

Each namespace of the corpus becomes a tenant (one user with its private namespace). The corpus goes in
through `vault.services.memory_create_batch` and the index outbox (embedding + Milvus upsert), exactly as
API writes do; each query goes through `vault.selectors.memory_search` restricted to its tenant.

    .venv/bin/python bench/retrieval_eval.py --data /work/shared/data/locomo-dev --k 5 10 25

recall@k: fraction of a query's relevant ids in the top k, averaged per category and over all queries
("overall"). One search per query at the largest k; smaller k use its prefix. MRR uses the first
relevant hit within the largest k.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timer, drain_outbox, emit, latency_summary, machine, make_tenant, vault_environment


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, type=Path, help="folder with corpus.jsonl and queries.jsonl")
    parser.add_argument("--k", nargs="+", type=int, default=[5, 10, 25])
    parser.add_argument("--settings", default="config.settings.local", help="Django settings module")
    parser.add_argument("--mode", choices=["dense", "sparse", "hybrid"], default=None)
    parser.add_argument("--dense-weight", type=float, default=None)
    parser.add_argument("--fusion", choices=["weighted", "rrf"], default=None)
    parser.add_argument("--limit-queries", type=int, default=0, help="evaluate only the first N queries")
    parser.add_argument("--batch", type=int, default=500, help="memories per memory_create_batch call")
    args = parser.parse_args(argv)

    corpus = read_jsonl(args.data / "corpus.jsonl")
    queries = read_jsonl(args.data / "queries.jsonl")
    if args.limit_queries:
        queries = queries[: args.limit_queries]
    ks = sorted(set(args.k))
    top_k = ks[-1]

    with vault_environment(settings_module=args.settings, collection_prefix="bench_retrieval"):
        from django.conf import settings

        if args.fusion:
            settings.VAULT_FUSION = args.fusion
        from vault.index import get_index, reset_index_cache
        from vault.selectors import memory_search
        from vault.services import memory_create_batch

        reset_index_cache()
        get_index().ensure_collection()
        mode = args.mode or settings.VAULT_SEARCH_MODE
        batch = min(args.batch, settings.VAULT_MAX_BATCH)

        by_namespace: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for doc in corpus:
            by_namespace[doc["namespace"]].append(doc)
        tenants: dict[str, tuple[Any, Any]] = {}
        for name in by_namespace:
            _, namespace, subject = make_tenant(f"eval-{name}"[:150])
            tenants[name] = (namespace, subject)

        # Ingest: create through the service, then drain the outbox (embedding + index upsert).
        cube_to_corpus: dict[str, str] = {}
        clock = Timer()
        for name, docs in by_namespace.items():
            namespace, subject = tenants[name]
            for start in range(0, len(docs), batch):
                chunk = docs[start : start + batch]
                cubes = memory_create_batch(
                    actor=subject, namespace_key=namespace.key, items=[corpus_item(d) for d in chunk]
                )
                cube_to_corpus.update({str(c.id): d["id"] for c, d in zip(cubes, chunk, strict=True)})
                drain_outbox()
        ingest_s = clock.seconds

        recall: dict[int, dict[str, list[float]]] = {k: defaultdict(list) for k in ks}
        reciprocal_ranks: list[float] = []
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
                dense_weight=args.dense_weight,
            )
            latencies.append(clock.seconds * 1000)
            ranked = [cube_to_corpus.get(str(r.memory.id), "") for r in response.results]
            relevant = set(query["relevant_ids"])
            for k in ks:
                score = len(relevant & set(ranked[:k])) / len(relevant) if relevant else 0.0
                recall[k][query.get("category") or "uncategorised"].append(score)
                recall[k]["overall"].append(score)
            first = next((i for i, cid in enumerate(ranked, start=1) if cid in relevant), None)
            reciprocal_ranks.append(1.0 / first if first else 0.0)

        tuning = get_index().tuning
        emit(
            {
                "dataset": args.data.name,
                "docs": len(corpus),
                "queries": len(queries),
                "tenants": len(tenants),
                "mode": mode,
                "fusion": tuning.fusion,
                "dense_weight": args.dense_weight if args.dense_weight is not None else tuning.dense_weight,
                "embedding": f"{settings.EMBEDDING_BACKEND}",
                "recall": {
                    str(k): {cat: round(sum(v) / len(v), 4) for cat, v in sorted(per.items())}
                    for k, per in recall.items()
                },
                "mrr": round(sum(reciprocal_ranks) / max(1, len(reciprocal_ranks)), 4),
                "ingest_per_s": round(len(corpus) / ingest_s, 1),
                "search_ms": latency_summary(latencies),
                "machine": machine(),
            }
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
