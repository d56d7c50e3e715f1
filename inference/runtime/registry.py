"""Base models loaded once per worker process, with their fingerprint.

A worker serves one device; loading a multi-GB model per request would dominate latency, so handles are
cached per (path, dtype, device). Weights load through `from_pretrained(..., use_safetensors=True)` exactly
as users load theirs, which never unpickles anything.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

from inference.runtime.errors import ModelUnavailable
from inference.runtime.fingerprint import ModelFingerprint, files_signature, fingerprint_model_dir

_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


@dataclass(frozen=True)
class KVLayout:
    """Shape of one token's keys/values: what a stored KV prefix must match to be injected."""

    num_layers: int
    num_kv_heads: int
    head_dim: int

    def bytes_per_token(self, dtype: torch.dtype) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype.itemsize


@dataclass
class ModelHandle:
    path: Path
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    fingerprint: ModelFingerprint
    dtype: torch.dtype
    device: torch.device
    # Serialises generation and adapter switching: peft's active adapter is global model state.
    lock: threading.RLock = field(default_factory=threading.RLock)
    adapters: Any = None  # AdapterPool, attached lazily by inference.runtime.lora

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def layout(self) -> KVLayout:
        return kv_layout(self.model.config)

    @property
    def max_positions(self) -> int:
        cfg = self.model.config.get_text_config(decoder=True)
        return int(getattr(cfg, "max_position_embeddings", 0) or 2048)

    def eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.model.config, self.tokenizer):
            value = getattr(source, "eos_token_id", None)
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return ids


def kv_layout(config: Any) -> KVLayout:
    cfg = config.get_text_config(decoder=True)
    heads = int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    return KVLayout(
        int(cfg.num_hidden_layers), int(getattr(cfg, "num_key_value_heads", None) or heads), head_dim
    )


def resolve_dtype(name: str | torch.dtype | None) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name in (None, "", "auto"):
        return torch.float32
    try:
        return _DTYPES[str(name).removeprefix("torch.")]
    except KeyError:
        raise ModelUnavailable(f"Unsupported dtype '{name}'; use one of {sorted(_DTYPES)}.") from None


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


_cache: dict[tuple[str, str, str], tuple[str, ModelHandle]] = {}
_cache_lock = threading.Lock()


def load_model(
    path: str | os.PathLike[str],
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> ModelHandle:
    """The process-wide handle for a model directory, loading it on first use."""
    root = Path(path).resolve()
    torch_dtype = resolve_dtype(dtype)
    dev = torch.device(device) if device is not None else default_device()
    key = (str(root), str(torch_dtype), str(dev))
    # Names, sizes and mtimes of the files: if they changed, the directory holds another model now, and
    # serving the old weights under the new fingerprint would mislabel every artifact built from them.
    signature = files_signature(root)
    with _cache_lock:
        cached = _cache.get(key)
        if cached is None or cached[0] != signature:
            _cache[key] = (signature, _load(root, torch_dtype, dev))
        return _cache[key][1]


def _load(root: Path, dtype: torch.dtype, device: torch.device) -> ModelHandle:
    fingerprint = fingerprint_model_dir(root)  # also refuses pickle-only weights, before any load
    try:
        tokenizer = load_tokenizer(root)
        model = AutoModelForCausalLM.from_pretrained(
            root,
            dtype=dtype,
            local_files_only=True,
            use_safetensors=True,
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelUnavailable(f"Could not load the model at {root}: {exc}") from exc
    # transformers types `to` through a decorator mypy cannot see through; it is nn.Module.to.
    model.to(device)  # type: ignore[arg-type]
    model.eval()
    model.requires_grad_(False)
    return ModelHandle(
        path=root, model=model, tokenizer=tokenizer, fingerprint=fingerprint, dtype=dtype, device=device
    )


def load_tokenizer(root: Path) -> PreTrainedTokenizerBase:
    """AutoTokenizer, unless it rebuilt the tokenizer with a different algorithm than the files declare.

    transformers 5 forces its own tokenizer class for some model types (qwen2, phi3, ...) on the theory
    that hub metadata is wrong; with a WordPiece tokenizer.json under a qwen2 config that silently yields a
    character-level BPE. A local model directory means what its files say, so when the algorithm of the
    loaded tokenizer differs from tokenizer.json's, the class declared in tokenizer_config.json is used.
    """
    tokenizer = AutoTokenizer.from_pretrained(root, local_files_only=True)
    declared_algo = _json_get(root / "tokenizer.json", "model", "type")
    backend = getattr(tokenizer, "backend_tokenizer", None)
    loaded_algo = type(backend.model).__name__ if backend is not None else None
    declared_class = _json_get(root / "tokenizer_config.json", "tokenizer_class")
    if declared_algo and loaded_algo and declared_algo != loaded_algo and isinstance(declared_class, str):
        cls = tokenizer_class_from_name(declared_class)
        if cls is not None:
            tokenizer = cls.from_pretrained(root, local_files_only=True)
    return tokenizer


def _json_get(path: Path, *keys: str) -> Any:
    if not path.is_file():
        return None
    try:
        value: Any = json.loads(path.read_text())
    except ValueError:
        return None
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def loaded_models() -> list[ModelHandle]:
    with _cache_lock:
        return [handle for _, handle in _cache.values()]


def unload_all() -> None:
    """Drop every cached handle (tests, and a worker told to switch models)."""
    with _cache_lock:
        _cache.clear()
