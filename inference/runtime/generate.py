"""Greedy decoding with an optional KV prefix, as a token stream with timing.

A hand-written loop rather than `model.generate` so that time to first token is measured exactly where it
ends (the first argmax), the stream can be consumed token by token for server-sent events, and the
prefix decision (used or not, and why) is recorded with the result.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from inference.runtime.kv import KVPrefix, kv_request_cache
from inference.runtime.registry import ModelHandle


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    kv_tokens: int = 0  # prompt tokens served from an injected prefix
    kv_used: bool = False
    kv_skipped_reason: str = ""
    ttft_s: float = 0.0
    total_s: float = 0.0
    finish_reason: str = ""
    token_ids: list[int] = field(default_factory=list)


def _supports_logits_to_keep(model: torch.nn.Module) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def greedy_stream(
    handle: ModelHandle,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int,
    kv: KVPrefix | None = None,
    stats: GenerationStats | None = None,
    stop_ids: set[int] | None = None,
    before_first_forward: Callable[[], None] | None = None,
) -> Iterator[int]:
    """Yield greedy tokens. The model lock is held for the whole stream (adapter state is global)."""
    stats = stats if stats is not None else GenerationStats()
    stats.prompt_tokens = len(prompt_ids)
    stop = handle.eos_ids() if stop_ids is None else stop_ids
    model = handle.model
    extra = {"logits_to_keep": 1} if _supports_logits_to_keep(model) else {}
    started = time.perf_counter()
    with handle.lock, torch.inference_mode():
        if before_first_forward is not None:
            before_first_forward()
        start = 0
        if kv is not None and kv.applies_to(prompt_ids):
            cache = kv_request_cache(kv, handle)
            start = kv.num_tokens
            stats.kv_used, stats.kv_tokens = True, kv.num_tokens
        else:
            if kv is not None:
                stats.kv_skipped_reason = "request tokens do not start with the cached token ids"
            cache = DynamicCache(config=model.config)
        inputs = torch.tensor([list(prompt_ids[start:])], dtype=torch.long, device=handle.device)
        for step in range(max_new_tokens):
            out = model(input_ids=inputs, past_key_values=cache, use_cache=True, **extra)
            token = int(out.logits[0, -1].argmax())
            if step == 0:
                stats.ttft_s = time.perf_counter() - started
            stats.token_ids.append(token)
            yield token
            if token in stop:
                stats.finish_reason = "stop"
                break
            inputs = torch.tensor([[token]], dtype=torch.long, device=handle.device)
        else:
            stats.finish_reason = "length"
    stats.total_s = time.perf_counter() - started


def greedy_generate(
    handle: ModelHandle,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int,
    kv: KVPrefix | None = None,
    stop_ids: set[int] | None = None,
) -> GenerationStats:
    stats = GenerationStats()
    for _ in greedy_stream(
        handle, prompt_ids, max_new_tokens=max_new_tokens, kv=kv, stats=stats, stop_ids=stop_ids
    ):
        pass
    return stats


def first_token(
    handle: ModelHandle, prompt_ids: Sequence[int], *, kv: KVPrefix | None = None
) -> tuple[int, float]:
    """(first token, seconds): the time-to-first-token measurement used by the benchmark."""
    stats = GenerationStats()
    token = next(
        iter(greedy_stream(handle, prompt_ids, max_new_tokens=1, kv=kv, stats=stats, stop_ids=set()))
    )
    return token, stats.ttft_s


class TextStreamer:
    """Turns a token stream into text deltas without splitting multi-token characters or words."""

    def __init__(self, tokenizer, skip_special_tokens: bool = True) -> None:  # type: ignore[no-untyped-def]
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.emitted = ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=self.skip)
        # A trailing replacement character means a byte sequence is still incomplete: wait for more.
        if text.endswith("\ufffd") or not text.startswith(self.emitted):
            return ""
        delta, self.emitted = text[len(self.emitted) :], text
        return delta

    def text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=self.skip)
