"""Model identity without loading the model: architecture, config, weight and tokenizer hashes.

A KV cache or an adapter is only meaningful for the exact weights that produced it (MemOS recorded no
model identity with its caches). The fingerprint is computed from files on disk, so the web process and a
publisher's machine can compute it without torch, and it is stable across `save_pretrained` round trips
of the same weights (config keys that only describe the saving library are left out).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from inference.runtime.errors import ModelUnavailable

# Keys that change with the library version or the load call but not with the model's behaviour.
_VOLATILE_CONFIG_KEYS = frozenset(
    {
        "_name_or_path",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "use_cache",
        "_commit_hash",
        "_attn_implementation_autoset",
        "_attn_implementation",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
    }
)
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)
# Weight formats that unpickle on load: refused everywhere (a model file crosses a trust boundary).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

_CHUNK = 4 * 1024 * 1024
_file_hash_cache: dict[tuple[str, int, int], str] = {}
_file_hash_lock = threading.Lock()


@dataclass(frozen=True)
class ModelFingerprint:
    architecture: str
    model_type: str
    config_sha256: str
    weights_sha256: str
    tokenizer_sha256: str
    fingerprint: str  # sha256 over the four above: the one value artifacts are keyed by

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    @property
    def short(self) -> str:
        return self.fingerprint[:16]


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, memoised per (path, size, mtime) so a worker hashes a large model once."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _file_hash_lock:
        cached = _file_hash_cache.get(key)
    if cached:
        return cached
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    with _file_hash_lock:
        _file_hash_cache[key] = digest
    return digest


def config_identity(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in sorted(config.items()) if k not in _VOLATILE_CONFIG_KEYS}


def read_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise ModelUnavailable(f"No config.json in {model_dir}: expected a Hugging Face model directory.")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"Unreadable config.json in {model_dir}: {exc}") from exc


def weight_files(model_dir: Path) -> list[Path]:
    files = sorted(p for p in model_dir.glob("*.safetensors") if p.is_file())
    if not files:
        pickled = [p.name for p in model_dir.iterdir() if p.suffix in PICKLE_SUFFIXES]
        hint = f" (found {', '.join(pickled)}: pickle formats are refused)" if pickled else ""
        raise ModelUnavailable(f"No *.safetensors weights in {model_dir}{hint}.")
    return files


def fingerprint_model_dir(model_dir: str | os.PathLike[str]) -> ModelFingerprint:
    root = Path(model_dir)
    if not root.is_dir():
        raise ModelUnavailable(f"Model path {root} is not a directory.")
    config = read_config(root)
    architectures = config.get("architectures") or [config.get("model_type", "unknown")]
    weights = hashlib.sha256()
    for path in weight_files(root):
        weights.update(f"{path.name}\0{sha256_file(path)}\n".encode())
    tok = hashlib.sha256()
    for name in _TOKENIZER_FILES:
        path = root / name
        if path.is_file():
            tok.update(f"{name}\0{sha256_file(path)}\n".encode())
    parts = {
        "architecture": str(architectures[0]),
        "model_type": str(config.get("model_type", "")),
        "config_sha256": hashlib.sha256(canonical_json(config_identity(config))).hexdigest(),
        "weights_sha256": weights.hexdigest(),
        "tokenizer_sha256": tok.hexdigest(),
    }
    return ModelFingerprint(**parts, fingerprint=hashlib.sha256(canonical_json(parts)).hexdigest())


def token_ids_sha256(token_ids: list[int] | tuple[int, ...]) -> str:
    """Hash of an exact token sequence (little-endian int64s), the key of a KV prefix."""
    h = hashlib.sha256()
    for start in range(0, len(token_ids), 65536):
        chunk = token_ids[start : start + 65536]
        h.update(b"".join(int(t).to_bytes(8, "little", signed=True) for t in chunk))
    return h.hexdigest()


def files_signature(model_dir: str | os.PathLike[str]) -> str:
    """Names, sizes and mtimes of a model's files: cheap to compute, changes whenever the files do, so a
    stored fingerprint can be reused at start-up without re-hashing gigabytes."""
    root = Path(model_dir)
    if not root.is_dir():
        raise ModelUnavailable(f"Model path {root} is not a directory.")
    entries = []
    for path in sorted(root.iterdir()):
        if path.is_file():
            st = path.stat()
            entries.append(f"{path.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def max_positions(model_dir: str | os.PathLike[str]) -> int:
    config = read_config(Path(model_dir))
    nested = config.get("text_config")
    text: dict[str, Any] = nested if isinstance(nested, dict) else config
    return int(text.get("max_position_embeddings") or 2048)
