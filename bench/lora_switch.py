"""LoRA adapters: first load, switch time (production pool and all resident), switch + first token, and
per-token decode overhead.

    .venv/bin/python bench/lora_switch.py [--config path/to/config.json] [--adapters 10] [--pool 8]

Builds a randomly initialised model of a real model's shape (default: Qwen2-0.5B) with the packaged BERT
tokenizer, saves it and loads it back through `from_pretrained`, writes --adapters random LoRA adapters
(safetensors, rank --rank on --targets) and measures through the same `AdapterPool` the workers use:
  first_load_ms        validate + read + inject + load the first adapter into the model
  load_ms              the same for the other adapters (median)
  switch_ms.all_resident     activate another adapter, every one resident (a pool of --adapters)
  switch_ms.production_pool  the same random switches with the pool the workers use by default
                       (MEMHUB_LORA_MAX_RESIDENT, default 8, or --pool): hits are cheap, misses evict the
                       least recently used adapter and hot-swap its slot in place
  switch_ms.production_pool_miss  every switch a miss (adapters cycled in order): the worst case
  switch_plus_first_token_ms  activate + prefill --prompt-tokens + the first generated token, for the
                       same three cases and without any switch (the adapter already active)
  per_token_overhead   decode seconds per token with an adapter active / without any adapter, minus 1
Prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from transformers.utils import logging as hf_logging

from inference.conf import LORA_MAX_RESIDENT_DEFAULT
from inference.runtime.generate import GenerationStats, greedy_stream
from inference.runtime.lora import AdapterPool, adapter_validate
from inference.runtime.random_model import (
    QWEN2_0_5B,
    load_config_file,
    save_random_adapter,
    save_random_model,
)
from inference.runtime.registry import load_model


def log(message: str) -> None:
    print(f"[lora_switch {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="a Hugging Face config.json (default: Qwen2-0.5B dimensions)")
    parser.add_argument("--adapters", type=int, default=10)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj")
    parser.add_argument("--switches", type=int, default=200)
    parser.add_argument(
        "--pool",
        type=int,
        default=int(os.environ.get("MEMHUB_LORA_MAX_RESIDENT") or LORA_MAX_RESIDENT_DEFAULT),
        help="the production pool size (default: MEMHUB_LORA_MAX_RESIDENT or the workers' default)",
    )
    parser.add_argument("--first-token-rounds", type=int, default=20)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--decode-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default=None)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    rng = random.Random(args.seed)
    load_start = [round(x, 2) for x in os.getloadavg()]

    config = load_config_file(args.config) if args.config else dict(QWEN2_0_5B)
    targets = tuple(t for t in args.targets.split(",") if t)
    with tempfile.TemporaryDirectory(prefix="memhub-lora-bench-", dir=args.workdir) as work:
        root = Path(work)
        model_dir = save_random_model(
            config, root / "model", seed=args.seed, dtype=getattr(torch, args.dtype)
        )
        handle = load_model(model_dir, dtype=args.dtype, device=args.device)
        log(f"model loaded on {handle.device}; writing {args.adapters} adapters (rank {args.rank})")
        fp = handle.fingerprint
        dirs = [
            save_random_adapter(
                handle.model,
                root / f"adapter-{i}",
                seed=args.seed + i,
                rank=args.rank,
                target_modules=targets,
                base_fingerprint=fp.fingerprint,
                architecture=fp.architecture,
            )
            for i in range(args.adapters)
        ]
        prompt = [handle.model.config.bos_token_id] + [
            1000 + (i * 37) % 20000 for i in range(args.prompt_tokens)
        ]

        def per_token_s(target) -> float:  # type: ignore[no-untyped-def]
            stats = GenerationStats()
            for _ in greedy_stream(
                target, prompt, max_new_tokens=args.decode_tokens, stats=stats, stop_ids=set()
            ):
                pass
            return (stats.total_s - stats.ttft_s) / (args.decode_tokens - 1)

        base_params = sum(p.numel() for p in handle.model.parameters())
        # A second copy of the same weights that never gets an adapter: measuring the two in alternating
        # rounds keeps load from other processes on this shared CPU out of the overhead figure.
        plain = load_model(
            save_random_model(config, root / "plain", seed=args.seed, dtype=getattr(torch, args.dtype)),
            dtype=args.dtype,
            device=args.device,
        )
        per_token_s(plain)  # warm-up
        per_token_s(handle)

        pool = AdapterPool(handle, max_resident=max(args.adapters, 1))
        t0 = time.perf_counter()
        specs = [adapter_validate(dirs[0], handle)]
        validate_s = time.perf_counter() - t0
        pool.activate(specs[0])
        sync(handle.device)
        first_load_s = time.perf_counter() - t0
        load_s = []
        for d in dirs[1:]:
            t0 = time.perf_counter()
            spec = adapter_validate(d, handle)
            pool.activate(spec)
            sync(handle.device)
            load_s.append(time.perf_counter() - t0)
            specs.append(spec)
        log(f"first load {ms(first_load_s)} ms; measuring {args.switches} switches")

        switch_s = []
        current = specs[-1]
        for _ in range(args.switches):
            nxt = rng.choice([s for s in specs if s is not current])
            t0 = time.perf_counter()
            pool.activate(nxt)
            sync(handle.device)
            switch_s.append(time.perf_counter() - t0)
            current = nxt
        assert pool.loads == args.adapters, "every switch should have hit a resident adapter"

        base_rounds, adapter_rounds, disabled_rounds = [], [], []
        for _ in range(args.repeats):
            base_rounds.append(per_token_s(plain))
            pool.activate(specs[0])
            adapter_rounds.append(per_token_s(handle))
            pool.activate(None)  # LoRA layers present, no adapter active: what base-model requests pay
            disabled_rounds.append(per_token_s(handle))
        base_token_s, adapter_token_s = statistics.median(base_rounds), statistics.median(adapter_rounds)
        disabled_token_s = statistics.median(disabled_rounds)

        def switch_then_first_token(pool: AdapterPool, spec) -> float:  # type: ignore[no-untyped-def]
            """What a request for another pack waits before its first token: switch, prefill, 1 token."""
            t0 = time.perf_counter()
            pool.activate(spec)
            for _ in greedy_stream(handle, prompt, max_new_tokens=1, stats=GenerationStats(), stop_ids=set()):
                break
            sync(handle.device)
            return time.perf_counter() - t0

        rounds = args.first_token_rounds
        # All resident: every switch is a hit.
        first_all = []
        for _ in range(rounds):
            current = rng.choice([s for s in specs if s is not current])
            first_all.append(switch_then_first_token(pool, current))
        first_same = [switch_then_first_token(pool, current) for _ in range(rounds)]  # no switch at all

        # The production pool: the same random access pattern, hits and misses as they come.
        pool.clear()
        prod = AdapterPool(handle, max_resident=args.pool)
        handle.adapters = prod
        for spec in specs[: args.pool]:
            prod.activate(spec)
        warm_loads, warm_evictions = prod.loads, prod.evictions
        prod_s, prod_hit = [], []
        current = specs[args.pool - 1] if args.pool <= len(specs) else specs[-1]
        for _ in range(args.switches):
            nxt = rng.choice([s for s in specs if s is not current])
            hit = nxt.sha256 in prod.resident
            t0 = time.perf_counter()
            prod.activate(nxt)
            sync(handle.device)
            prod_s.append(time.perf_counter() - t0)
            prod_hit.append(hit)
            current = nxt
        prod_loads = prod.loads - warm_loads
        prod_evictions, prod_hotswaps = prod.evictions - warm_evictions, prod.hotswaps
        first_prod = []
        for _ in range(rounds):
            current = rng.choice([s for s in specs if s is not current])
            first_prod.append(switch_then_first_token(prod, current))

        # Worst case for the production pool: adapters cycled in order, so every switch misses.
        miss_s, first_miss = [], []
        if len(specs) > args.pool:
            order = list(specs)
            for i in range(len(order) * 3):
                spec = order[i % len(order)]
                t0 = time.perf_counter()
                prod.activate(spec)
                sync(handle.device)
                miss_s.append(time.perf_counter() - t0)
            miss_s = miss_s[len(order) :]  # the first cycle fills the pool
            for i in range(rounds):
                first_miss.append(switch_then_first_token(prod, order[i % len(order)]))

    print(
        json.dumps(
            {
                "benchmark": "lora_switch",
                "model": {
                    "architecture": fp.architecture,
                    "parameters": base_params,
                    "config": args.config or "Qwen2-0.5B dimensions (built in)",
                },
                "adapters_installed": args.adapters,
                "rank": args.rank,
                "targets": list(targets),
                "adapter_bytes": specs[0].nbytes,
                "first_load_ms": ms(first_load_s),
                "first_validate_ms": ms(validate_s),
                "load_ms": {"p50": ms(statistics.median(load_s)), "p95": ms(pct(load_s, 0.95))}
                if load_s
                else None,
                "switch_ms": {
                    "all_resident": {**summary(switch_s), "pool": len(specs)},
                    "production_pool": {
                        **summary(prod_s),
                        "pool": args.pool,
                        "hit_rate": round(sum(prod_hit) / len(prod_hit), 3),
                        "hit": summary([t for t, h in zip(prod_s, prod_hit, strict=True) if h]),
                        "miss": summary([t for t, h in zip(prod_s, prod_hit, strict=True) if not h]),
                        "loads": prod_loads,
                        "evictions": prod_evictions,
                        "hotswaps": prod_hotswaps,
                    },
                    "production_pool_miss": {**summary(miss_s), "pool": args.pool} if miss_s else None,
                },
                "switch_plus_first_token_ms": {
                    "prompt_tokens": len(prompt),
                    "no_switch": summary(first_same),
                    "all_resident": summary(first_all),
                    "production_pool": summary(first_prod),
                    "production_pool_miss": summary(first_miss) if first_miss else None,
                },
                "per_token_overhead": round(adapter_token_s / base_token_s - 1, 4),
                "per_token_s": {
                    "base": round(base_token_s, 5),
                    "adapter": round(adapter_token_s, 5),
                    "lora_disabled": round(disabled_token_s, 5),
                    "rounds": {
                        "base": [round(x, 5) for x in base_rounds],
                        "adapter": [round(x, 5) for x in adapter_rounds],
                        "lora_disabled": [round(x, 5) for x in disabled_rounds],
                    },
                },
                "dtype": args.dtype,
                "device": str(handle.device),
                "torch_threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "cpu": platform.processor() or platform.machine(),
                "gpu": torch.cuda.get_device_name() if handle.device.type == "cuda" else None,
                # The CPU is shared: the load average says how contended the measurement was.
                "loadavg_start": load_start,
                "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            },
            indent=2,
        )
    )


def summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "p50": ms(statistics.median(values)),
        "p95": ms(pct(values, 0.95)),
        "max": ms(max(values)),
        "n": len(values),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
