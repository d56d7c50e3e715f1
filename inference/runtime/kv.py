"""KV prefixes: build once, store as safetensors with identity metadata, inject a fresh copy per request.

The MemOS defects this module is shaped against: a stored cache mutated by generation (it grew every
turn), merged caches silently dropped on newer transformers, no model identity recorded with a cache, and
`pickle.load` on cache files. Here a stored `KVPrefix` is never handed to the model: each request gets its
own `DynamicCache` whose tensors are fresh allocations; the artifact is a safetensors file whose header
names the model fingerprint, the adapter, the exact token ids (hash, and the ids themselves), dtype and
layout; loading refuses anything that does not match the model it is loaded for.

Layout: transformers 5 `DynamicCache` keeps one `DynamicLayer` per decoder layer with `keys`/`values` of
shape [batch, kv_heads, seq, head_dim]; the artifact stores batch 1 of each as `layers.{i}.keys/values`.
Sliding-window and linear-attention layers keep only part of the past, so they cannot carry a prefix and
such models are refused.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from inference.runtime.errors import KVCacheRefused
from inference.runtime.fingerprint import token_ids_sha256
from inference.runtime.registry import KVLayout, ModelHandle

KV_FORMAT = "memhub-kv/1"
KV_LAYOUT = "dynamic-cache/[batch=1,kv_heads,seq,head_dim]"
NO_ADAPTER = ""


@dataclass(frozen=True)
class KVPrefix:
    """A built or loaded prefix. Treated as immutable: requests only ever see copies of its tensors."""

    token_ids: tuple[int, ...]
    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    model_fingerprint: str
    adapter_sha256: str
    dtype: str
    layout: KVLayout
    token_ids_sha256: str

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def applies_to(self, token_ids: Sequence[int]) -> bool:
        """A request may use this prefix only if its tokens start with the cached ids exactly and at least
        one token is left to run (the model needs an input to produce the first logits)."""
        n = self.num_tokens
        return len(token_ids) > n and tuple(token_ids[:n]) == self.token_ids


@dataclass(frozen=True)
class KVArtifactInfo:
    path: Path
    file_sha256: str
    file_bytes: int
    num_tokens: int
    token_ids_sha256: str
    model_fingerprint: str
    adapter_sha256: str
    dtype: str
    build_s: float

    @property
    def bytes_per_token(self) -> float:
        return self.file_bytes / max(self.num_tokens, 1)


def _require_full_attention(cache: DynamicCache) -> list[DynamicLayer]:
    kinds = {type(layer).__name__ for layer in cache.layers}
    if kinds != {DynamicLayer.__name__}:
        raise KVCacheRefused(
            f"This model's cache has {sorted(kinds)} layers; a KV prefix needs full-attention layers only "
            "(sliding-window and linear-attention layers drop part of the past).",
            {"layer_types": sorted(kinds)},
        )
    return [layer for layer in cache.layers if isinstance(layer, DynamicLayer)]


def _kv(layer: DynamicLayer) -> tuple[torch.Tensor, torch.Tensor]:
    if layer.keys is None or layer.values is None:
        raise KVCacheRefused("A cache layer holds no keys/values (the model skipped it).")
    return layer.keys, layer.values


def kv_build(handle: ModelHandle, token_ids: Sequence[int], *, adapter_sha256: str = NO_ADAPTER) -> KVPrefix:
    """Run the prefix once (no grad) and keep the per-layer keys and values."""
    if not token_ids:
        raise KVCacheRefused("A KV prefix needs at least one token.")
    if len(token_ids) >= handle.max_positions:
        raise KVCacheRefused(
            f"The prefix has {len(token_ids)} tokens; the model takes at most {handle.max_positions}."
        )
    ids = torch.tensor([list(token_ids)], dtype=torch.long, device=handle.device)
    with handle.lock, torch.inference_mode():
        cache = DynamicCache(config=handle.model.config)
        handle.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        pairs = [_kv(layer) for layer in _require_full_attention(cache)]
        keys = tuple(k.detach().clone() for k, _ in pairs)
        values = tuple(v.detach().clone() for _, v in pairs)
    return KVPrefix(
        token_ids=tuple(int(t) for t in token_ids),
        keys=keys,
        values=values,
        model_fingerprint=handle.fingerprint.fingerprint,
        adapter_sha256=adapter_sha256,
        dtype=handle.dtype_name,
        layout=handle.layout,
        token_ids_sha256=token_ids_sha256(list(token_ids)),
    )


def _metadata(prefix: KVPrefix) -> dict[str, str]:
    return {
        "format": KV_FORMAT,
        "layout": KV_LAYOUT,
        "model_fingerprint": prefix.model_fingerprint,
        "adapter_sha256": prefix.adapter_sha256,
        "token_ids_sha256": prefix.token_ids_sha256,
        "num_tokens": str(prefix.num_tokens),
        "dtype": prefix.dtype,
        "num_layers": str(prefix.layout.num_layers),
        "num_kv_heads": str(prefix.layout.num_kv_heads),
        "head_dim": str(prefix.layout.head_dim),
        "transformers_version": transformers.__version__,
    }


def kv_save(prefix: KVPrefix, path: str | os.PathLike[str], *, build_s: float = 0.0) -> KVArtifactInfo:
    """Write atomically (temp file + rename) so a reader never sees a half-written artifact."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {"token_ids": torch.tensor(prefix.token_ids, dtype=torch.int64)}
    for i, (k, v) in enumerate(zip(prefix.keys, prefix.values, strict=True)):
        tensors[f"layers.{i}.keys"] = k[0].contiguous().cpu()
        tensors[f"layers.{i}.values"] = v[0].contiguous().cpu()
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata=_metadata(prefix))
    os.replace(tmp, target)
    digest = hashlib.sha256()
    with target.open("rb") as fh:
        while chunk := fh.read(4 * 1024 * 1024):
            digest.update(chunk)
    return KVArtifactInfo(
        path=target,
        file_sha256=digest.hexdigest(),
        file_bytes=target.stat().st_size,
        num_tokens=prefix.num_tokens,
        token_ids_sha256=prefix.token_ids_sha256,
        model_fingerprint=prefix.model_fingerprint,
        adapter_sha256=prefix.adapter_sha256,
        dtype=prefix.dtype,
        build_s=build_s,
    )


def kv_build_and_save(
    handle: ModelHandle,
    token_ids: Sequence[int],
    path: str | os.PathLike[str],
    *,
    adapter_sha256: str = NO_ADAPTER,
) -> KVArtifactInfo:
    started = time.perf_counter()
    prefix = kv_build(handle, token_ids, adapter_sha256=adapter_sha256)
    return kv_save(prefix, path, build_s=time.perf_counter() - started)


def read_kv_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The header only (no tensor is read): enough to refuse a foreign artifact cheaply."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            return dict(fh.metadata() or {})
    except (OSError, ValueError, SafetensorError) as exc:
        raise KVCacheRefused(f"{Path(path).name} is not a readable safetensors KV artifact: {exc}") from exc


def _check_identity(meta: dict[str, str], handle: ModelHandle, adapter_sha256: str) -> int:
    if meta.get("format") != KV_FORMAT or meta.get("layout") != KV_LAYOUT:
        raise KVCacheRefused(
            f"Unknown KV artifact format {meta.get('format')!r}/{meta.get('layout')!r}; expected {KV_FORMAT}."
        )
    if meta.get("model_fingerprint") != handle.fingerprint.fingerprint:
        raise KVCacheRefused(
            "This KV cache was built for another model "
            f"(fingerprint {str(meta.get('model_fingerprint'))[:16]}…, this worker serves "
            f"{handle.fingerprint.short}… {handle.fingerprint.architecture}).",
            {
                "artifact_fingerprint": meta.get("model_fingerprint"),
                "model_fingerprint": handle.fingerprint.fingerprint,
            },
        )
    if meta.get("adapter_sha256", NO_ADAPTER) != adapter_sha256:
        raise KVCacheRefused(
            "This KV cache was built with a different LoRA adapter active.",
            {"artifact_adapter": meta.get("adapter_sha256"), "active_adapter": adapter_sha256},
        )
    if meta.get("dtype") != handle.dtype_name:
        raise KVCacheRefused(
            f"This KV cache holds {meta.get('dtype')} tensors; the model runs in {handle.dtype_name}."
        )
    layout = handle.layout
    found = (meta.get("num_layers"), meta.get("num_kv_heads"), meta.get("head_dim"))
    if found != (str(layout.num_layers), str(layout.num_kv_heads), str(layout.head_dim)):
        raise KVCacheRefused(f"KV layout {found} does not match the model's {layout}.")
    try:
        return int(meta["num_tokens"])
    except (KeyError, ValueError):
        raise KVCacheRefused("KV artifact metadata lacks num_tokens.") from None


def kv_load(
    path: str | os.PathLike[str],
    *,
    handle: ModelHandle,
    adapter_sha256: str = NO_ADAPTER,
    expected_token_ids_sha256: str | None = None,
) -> KVPrefix:
    """Load and validate an artifact for `handle`. Refuses other models, adapters, dtypes, layouts and
    any artifact whose token ids do not hash to what its header (or the caller) says."""
    meta = read_kv_metadata(path)
    num_tokens = _check_identity(meta, handle, adapter_sha256)
    if expected_token_ids_sha256 is not None and meta.get("token_ids_sha256") != expected_token_ids_sha256:
        raise KVCacheRefused(
            "This KV cache was built for other tokens.",
            {"artifact_tokens": meta.get("token_ids_sha256"), "expected_tokens": expected_token_ids_sha256},
        )
    layout = handle.layout
    expected_names = {"token_ids"} | {
        f"layers.{i}.{kind}" for i in range(layout.num_layers) for kind in ("keys", "values")
    }
    shape = [layout.num_kv_heads, num_tokens, layout.head_dim]
    device = str(handle.device)
    with safe_open(str(path), framework="pt", device=device) as fh:
        if set(fh.keys()) != expected_names:
            raise KVCacheRefused("KV artifact tensors do not match its declared layout.")
        token_ids = fh.get_tensor("token_ids").cpu().tolist()
        keys, values = [], []
        for i in range(layout.num_layers):
            k, v = fh.get_tensor(f"layers.{i}.keys"), fh.get_tensor(f"layers.{i}.values")
            if (
                list(k.shape) != shape
                or list(v.shape) != shape
                or str(k.dtype) != f"torch.{handle.dtype_name}"
            ):
                raise KVCacheRefused(f"KV artifact layer {i} has shape {list(k.shape)}, expected {shape}.")
            keys.append(k.unsqueeze(0))
            values.append(v.unsqueeze(0))
    digest = token_ids_sha256(token_ids)
    if len(token_ids) != num_tokens or digest != meta.get("token_ids_sha256"):
        raise KVCacheRefused("KV artifact token ids do not match their recorded hash (damaged file?).")
    return KVPrefix(
        token_ids=tuple(token_ids),
        keys=tuple(keys),
        values=tuple(values),
        model_fingerprint=meta["model_fingerprint"],
        adapter_sha256=meta.get("adapter_sha256", NO_ADAPTER),
        dtype=meta["dtype"],
        layout=layout,
        token_ids_sha256=digest,
    )


def kv_request_cache(prefix: KVPrefix, handle: ModelHandle) -> DynamicCache:
    """A per-request cache holding copies of the prefix tensors.

    `DynamicLayer.update` concatenates onto an empty tensor, which allocates; the aliasing check below
    keeps that guarantee if a future transformers stops copying, because generation appends to these
    layers and the stored prefix must never change.
    """
    if prefix.model_fingerprint != handle.fingerprint.fingerprint:
        raise KVCacheRefused("This KV cache was built for another model.")
    cache = DynamicCache(
        ddp_cache_data=list(zip(prefix.keys, prefix.values, strict=True)), config=handle.model.config
    )
    for layer, k, v in zip(_require_full_attention(cache), prefix.keys, prefix.values, strict=True):
        keys, values = _kv(layer)
        if keys.data_ptr() == k.data_ptr() or values.data_ptr() == v.data_ptr():
            layer.keys, layer.values = k.clone(), v.clone()
    return cache
