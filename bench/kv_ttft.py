"""Time to first token: memory in the prompt vs injected as a stored KV prefix.

    .venv/bin/python bench/kv_ttft.py [--config path/to/config.json] [--memory-tokens 512,2048,6144]

Builds a randomly initialised model of a real model's shape (default: Qwen2-0.5B) with the packaged BERT
tokenizer, saves it and loads it back through `from_pretrained`. For each memory size it measures:
  prompt_ttft_s  prefill of memory + query, first greedy token
  kv_ttft_s      load the safetensors artifact from disk (validated), copy it into a fresh per-request
                 cache, prefill the query only, first greedy token
and reports reduction = 1 - kv/prompt, the build time, artifact bytes per token, and whether 32 greedy
tokens are identical both ways. Medians over --repeats. Prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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

from inference.runtime.generate import first_token, greedy_generate
from inference.runtime.kv import kv_build_and_save, kv_load
from inference.runtime.random_model import QWEN2_0_5B, load_config_file, save_random_model
from inference.runtime.registry import load_model


def log(message: str) -> None:
    print(f"[kv_ttft {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def word_ids(tokenizer, count: int, seed: int) -> list[int]:  # type: ignore[no-untyped-def]
    """`count` ids of whole alphabetic words: realistic text-like tokens, exact length."""
    vocab = [
        i for tok, i in tokenizer.get_vocab().items() if tok.isalpha() and tok.isascii() and len(tok) > 2
    ]
    vocab.sort()
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(vocab), (count,), generator=generator).tolist()
    return [vocab[p] for p in picks]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="a Hugging Face config.json (default: Qwen2-0.5B dimensions)")
    parser.add_argument("--memory-tokens", default="512,2048,6144")
    parser.add_argument("--query-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--workdir", default=None, help="where the model and artifacts go (default: a temp dir)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()

    config = load_config_file(args.config) if args.config else dict(QWEN2_0_5B)
    sizes = [int(s) for s in args.memory_tokens.split(",") if s]
    load_start = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="memhub-kv-bench-", dir=args.workdir) as work:
        root = Path(work)
        log(f"saving a random {config.get('architectures', ['?'])[0]} to {root / 'model'}")
        dtype = getattr(torch, args.dtype)
        model_dir = save_random_model(config, root / "model", seed=args.seed, dtype=dtype)
        started = time.perf_counter()
        handle = load_model(model_dir, dtype=args.dtype, device=args.device)
        log(
            f"loaded in {time.perf_counter() - started:.1f}s on {handle.device}; "
            f"fingerprint {handle.fingerprint.short}"
        )
        bos = [handle.model.config.bos_token_id]
        query = word_ids(handle.tokenizer, args.query_tokens, seed=args.seed + 1)
        # Warm up kernels and allocator so the first measured run is not penalised.
        first_token(handle, bos + query)

        runs = []
        for n in sizes:
            memory = bos + word_ids(handle.tokenizer, n - 1, seed=args.seed + n)
            ids = memory + query
            log(f"memory {n} tokens: prompt run ({args.new_tokens} greedy tokens)")
            in_prompt = greedy_generate(handle, ids, max_new_tokens=args.new_tokens, stop_ids=set())
            prompt_times = [in_prompt.ttft_s]
            for _ in range(args.repeats - 1):
                prompt_times.append(first_token(handle, ids)[1])
            log(f"  prompt ttft {statistics.median(prompt_times):.3f}s; building the KV artifact")
            path = root / f"kv-{n}.safetensors"
            info = kv_build_and_save(handle, memory, path)

            def kv_ttft(
                path: Path = path, ids: list[int] = ids, ids_hash: str = info.token_ids_sha256
            ) -> tuple[float, float]:
                sync(handle.device)
                t0 = time.perf_counter()
                prefix = kv_load(path, handle=handle, expected_token_ids_sha256=ids_hash)
                loaded = time.perf_counter() - t0
                first_token(handle, ids, kv=prefix)
                sync(handle.device)
                return time.perf_counter() - t0, loaded

            kv_samples = [kv_ttft() for _ in range(max(args.repeats, 3))]
            prefix = kv_load(path, handle=handle)
            injected = greedy_generate(handle, ids, max_new_tokens=args.new_tokens, kv=prefix, stop_ids=set())
            prompt_s = statistics.median(prompt_times)
            kv_s = statistics.median(s for s, _ in kv_samples)
            runs.append(
                {
                    "memory_tokens": n,
                    "query_tokens": args.query_tokens,
                    "prompt_ttft_s": round(prompt_s, 4),
                    "kv_ttft_s": round(kv_s, 4),
                    "reduction": round(1 - kv_s / prompt_s, 4),
                    "identical": injected.kv_used and injected.token_ids == in_prompt.token_ids,
                    "greedy_tokens_compared": len(in_prompt.token_ids),
                    "kv_load_s": round(statistics.median(s for _, s in kv_samples), 4),
                    "build_s": round(info.build_s, 3),
                    "artifact_bytes": info.file_bytes,
                    "artifact_bytes_per_token": round(info.bytes_per_token, 1),
                    "kv_bytes_per_token_theory": handle.layout.bytes_per_token(handle.dtype),
                    "prompt_ttft_samples_s": [round(t, 4) for t in prompt_times],
                    "kv_ttft_samples_s": [round(s, 4) for s, _ in kv_samples],
                }
            )
            log(
                f"  kv ttft {kv_s:.3f}s, reduction {runs[-1]['reduction']:.1%}, "
                f"identical {runs[-1]['identical']}"
            )
            path.unlink()

    layout = handle.layout
    print(
        json.dumps(
            {
                "benchmark": "kv_ttft",
                "model": {
                    "architecture": handle.fingerprint.architecture,
                    "layers": layout.num_layers,
                    "kv_heads": layout.num_kv_heads,
                    "head_dim": layout.head_dim,
                    "hidden_size": handle.model.config.hidden_size,
                    "parameters": sum(p.numel() for p in handle.model.parameters()),
                    "config": args.config or "Qwen2-0.5B dimensions (built in)",
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
                "runs": runs,
            },
            indent=2,
        )
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
