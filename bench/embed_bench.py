"""Embedding throughput per backend and agreement with the sentence-transformers reference; prints JSON.

    .venv/bin/python bench/embed_bench.py --n 2000 [--data /work/shared/data/locomo-dev] [--threads 2]

Backends: onnx-int8 (the default: per-channel int8 weights), onnx-fp32, torch (sentence-transformers,
the reference). texts_per_s is the best of --repeat runs over the same texts (the machine is shared, so
the best run is the least disturbed one); cosine agreement is each backend's output against torch's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, emit, machine, synthetic_memory

BACKENDS = ("onnx-int8", "onnx-fp32", "torch")


def load_texts(data: Path | None, n: int) -> tuple[list[str], str]:
    if data is not None:
        with (data / "corpus.jsonl").open(encoding="utf-8") as fh:
            texts = [json.loads(line)["text"] for line in fh if line.strip()]
        return (texts * (n // max(1, len(texts)) + 1))[:n], f"{data.name}/corpus.jsonl"
    rng = np.random.default_rng(0)
    return [synthetic_memory(rng, i) for i in range(n)], "synthetic"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2000, help="texts to embed per run")
    parser.add_argument("--data", type=Path, default=None, help="folder with corpus.jsonl (else synthetic)")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="0: the runtime's default")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=REPO / "var" / "models")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from vault.embedding import build_embedder

    texts, source = load_texts(args.data, args.n)
    tokens_hint = float(np.mean([len(t.split()) for t in texts]))
    results: dict[str, dict[str, object]] = {}
    outputs: dict[str, np.ndarray] = {}
    for name in ["torch", *[b for b in args.backends if b != "torch"]]:
        backend, _, variant = name.partition("-")
        kwargs = {"batch_size": args.batch_size, "threads": args.threads}
        if backend == "onnx":
            started = time.perf_counter()
            embedder = build_embedder("onnx", cache_dir=args.cache_dir, quantize=variant == "int8", **kwargs)
        else:
            started = time.perf_counter()
            embedder = build_embedder("torch", **kwargs)
        load_s = time.perf_counter() - started
        embedder.embed(texts[:32])  # warm-up
        best = float("inf")
        for _ in range(max(1, args.repeat)):
            started = time.perf_counter()
            vectors = embedder.embed(texts)
            best = min(best, time.perf_counter() - started)
        outputs[name] = vectors
        if name in args.backends:
            results[name] = {"texts_per_s": round(len(texts) / best, 1), "load_s": round(load_s, 2)}
    reference = outputs["torch"]
    for name, entry in results.items():
        cosine = (outputs[name] * reference).sum(axis=1)
        entry["cosine_vs_torch"] = {
            "mean": round(float(cosine.mean()), 5),
            "p01": round(float(np.percentile(cosine, 1)), 5),
            "min": round(float(cosine.min()), 5),
        }
    emit(
        {
            "n": len(texts),
            "texts": source,
            "mean_words": round(tokens_hint, 1),
            "batch_size": args.batch_size,
            "threads": args.threads,
            "backends": results,
            "machine": machine(),
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
