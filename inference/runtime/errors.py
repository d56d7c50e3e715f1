"""Refusals the runtime raises. They are `ApplicationError`s so the API answers them as 4xx JSON errors."""

from __future__ import annotations

from typing import Any

from core.errors import ApplicationError


class ModelUnavailable(ApplicationError):
    """The configured base model cannot be loaded (missing files, pickle-only weights, bad config)."""

    status = 503
    code = "model_unavailable"


class KVCacheRefused(ApplicationError):
    """A KV artifact does not belong to this model, these tokens or this layout, or is damaged."""

    status = 409
    code = "kv_cache_refused"


class AdapterRefused(ApplicationError):
    """A LoRA adapter is unsafe (not safetensors) or was not made for the loaded base model."""

    status = 422
    code = "adapter_refused"

    def __init__(self, message: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message, extra)
