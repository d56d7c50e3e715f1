"""LoRA adapters: validate against the loaded base model, keep a bounded LRU resident, switch per request.

An adapter is accepted only as `adapter_config.json` + `adapter_model.safetensors` (any pickle format in
the directory is refused), and only if it fits the loaded model: LoRA type, rank within bounds, every
target module present, every tensor's shape matching the layer it adapts, and, where the publisher
declared one (`memhub_adapter.json` or the caller), the exact base-model fingerprint. An adapter for a
different base model is refused with a message naming both models rather than loading into garbage.

Resident adapters live in peft slots injected into the served model (no PeftModel wrapper, so the
model object and the KV prefixes built from it stay the same). Switching is `set_adapter` on the cached
list of tuner layers; loading into a full pool hot-swaps the least recently used slot's weights when the
rank and targets agree (no new modules), else deletes the slot and injects a new one.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer, delete_adapter
from peft.utils.hotswap import hotswap_adapter_from_state_dict
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from inference.runtime.errors import AdapterRefused
from inference.runtime.fingerprint import PICKLE_SUFFIXES
from inference.runtime.registry import ModelHandle

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_SIDECAR = "memhub_adapter.json"  # base fingerprint and provenance written by MemHub
_PEFT_PREFIX = "base_model.model."
DEFAULT_MAX_RANK = 256
_slot_numbers = itertools.count()
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}


@dataclass(frozen=True)
class AdapterSpec:
    """A validated adapter. `sha256` (of the weights file) is its identity and its KV-cache key part."""

    path: Path
    sha256: str
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    base_fingerprint: str  # the served model's fingerprint it was validated against
    num_tensors: int
    nbytes: int
    declared: dict[str, Any] = field(default_factory=dict)

    @property
    def slot_compatible_key(self) -> tuple[int, tuple[str, ...]]:
        return self.rank, self.target_modules


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(4 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AdapterRefused(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise AdapterRefused(f"{what} must be a JSON object.")
    return value


def _linear_modules(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """Adaptable layers by name, seen through any LoRA wrapper already injected."""
    found: dict[str, torch.nn.Linear] = {}
    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            base = module.get_base_layer()
            if isinstance(base, torch.nn.Linear):
                found[name] = base
        elif isinstance(module, torch.nn.Linear) and ".base_layer" not in name and ".lora_" not in name:
            found[name] = module
    return found


def _targets(config: dict[str, Any]) -> tuple[str, ...]:
    raw = config.get("target_modules")
    if isinstance(raw, str):
        return (raw,)
    if isinstance(raw, list) and raw and all(isinstance(t, str) for t in raw):
        return tuple(sorted(raw))
    raise AdapterRefused("adapter_config.json must name its target_modules (a list of module names).")


def adapter_validate(
    adapter_dir: str | os.PathLike[str],
    handle: ModelHandle,
    *,
    declared_base_fingerprint: str | None = None,
    max_rank: int = DEFAULT_MAX_RANK,
) -> AdapterSpec:
    root = Path(adapter_dir)
    if not root.is_dir():
        raise AdapterRefused(f"Adapter path {root} is not a directory.")
    pickled = sorted(p.name for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise AdapterRefused(
            f"Adapter contains {', '.join(pickled)}: pickle formats are refused; publish "
            f"{ADAPTER_WEIGHTS} + {ADAPTER_CONFIG}.",
            {"files": pickled},
        )
    config_path, weights_path = root / ADAPTER_CONFIG, root / ADAPTER_WEIGHTS
    for required in (config_path, weights_path):
        if not required.is_file():
            raise AdapterRefused(
                f"Adapter lacks {required.name}; an adapter is {ADAPTER_WEIGHTS} + {ADAPTER_CONFIG}."
            )
    config = _read_json(config_path, ADAPTER_CONFIG)
    sidecar = (
        _read_json(root / ADAPTER_SIDECAR, ADAPTER_SIDECAR) if (root / ADAPTER_SIDECAR).is_file() else {}
    )

    served = handle.fingerprint
    expected_base = declared_base_fingerprint or sidecar.get("base_model_fingerprint")
    if expected_base and expected_base != served.fingerprint:
        declared_arch = sidecar.get("base_model_architecture", "an unknown architecture")
        raise AdapterRefused(
            f"This adapter was made for another base model ({declared_arch}, fingerprint "
            f"{str(expected_base)[:16]}…); this worker serves {served.architecture} "
            f"(fingerprint {served.short}…).",
            {"adapter_base_fingerprint": expected_base, "model_fingerprint": served.fingerprint},
        )
    declared_arch = sidecar.get("base_model_architecture")
    if declared_arch and declared_arch != served.architecture:
        raise AdapterRefused(
            f"This adapter was made for {declared_arch}; this worker serves {served.architecture}."
        )

    if config.get("peft_type") != "LORA":
        raise AdapterRefused(f"Only LoRA adapters are served (peft_type {config.get('peft_type')!r}).")
    if config.get("modules_to_save"):
        raise AdapterRefused("Adapters that replace whole modules (modules_to_save) are not accepted.")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= max_rank:
        raise AdapterRefused(f"LoRA rank r={rank!r} must be an integer between 1 and {max_rank}.")
    alpha = config.get("lora_alpha", rank)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        raise AdapterRefused("lora_alpha must be a number.")
    targets = _targets(config)

    layers = _linear_modules(handle.model)
    for target in targets:
        if not any(name == target or name.endswith(f".{target}") for name in layers):
            raise AdapterRefused(
                f"Target module '{target}' does not exist in {served.architecture}: this adapter was made "
                "for another base model.",
                {"target_module": target},
            )

    rank_pattern = config.get("rank_pattern") or {}
    num_tensors = 0
    nbytes = 0
    try:
        with safe_open(str(weights_path), framework="pt", device="cpu") as fh:
            names = list(fh.keys())
            for key in names:
                tensor_slice = fh.get_slice(key)
                shape = list(tensor_slice.get_shape())
                nbytes += _numel(shape) * _DTYPE_BYTES.get(tensor_slice.get_dtype(), 4)
                module_name, kind = _split_lora_key(key)
                layer = layers.get(module_name)
                if layer is None:
                    raise AdapterRefused(
                        f"Adapter tensor '{key}' adapts '{module_name}', which {served.architecture} does "
                        "not have: this adapter was made for another base model.",
                        {"tensor": key},
                    )
                r = _rank_for(module_name, rank_pattern, rank)
                want = [r, layer.in_features] if kind == "lora_A" else [layer.out_features, r]
                if shape != want:
                    raise AdapterRefused(
                        f"Adapter tensor '{key}' has shape {shape} but {served.architecture}'s "
                        f"'{module_name}' needs {want}: this adapter was made for another base model.",
                        {"tensor": key, "shape": shape, "expected": want},
                    )
                num_tensors += 1
    except (OSError, SafetensorError) as exc:
        raise AdapterRefused(f"{ADAPTER_WEIGHTS} is not a readable safetensors file: {exc}") from exc
    if num_tensors == 0:
        raise AdapterRefused(f"{ADAPTER_WEIGHTS} holds no LoRA tensors.")
    return AdapterSpec(
        path=root,
        sha256=_sha256_file(weights_path),
        rank=rank,
        alpha=float(alpha),
        target_modules=targets,
        base_fingerprint=served.fingerprint,
        num_tensors=num_tensors,
        nbytes=nbytes,
        declared=sidecar,
    )


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _split_lora_key(key: str) -> tuple[str, str]:
    """'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'
    -> ('model.layers.0.self_attn.q_proj', 'lora_A')"""
    name = key.removeprefix(_PEFT_PREFIX)
    for kind in ("lora_A", "lora_B"):
        marker = f".{kind}."
        if marker in name and name.endswith(".weight"):
            return name.split(marker)[0], kind
    raise AdapterRefused(
        f"Unexpected tensor '{key}' in a LoRA adapter (only lora_A/lora_B weights).", {"tensor": key}
    )


def _rank_for(module_name: str, rank_pattern: dict[str, Any], default: int) -> int:
    for pattern, r in rank_pattern.items():
        if module_name == pattern or module_name.endswith(f".{pattern}"):
            return int(r)
    return default


@dataclass
class _Slot:
    name: str
    spec: AdapterSpec


class AdapterPool:
    """The adapters resident on one model, at most `max_resident`, least recently used evicted first."""

    def __init__(self, handle: ModelHandle, *, max_resident: int = 8) -> None:
        if max_resident < 1:
            raise ValueError("max_resident must be at least 1")
        self.handle = handle
        self.max_resident = max_resident
        self._slots: OrderedDict[str, _Slot] = OrderedDict()  # adapter sha256 -> slot, LRU order
        self._tuner_layers: list[Any] = []  # peft LoRA layers (BaseTunerLayer and nn.Module)
        self._fast_switch = False
        self._active: str | None = None  # adapter sha256, None for the base model
        self.loads = 0
        self.hotswaps = 0
        self.evictions = 0

    @property
    def resident(self) -> list[str]:
        return list(self._slots)

    @property
    def active(self) -> str | None:
        return self._active

    def _refresh_layers(self) -> None:
        self._tuner_layers = [m for m in self.handle.model.modules() if isinstance(m, BaseTunerLayer)]
        self._fast_switch = self._fast_switch_agrees()

    def _fast_switch_agrees(self) -> bool:
        """Does setting the two fields do what peft's public switch does, on this peft version?"""
        if not self._tuner_layers:
            return False
        layer = self._tuner_layers[0]
        if not hasattr(layer, "_active_adapter") or not hasattr(layer, "_disable_adapters"):
            return False
        name = next(iter(layer.lora_A.keys()), None)
        if name is None:
            return False
        saved = (layer._active_adapter, layer._disable_adapters)
        layer.enable_adapters(True)
        layer.set_adapter(name, inference_mode=True)
        agrees = layer.active_adapters == [name] and layer.disable_adapters is False
        layer.enable_adapters(False)
        agrees = agrees and layer.disable_adapters is True
        layer._active_adapter, layer._disable_adapters = saved
        for adapter_layer in self._tuner_layers:  # the public calls above may have unfrozen weights
            for param_name, param in adapter_layer.named_parameters():
                if "lora_" in param_name:
                    param.requires_grad_(False)
        return agrees

    def _state_dict(self, spec: AdapterSpec, slot: str | None = None) -> dict[str, torch.Tensor]:
        raw = load_file(str(spec.path / ADAPTER_WEIGHTS), device=str(self.handle.device))
        out: dict[str, torch.Tensor] = {}
        for key, tensor in raw.items():
            name = key.removeprefix(_PEFT_PREFIX)
            if slot is not None:  # hotswap addresses the slot's parameters by their full name
                name = name.replace(".lora_A.weight", f".lora_A.{slot}.weight").replace(
                    ".lora_B.weight", f".lora_B.{slot}.weight"
                )
            out[name] = tensor.to(self.handle.dtype)
        return out

    def _lora_config(self, spec: AdapterSpec) -> LoraConfig:
        config = LoraConfig.from_pretrained(str(spec.path))
        config.inference_mode = True
        return config

    def ensure_resident(self, spec: AdapterSpec) -> tuple[str, float]:
        """Make the adapter resident; returns (slot name, milliseconds spent loading, 0 if it was)."""
        if spec.base_fingerprint != self.handle.fingerprint.fingerprint:
            raise AdapterRefused("This adapter was validated against another base model.")
        slot = self._slots.get(spec.sha256)
        if slot is not None:
            self._slots.move_to_end(spec.sha256)
            return slot.name, 0.0
        started = time.perf_counter()
        with self.handle.lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peft warns about multiple adapters, which is the point here
            if len(self._slots) >= self.max_resident:
                victim_sha, victim = self._slots.popitem(last=False)
                self.evictions += 1
                if victim.spec.slot_compatible_key == spec.slot_compatible_key:
                    # Same rank and targets: overwrite the slot's weights in place, no module surgery.
                    hotswap_adapter_from_state_dict(
                        self.handle.model,
                        self._state_dict(spec, victim.name),
                        adapter_name=victim.name,
                        config=self._lora_config(spec),
                    )
                    self.hotswaps += 1
                    self._slots[spec.sha256] = _Slot(victim.name, spec)
                    if self._active == victim_sha:
                        self._active = None
                        self._set_layers(None)
                    return victim.name, (time.perf_counter() - started) * 1000
                self._delete_slot(victim.name)
                if self._active == victim_sha:
                    self._active = None
            name = f"slot{next(_slot_numbers)}"  # unique per process: pools on one model never collide
            # low_cpu_mem_usage: create the LoRA weights empty and take the file's tensors, instead of
            # initialising random weights only to overwrite them.
            inject_adapter_in_model(
                self._lora_config(spec), self.handle.model, adapter_name=name, low_cpu_mem_usage=True
            )
            result: Any = set_peft_model_state_dict(
                self.handle.model, self._state_dict(spec), adapter_name=name, low_cpu_mem_usage=True
            )
            missing = [k for k in result.missing_keys if ".lora_" in k and f".{name}." in k]
            if result.unexpected_keys or missing:
                self._delete_slot(name)
                self._refresh_layers()
                raise AdapterRefused(
                    f"Adapter tensors did not load: {(result.unexpected_keys or missing)[:3]}",
                    {"unexpected": result.unexpected_keys[:10], "missing": missing[:10]},
                )
            self.loads += 1
            self._slots[spec.sha256] = _Slot(name, spec)
            self._refresh_layers()
            active = self._slots.get(self._active) if self._active is not None else None
            self._set_layers(active.name if active is not None else None)
        return name, (time.perf_counter() - started) * 1000

    def _delete_slot(self, name: str) -> None:
        delete_adapter(self.handle.model, adapter_name=name, prefix="lora_")
        # peft leaves the slot's config on the model; drop it so evictions do not accumulate configs.
        getattr(self.handle.model, "peft_config", {}).pop(name, None)

    def evict(self, sha256: str) -> bool:
        """Unload one adapter (an erased one must not stay resident). True if it was loaded."""
        with self.handle.lock:
            slot = self._slots.pop(sha256, None)
            if slot is None:
                return False
            if self._active == sha256:
                self._active = None
                self._set_layers(None)
            self._delete_slot(slot.name)
            self._refresh_layers()
            active = self._slots.get(self._active) if self._active is not None else None
            self._set_layers(active.name if active is not None else None)
            return True

    def clear(self) -> None:
        """Remove every resident adapter from the model (the base model serves afterwards)."""
        with self.handle.lock:
            self._set_layers(None)
            for slot in list(self._slots.values()):
                self._delete_slot(slot.name)
            self._slots.clear()
            self._active = None
            self._refresh_layers()

    def _set_layers(self, slot: str | None) -> None:
        """Point every tuner layer at `slot` (None: base model only).

        peft's `set_adapter`/`enable_adapters` also rewrite `requires_grad` on every adapter parameter of
        every layer, which is training bookkeeping and dominates switch time with many resident adapters.
        Resident adapters are frozen at load, so switching only needs the two fields those methods end
        with; `_fast_switch` is confirmed against the public API whenever layers change.
        """
        if self._fast_switch:
            for layer in self._tuner_layers:
                layer._disable_adapters = slot is None
                if slot is not None:
                    layer._active_adapter = [slot] if slot in layer.lora_A else []
            return
        for layer in self._tuner_layers:
            if slot is None:
                layer.enable_adapters(False)
            else:
                layer.enable_adapters(True)
                # A layer without this slot (other targets) must still run base-only for this request.
                layer.set_adapter(slot if slot in layer.lora_A else [], inference_mode=True)

    def activate(self, spec: AdapterSpec | None) -> float:
        """Select the adapter for the next forward passes (None: the base model). Returns load ms."""
        with self.handle.lock:
            load_ms = 0.0
            if spec is None:
                slot = None
            else:
                slot, load_ms = self.ensure_resident(spec)
            self._set_layers(slot)
            self._active = spec.sha256 if spec is not None else None
            return load_ms

    @contextmanager
    def using(self, spec: AdapterSpec | None) -> Iterator[float]:
        with self.handle.lock:
            yield self.activate(spec)


def adapter_pool(handle: ModelHandle, *, max_resident: int = 8) -> AdapterPool:
    """The process's pool for a model handle (one per loaded model)."""
    with handle.lock:
        if handle.adapters is None:
            handle.adapters = AdapterPool(handle, max_resident=max_resident)
        return handle.adapters
