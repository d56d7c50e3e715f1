"""LoRA adapter watermark: a keyed per-installation ±1 pattern, scaled to a small fraction of each
tensor's standard deviation, added to the adapter's LoRA matrices. Numpy and safetensors only.

Detection correlates the leaked weights with each candidate's pattern. With the publisher's original
release as reference (the marketplace keeps it) the residual `leaked - original` is the mark plus
whatever the leaker added, so even a tiny mark gives an overwhelming statistic; without a reference
the original weights act as noise and the statistic is about `strength * sqrt(n)`.

The statistic for a candidate is `z = sum(r * s) / sqrt(sum(r**2))`, where `r` is the residual (each
tensor divided by its standard deviation) and `s` the candidate's ±1 pattern. For an innocent
candidate `s` is independent of `r`, so by Hoeffding `P(z >= x) <= exp(-x**2 / 2)` whatever the weights
look like: that bound is the p-value, Bonferroni-corrected over candidates.

Patterns come from SHAKE-256 keyed by HMAC(key, installation, tensor name), not from numpy's RNG,
so a file marked today is still readable by a numpy released years from now.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from governance.watermark.keys import DOMAIN, _check_key, bonferroni

DEFAULT_STRENGTH = 0.01  # fraction of each tensor's std; see docs/governance/watermark.md for the cost
DEFAULT_ALPHA = 1e-4
MIN_ELEMENTS = 256  # tiny tensors (biases, scalars) carry too few bits to matter and are left alone

# --- safetensors I/O (with bfloat16, which safetensors.numpy cannot represent) ---------------------------

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "U16": np.uint16, "U32": np.uint32, "U64": np.uint64,
    "BOOL": np.bool_, "BF16": np.uint16,
}  # fmt: skip
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items() if k != "BF16"}


@dataclass
class AdapterFile:
    """Tensors as numpy arrays (bfloat16 widened to float32) with their on-disk dtypes and metadata."""

    tensors: dict[str, np.ndarray]
    dtypes: dict[str, str]
    metadata: dict[str, str] | None = None


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _f32_to_bf16(values: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + 0x7FFF  # round to nearest, ties to even
    return ((bits + rounding) >> 16).astype(np.uint16)


def load_adapter(data: bytes | str | Path) -> AdapterFile:
    """Parse a safetensors file (bytes or path)."""
    raw = Path(data).read_bytes() if isinstance(data, str | Path) else bytes(data)
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    metadata = header.pop("__metadata__", None)
    body = memoryview(raw)[8 + header_len :]
    tensors: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for name, info in header.items():
        dtype = info["dtype"]
        if dtype not in _DTYPES:
            raise ValueError(f"unsupported safetensors dtype {dtype!r} for {name!r}")
        start, end = info["data_offsets"]
        array = np.frombuffer(body[start:end], dtype=np.dtype(_DTYPES[dtype]).newbyteorder("<"))
        array = array.reshape(info["shape"])
        tensors[name] = _bf16_to_f32(array) if dtype == "BF16" else array.copy()
        dtypes[name] = dtype
    return AdapterFile(tensors, dtypes, metadata)


def dump_adapter(adapter: AdapterFile) -> bytes:
    """Serialise to safetensors (the format's spec: u64 header size, JSON header, aligned raw data)."""
    header: dict[str, Any] = {}
    chunks: list[bytes] = []
    offset = 0
    for name in sorted(adapter.tensors):
        array = adapter.tensors[name]
        dtype = adapter.dtypes.get(name) or _NAMES[array.dtype]
        if dtype == "BF16":
            data = _f32_to_bf16(array).astype("<u2").tobytes()
        else:
            data = np.ascontiguousarray(array, dtype=np.dtype(_DTYPES[dtype]).newbyteorder("<")).tobytes()
        header[name] = {
            "dtype": dtype,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    if adapter.metadata:
        header["__metadata__"] = adapter.metadata
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + b"".join(chunks)


# --- marking ---------------------------------------------------------------------------------------------

_PREFIX_RE = re.compile(r"^(?:base_model\.model\.)+")


def canonical_name(name: str) -> str:
    """Tensor names as peft writes them, whatever wrapper prefix or adapter name a copy carries."""
    return _PREFIX_RE.sub("", name).replace(".default.", ".")


def marked_names(tensors: Mapping[str, np.ndarray]) -> list[str]:
    """LoRA matrices when the file has any, otherwise every floating tensor; large enough and not constant."""
    floating = [
        n for n, a in tensors.items() if np.issubdtype(a.dtype, np.floating) and a.size >= MIN_ELEMENTS
    ]
    lora = [n for n in floating if "lora_" in n]
    return sorted(n for n in (lora or floating) if float(np.std(tensors[n])) > 0)


def pattern(key: bytes, installation_id: str, name: str, size: int) -> np.ndarray:
    """The installation's ±1 pattern for one tensor (int8, flat)."""
    seed = hmac.new(
        key,
        DOMAIN + b"/adapter/" + installation_id.encode() + b"/" + canonical_name(name).encode(),
        hashlib.sha256,
    ).digest()
    bits = np.unpackbits(np.frombuffer(hashlib.shake_256(seed).digest((size + 7) // 8), dtype=np.uint8))
    return (bits[:size].astype(np.int8) * 2 - 1).astype(np.int8)


def watermark_tensors(
    tensors: Mapping[str, np.ndarray], *, key: bytes, installation_id: str, strength: float = DEFAULT_STRENGTH
) -> dict[str, np.ndarray]:
    """A copy of `tensors` with the installation's mark added; other tensors are passed through."""
    _check_key(key)
    out = dict(tensors)
    for name in marked_names(tensors):
        array = tensors[name]
        work: np.ndarray = np.asarray(array, dtype=np.float32 if array.dtype.itemsize <= 4 else np.float64)
        sigma = float(np.std(work))
        mark = pattern(key, installation_id, name, work.size).reshape(work.shape)
        out[name] = (work + (strength * sigma) * mark).astype(array.dtype)
    return out


def watermark_adapter(
    data: bytes | str | Path, *, key: bytes, installation_id: str, strength: float = DEFAULT_STRENGTH
) -> bytes:
    """safetensors in, safetensors out (same names, shapes, dtypes and metadata)."""
    adapter = load_adapter(data)
    marked = watermark_tensors(adapter.tensors, key=key, installation_id=installation_id, strength=strength)
    return dump_adapter(AdapterFile(marked, adapter.dtypes, adapter.metadata))


# --- detection --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AdapterAttribution:
    installation_id: str | None  # accused, when adjusted_p_value <= alpha
    best_candidate: str | None
    z: float
    p_value: float  # Hoeffding bound for the best candidate alone
    log10_p_value: float  # the same bound in log10 (p underflows for strong marks)
    adjusted_p_value: float
    alpha: float
    candidates: int
    elements: int
    blind: bool
    ranking: tuple[tuple[str, float], ...]

    @property
    def accused(self) -> bool:
        return self.installation_id is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "installation_id": self.installation_id,
            "best_candidate": self.best_candidate,
            "z": round(self.z, 3),
            "p_value": self.p_value,
            "log10_p_value": round(self.log10_p_value, 2),
            "adjusted_p_value": self.adjusted_p_value,
            "alpha": self.alpha,
            "candidates": self.candidates,
            "elements": self.elements,
            "blind": self.blind,
            "ranking": [list(r) for r in self.ranking],
        }


def _residuals(
    tensors: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray] | None
) -> dict[str, np.ndarray]:
    leaked = {canonical_name(n): a for n, a in tensors.items()}
    if reference is None:
        names = marked_names(leaked)
        return {n: leaked[n].astype(np.float64).ravel() / float(np.std(leaked[n])) for n in names}
    ref = {canonical_name(n): a for n, a in reference.items()}
    out = {}
    for n in marked_names(ref):
        if n in leaked and leaked[n].shape == ref[n].shape:
            sigma = float(np.std(ref[n].astype(np.float64)))
            out[n] = (leaked[n].astype(np.float64) - ref[n].astype(np.float64)).ravel() / sigma
    return out


class AdapterDetector:
    """Scores adapters against a fixed candidate list; caches the candidates' patterns when they fit
    in `cache_bytes` (float32, four bytes per candidate per weight, so that scoring is one BLAS
    matrix-vector product), otherwise regenerates them per candidate."""

    def __init__(
        self,
        *,
        key: bytes,
        candidates: Sequence[str],
        reference: Mapping[str, np.ndarray] | None = None,
        alpha: float = DEFAULT_ALPHA,
        cache_bytes: int = 1 << 27,
    ) -> None:
        _check_key(key)
        self.key = key
        self.candidates = list(dict.fromkeys(candidates))
        self.reference = reference
        self.alpha = alpha
        self.cache_bytes = cache_bytes
        self._cache: dict[str, np.ndarray] = {}

    def _patterns(self, name: str, size: int) -> np.ndarray | None:
        cached = self._cache.get(name)
        if cached is not None and cached.shape[1] == size:
            return cached
        used = sum(a.nbytes for a in self._cache.values())
        if used + 4 * size * len(self.candidates) > self.cache_bytes:
            return None
        matrix = np.stack([pattern(self.key, c, name, size) for c in self.candidates]).astype(np.float32)
        self._cache[name] = matrix
        return matrix

    def detect(self, tensors: Mapping[str, np.ndarray]) -> AdapterAttribution:
        residual = _residuals(tensors, self.reference)
        energy = math.sqrt(sum(float(np.dot(r, r)) for r in residual.values()))
        elements = sum(r.size for r in residual.values())
        dots = np.zeros(len(self.candidates), dtype=np.float64)
        for name, r in residual.items():
            matrix = self._patterns(name, r.size)
            if matrix is not None:
                dots += matrix @ r.astype(np.float32)
            else:
                dots += np.array(
                    [float(np.dot(r, pattern(self.key, c, name, r.size))) for c in self.candidates]
                )
        z_all = dots / energy if energy > 0 else dots * 0.0
        order = np.argsort(-z_all)
        best = self.candidates[int(order[0])] if len(order) else None
        z = float(z_all[order[0]]) if len(order) else 0.0
        log10_p = -(max(z, 0.0) ** 2) / 2 / math.log(10)
        p = 10**log10_p
        adjusted = bonferroni(p, len(self.candidates))
        return AdapterAttribution(
            installation_id=best if best is not None and adjusted <= self.alpha else None,
            best_candidate=best,
            z=z,
            p_value=p,
            log10_p_value=log10_p,
            adjusted_p_value=adjusted,
            alpha=self.alpha,
            candidates=len(self.candidates),
            elements=elements,
            blind=self.reference is None,
            ranking=tuple((self.candidates[int(i)], round(float(z_all[i]), 3)) for i in order[:5]),
        )


def detect_adapter(
    tensors: Mapping[str, np.ndarray],
    *,
    key: bytes,
    candidates: Sequence[str],
    reference: Mapping[str, np.ndarray] | None = None,
    alpha: float = DEFAULT_ALPHA,
) -> AdapterAttribution:
    """Which candidate installation's adapter is this? `reference`: the unmarked release, if available."""
    return AdapterDetector(key=key, candidates=candidates, reference=reference, alpha=alpha).detect(tensors)
