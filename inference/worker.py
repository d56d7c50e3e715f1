"""The worker side of a chat request, KV build, adapter validation and distillation.

Imported lazily (by `services` when generation runs in-process, or by `tasks` on an inference worker):
this is where torch enters. Inputs and outputs are plain JSON-able dicts so the same functions run inline
or behind the `inference` Celery queue.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from inference import conf
from inference.prompting import MemoryBlock, Message, PromptPlan
from inference.runtime.distill import DistillConfig, distill_lora
from inference.runtime.errors import KVCacheRefused
from inference.runtime.generate import GenerationStats, TextStreamer, greedy_stream
from inference.runtime.kv import KVPrefix, kv_build_and_save, kv_load
from inference.runtime.lora import AdapterSpec, adapter_pool, adapter_validate
from inference.runtime.prompt import encode_prefix, encode_prompt, render_body
from inference.runtime.registry import ModelHandle, load_model, loaded_models

_prefixes: OrderedDict[tuple[str, str], KVPrefix] = OrderedDict()
_prefix_lock = threading.Lock()
_specs: dict[tuple[str, str], AdapterSpec] = {}


def clear_caches() -> None:
    """Forget resident prefixes and validated adapters (what a restarted worker process starts with)."""
    with _prefix_lock:
        _prefixes.clear()
    _specs.clear()


def handle_for(payload: dict[str, Any]) -> ModelHandle:
    threads = conf.torch_threads()
    if threads and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return load_model(payload["model_path"], dtype=payload.get("dtype"), device=payload.get("device"))


def forget(*, kv_paths: list[str], adapter_sha256s: list[str]) -> None:
    """Drop resident copies of erased artifacts: loaded prefixes, validated specs, adapter slots."""
    paths, shas = set(kv_paths), set(adapter_sha256s)
    with _prefix_lock:
        for key in [k for k in _prefixes if k[0] in paths]:
            del _prefixes[key]
    for key in [k for k in _specs if k[1] in shas]:
        del _specs[key]
    for handle in loaded_models():
        if handle.adapters is not None:
            for sha in shas:
                handle.adapters.evict(sha)


def _blocks(raw: list[dict[str, Any]]) -> list[MemoryBlock]:
    return [
        MemoryBlock(
            memory_id=b["memory_id"],
            title=b.get("title", ""),
            text=b["text"],
            namespace=b.get("namespace", ""),
            source=b.get("source", ""),
            licence=b.get("licence", ""),
        )
        for b in raw
    ]


def plan_for(payload: dict[str, Any]) -> PromptPlan:
    """The prompt a chat payload asks for (what `chat_stream` encodes)."""
    return PromptPlan(
        prefix_blocks=_blocks(payload.get("prefix_blocks", [])),
        context_blocks=_blocks(payload.get("context_blocks", [])),
        messages=[Message(m["role"], m["content"]) for m in payload["messages"]],
    )


def prompt_text(payload: dict[str, Any]) -> str:
    """The text a chat payload puts before the model (the prefix, then the templated body), before any
    low-ranked retrieved memory is dropped to fit the context."""
    handle = handle_for(payload)
    plan = plan_for(payload)
    return plan.prefix_text() + render_body(handle.tokenizer, plan)


def _prefix(handle: ModelHandle, kv: dict[str, Any]) -> KVPrefix:
    """Loaded prefixes stay resident (bounded by bytes, least recently used out): they are never mutated,
    every request copies them, so sharing one across requests is safe."""
    key = (kv["path"], kv.get("token_ids_sha256", ""))
    with _prefix_lock:
        cached = _prefixes.get(key)
        if cached is not None and cached.model_fingerprint == handle.fingerprint.fingerprint:
            _prefixes.move_to_end(key)
            return cached
    prefix = kv_load(
        kv["path"],
        handle=handle,
        adapter_sha256=kv.get("adapter_sha256", ""),
        expected_token_ids_sha256=kv.get("token_ids_sha256") or None,
    )
    with _prefix_lock:
        _prefixes[key] = prefix
        budget = conf.kv_resident_bytes()
        while len(_prefixes) > 1 and sum(p.nbytes for p in _prefixes.values()) > budget:
            _prefixes.popitem(last=False)
    return prefix


def _adapter(handle: ModelHandle, adapter: dict[str, Any]) -> AdapterSpec:
    key = (adapter["path"], adapter["sha256"])
    spec = _specs.get(key)
    if spec is None or spec.base_fingerprint != handle.fingerprint.fingerprint:
        spec = adapter_validate(adapter["path"], handle, max_rank=conf.lora_max_rank())
        if spec.sha256 != adapter["sha256"]:
            from inference.runtime.errors import AdapterRefused

            raise AdapterRefused("The adapter's files changed after it was installed.")
        _specs[key] = spec
    return spec


def _fit(
    handle: ModelHandle, plan: PromptPlan, max_new_tokens: int
) -> tuple[list[int], list[int], list[str]]:
    """Encode; if the exact token count overflows the context, drop the lowest-ranked retrieved memories."""
    limit = handle.max_positions - max_new_tokens
    dropped: list[str] = []
    while True:
        encoded = encode_prompt(handle.tokenizer, plan)
        if len(encoded.ids) <= limit or not plan.context_blocks:
            return encoded.prefix_ids, encoded.ids, dropped
        dropped.append(plan.context_blocks.pop().memory_id)


def chat_stream(
    payload: dict[str, Any], on_done: Callable[[dict[str, Any]], None] | None = None
) -> Iterator[str]:
    """Yield text deltas; `on_done` receives the summary (tokens, KV use, adapter, timings)."""
    handle = handle_for(payload)
    plan = plan_for(payload)
    max_new = int(payload["max_new_tokens"])
    summary: dict[str, Any] = {
        "kv_used": False,
        "kv_tokens": 0,
        "kv_skipped_reason": "",
        "adapter_used": None,
    }
    spec = _adapter(handle, payload["adapter"]) if payload.get("adapter") else None
    pool = adapter_pool(handle, max_resident=conf.lora_max_resident())
    prefix = None
    if payload.get("kv"):
        try:
            prefix = _prefix(handle, payload["kv"])
        except KVCacheRefused as exc:
            summary["kv_skipped_reason"] = exc.message
    prefix_ids, ids, dropped = _fit(handle, plan, max_new)
    if prefix is not None and prefix.token_ids != tuple(prefix_ids):
        summary["kv_skipped_reason"] = "the request's prefix tokens differ from the stored prefix's"
    stats = GenerationStats()
    streamer = TextStreamer(handle.tokenizer)
    with handle.lock:
        load_ms = pool.activate(spec)
        for token in greedy_stream(handle, ids, max_new_tokens=max_new, kv=prefix, stats=stats):
            delta = streamer.push(token)
            if delta:
                yield delta
    summary.update(
        {
            "text": streamer.text(),
            "prompt_tokens": stats.prompt_tokens,
            "completion_tokens": len(stats.token_ids),
            "finish_reason": stats.finish_reason,
            "kv_used": stats.kv_used,
            "kv_tokens": stats.kv_tokens,
            "kv_skipped_reason": summary["kv_skipped_reason"] or stats.kv_skipped_reason,
            "adapter_used": spec.sha256 if spec else None,
            "adapter_load_ms": round(load_ms, 3),
            "ttft_ms": round(stats.ttft_s * 1000, 3),
            "total_ms": round(stats.total_s * 1000, 3),
            "dropped_context": dropped,
            "model_fingerprint": handle.fingerprint.fingerprint,
        }
    )
    if on_done is not None:
        on_done(summary)


def chat_run(payload: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for _ in chat_stream(payload, on_done=result.update):
        pass
    return result


def kv_build(payload: dict[str, Any]) -> dict[str, Any]:
    handle = handle_for(payload)
    plan = PromptPlan(prefix_blocks=_blocks(payload["prefix_blocks"]))
    ids = encode_prefix(handle.tokenizer, plan)
    adapter = payload.get("adapter")
    pool = adapter_pool(handle, max_resident=conf.lora_max_resident())
    with handle.lock:
        pool.activate(_adapter(handle, adapter) if adapter else None)
        info = kv_build_and_save(
            handle, ids, Path(payload["path"]), adapter_sha256=adapter["sha256"] if adapter else ""
        )
    return {
        "token_ids_sha256": info.token_ids_sha256,
        "num_tokens": info.num_tokens,
        "file_bytes": info.file_bytes,
        "file_sha256": info.file_sha256,
        "build_s": info.build_s,
        "model_fingerprint": info.model_fingerprint,
        "dtype": info.dtype,
    }


def adapter_check(payload: dict[str, Any]) -> dict[str, Any]:
    handle = handle_for(payload)
    spec = adapter_validate(
        payload["path"],
        handle,
        declared_base_fingerprint=payload.get("declared_base"),
        max_rank=conf.lora_max_rank(),
    )
    return {
        "sha256": spec.sha256,
        "rank": spec.rank,
        "alpha": spec.alpha,
        "target_modules": list(spec.target_modules),
        "base_fingerprint": spec.base_fingerprint,
    }


def distill(payload: dict[str, Any], progress: Callable[[int, int, float], None]) -> dict[str, Any]:
    handle = handle_for(payload)
    cfg = DistillConfig(**payload.get("config", {}))
    result = distill_lora(
        handle,
        payload["text"],
        payload["out_dir"],
        config=cfg,
        progress=progress,
        source=payload.get("source"),
    )
    return {
        "adapter_dir": str(result.adapter_dir),
        "first_loss": result.first_loss,
        "final_loss": result.final_loss,
        "tokens": result.tokens,
        "steps": result.steps,
    }
