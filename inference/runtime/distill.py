"""Plaintext-to-parameter memory: train a LoRA adapter on a pack's text (MemOS's distillation path).

A short causal-LM fine-tune of LoRA weights only, on windows of the pack text, against a private copy of
the base model (training never touches the model that serves requests). The result is a standard peft
adapter directory (safetensors) plus `memhub_adapter.json` naming the base model's fingerprint, so the
installer accepts it only for the model it was trained on.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from inference.runtime.errors import AdapterRefused
from inference.runtime.lora import ADAPTER_SIDECAR, _linear_modules
from inference.runtime.registry import ModelHandle

ProgressCallback = Callable[[int, int, float], None]  # (step, total_steps, loss)

# Attention projections first: adapting them is the usual LoRA recipe and keeps adapters small.
_PREFERRED_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class DistillConfig:
    rank: int = 8
    alpha: int = 16
    steps: int = 60
    learning_rate: float = 2e-3
    seq_len: int = 128
    batch_size: int = 4
    seed: int = 0
    target_modules: tuple[str, ...] = ()  # empty: the model's attention projections


@dataclass
class DistillResult:
    adapter_dir: Path
    steps: int
    tokens: int
    first_loss: float
    final_loss: float
    seconds: float
    losses: list[float] = field(default_factory=list)


def default_targets(model: torch.nn.Module) -> tuple[str, ...]:
    leaf_names = {name.rsplit(".", 1)[-1] for name in _linear_modules(model)}
    preferred = tuple(t for t in _PREFERRED_TARGETS if t in leaf_names)
    if preferred:
        return preferred
    return tuple(sorted(leaf_names - {"lm_head"}))


def _windows(ids: list[int], bos: list[int], seq_len: int) -> list[list[int]]:
    body = seq_len - len(bos)
    step = max(body // 2, 1)  # half-overlapping windows: every token is seen with some left context
    starts = range(0, max(len(ids) - body, 0) + 1, step)
    return [bos + ids[s : s + body] for s in starts]


def distill_lora(
    handle: ModelHandle,
    text: str,
    out_dir: str | os.PathLike[str],
    *,
    config: DistillConfig | None = None,
    progress: ProgressCallback | None = None,
    source: dict[str, str] | None = None,
) -> DistillResult:
    cfg = config or DistillConfig()
    tokenizer = handle.tokenizer
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < 8:
        raise AdapterRefused("The pack has too little text to distil (fewer than 8 tokens).")
    bos = [handle.model.config.bos_token_id] if handle.model.config.bos_token_id is not None else []
    windows = _windows(ids, bos, min(cfg.seq_len, handle.max_positions))

    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    # A private copy in float32: the served model stays frozen and untouched, and fp32 trains stably.
    base = AutoModelForCausalLM.from_pretrained(
        handle.path, dtype=torch.float32, local_files_only=True, use_safetensors=True
    ).to(handle.device)  # type: ignore[arg-type]
    targets = cfg.target_modules or default_targets(base)
    lora = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        target_modules=list(targets),
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
        bias="none",
    )
    model = get_peft_model(base, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(cfg.seed)
    losses: list[float] = []
    for step in range(1, cfg.steps + 1):
        picks = torch.randint(
            len(windows), (min(cfg.batch_size, len(windows)),), generator=generator
        ).tolist()
        batch = [windows[i] for i in picks]
        width = max(len(w) for w in batch)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        input_ids = torch.tensor([w + [pad] * (width - len(w)) for w in batch], device=handle.device)
        mask = torch.tensor([[1] * len(w) + [0] * (width - len(w)) for w in batch], device=handle.device)
        labels = input_ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        if not math.isfinite(loss.item()):
            raise AdapterRefused(f"Distillation diverged at step {step} (loss {loss.item()}).")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(float(loss.item()))
        if progress is not None:
            progress(step, cfg.steps, losses[-1])

    target = Path(out_dir)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    (tmp / "README.md").unlink(missing_ok=True)
    sidecar = {
        "base_model_fingerprint": handle.fingerprint.fingerprint,
        "base_model_architecture": handle.fingerprint.architecture,
        "method": "distillation",
        "source_text_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "source": source or {},
        "config": {**asdict(cfg), "target_modules": list(targets)},
        "tokens": len(ids),
        "first_loss": losses[0],
        "final_loss": losses[-1],
    }
    (tmp / ADAPTER_SIDECAR).write_text(json.dumps(sidecar, indent=2, sort_keys=True))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return DistillResult(
        adapter_dir=target,
        steps=cfg.steps,
        tokens=len(ids),
        first_loss=losses[0],
        final_loss=losses[-1],
        seconds=time.perf_counter() - started,
        losses=losses,
    )
