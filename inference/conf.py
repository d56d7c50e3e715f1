"""Inference settings, read with defaults so the app works before config/settings names them.

Every value is looked up on django.conf.settings first; MEMHUB_MODEL_PATH (and its dtype/device) also
fall back to the environment, which is how `make run` is told to generate.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.conf import settings


def _get(name: str, default: Any) -> Any:
    return getattr(settings, name, default)


def model_path() -> str:
    return str(_get("MEMHUB_MODEL_PATH", "") or os.environ.get("MEMHUB_MODEL_PATH", "")).strip()


def model_name() -> str:
    explicit = _get("MEMHUB_MODEL_NAME", "") or os.environ.get("MEMHUB_MODEL_NAME", "")
    return str(explicit or Path(model_path()).name or "default")


def model_dtype() -> str:
    return str(_get("MEMHUB_MODEL_DTYPE", "") or os.environ.get("MEMHUB_MODEL_DTYPE", "") or "float32")


def model_device() -> str | None:
    return (_get("MEMHUB_MODEL_DEVICE", "") or os.environ.get("MEMHUB_MODEL_DEVICE", "")) or None


def inline() -> bool:
    """Run generation in this process (embedded default) rather than on the `inference` Celery queue."""
    return bool(_get("MEMHUB_INFERENCE_INLINE", True))


def queue_timeout_s() -> float:
    return float(_get("MEMHUB_INFERENCE_TIMEOUT_S", 120))


def artifact_dir() -> Path:
    default = Path(str(_get("DATA_DIR", "var"))) / "inference"
    return Path(str(_get("MEMHUB_INFERENCE_DIR", "") or default))


def context_tokens() -> int:
    return int(_get("MEMHUB_CONTEXT_TOKENS", 4096))


def max_new_tokens() -> int:
    return int(_get("MEMHUB_CHAT_MAX_NEW_TOKENS", 512))


def default_new_tokens() -> int:
    return int(_get("MEMHUB_CHAT_DEFAULT_NEW_TOKENS", 128))


def max_messages() -> int:
    return int(_get("MEMHUB_CHAT_MAX_MESSAGES", 100))


def max_chars() -> int:
    return int(_get("MEMHUB_CHAT_MAX_CHARS", 32_000))


def top_k() -> int:
    return int(_get("MEMHUB_CHAT_TOP_K", 8))


def kv_promote_after() -> int:
    """Uses of a pack (with one base model) after which the scheduler builds its KV prefix."""
    return int(_get("MEMHUB_KV_PROMOTE_AFTER", 3))


def kv_demote_after_s() -> float:
    """A KV prefix unused this long is deleted and its packs go back to plaintext."""
    return float(_get("MEMHUB_KV_DEMOTE_AFTER_S", 7 * 24 * 3600))


def kv_max_prefix_tokens() -> int:
    return int(_get("MEMHUB_KV_MAX_PREFIX_TOKENS", 8192))


def kv_resident_bytes() -> int:
    return int(_get("MEMHUB_KV_RESIDENT_BYTES", 2 * 1024**3))


LORA_MAX_RESIDENT_DEFAULT = 8
ADAPTER_MAX_BYTES_DEFAULT = 256 * 1024 * 1024


def lora_max_resident() -> int:
    """Adapters kept loaded on a model at once (least recently used out); the production pool size."""
    return int(
        _get("MEMHUB_LORA_MAX_RESIDENT", 0)
        or os.environ.get("MEMHUB_LORA_MAX_RESIDENT", 0)
        or LORA_MAX_RESIDENT_DEFAULT
    )


def adapter_max_bytes() -> int:
    """The most an adapter upload may hold, all its files together (larger: 413, nothing written)."""
    return int(
        _get("MEMHUB_ADAPTER_MAX_BYTES", 0)
        or os.environ.get("MEMHUB_ADAPTER_MAX_BYTES", 0)
        or ADAPTER_MAX_BYTES_DEFAULT
    )


def lora_max_rank() -> int:
    return int(_get("MEMHUB_LORA_MAX_RANK", 256))


def distill_max_steps() -> int:
    return int(_get("MEMHUB_DISTILL_MAX_STEPS", 2000))


def torch_threads() -> int:
    """CPU threads for torch in a worker (0: torch's default). On a CPU shared with other processes one
    thread per worker avoids OpenMP stalls that hit short forwards (decode, KV-prefixed queries) hardest."""
    return int(_get("MEMHUB_TORCH_THREADS", 0) or os.environ.get("MEMHUB_TORCH_THREADS", 0) or 0)
