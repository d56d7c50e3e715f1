"""The served base model: registered (fingerprinted, no torch) on first use, and the worker entry point.

The web process never imports torch from here. Generation, KV builds, adapter checks and distillation go
through `inference.worker`, imported lazily by `worker_module()`: in this process when
`MEMHUB_INFERENCE_INLINE` (the embedded default), else on the `inference` Celery queue.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from django.db import transaction

from governance.audit import audit_record
from inference import conf
from inference.models import BaseModel
from inference.runtime.errors import ModelUnavailable
from inference.runtime.fingerprint import files_signature, fingerprint_model_dir, max_positions


def base_model_current() -> BaseModel | None:
    """The configured generator's row, registered (or refreshed if its files changed) on first use.

    Returns None when no model is configured: the API then answers in retrieval-only mode.
    """
    path = conf.model_path()
    if not path:
        return None
    root = Path(path)
    signature = files_signature(root)
    existing = BaseModel.objects.filter(name=conf.model_name()).first()
    if existing and existing.path == str(root) and existing.files_signature == signature:
        return existing
    return base_model_register(path=str(root), name=conf.model_name())


@transaction.atomic
def base_model_register(*, path: str, name: str) -> BaseModel:
    """Fingerprint a model directory (hashing its files; no torch) and record it under `name`."""
    root = Path(path)
    fp = fingerprint_model_dir(root)
    fields = {
        "path": str(root),
        "architecture": fp.architecture,
        "model_type": fp.model_type,
        "config_sha256": fp.config_sha256,
        "weights_sha256": fp.weights_sha256,
        "tokenizer_sha256": fp.tokenizer_sha256,
        "fingerprint": fp.fingerprint,
        "files_signature": files_signature(root),
        "max_positions": max_positions(root),
    }
    model, created = BaseModel.objects.select_for_update().update_or_create(name=name, defaults=fields)
    if created:
        audit_record(
            actor=None,
            operation="inference.model.register",
            object_type="base_model",
            object_ids=[str(model.id)],
            details={"fingerprint": fp.fingerprint, "path": str(root), "architecture": fp.architecture},
        )
    return model


def base_model_required() -> BaseModel:
    model = base_model_current()
    if model is None:
        raise ModelUnavailable("No generator is configured on this instance (MEMHUB_MODEL_PATH is not set).")
    return model


def worker_payload(model: BaseModel) -> dict[str, Any]:
    """What every worker call needs to find the model it runs on."""
    return {"model_path": model.path, "dtype": conf.model_dtype(), "device": conf.model_device()}


def worker_module() -> ModuleType:
    from inference import worker  # torch enters here, and only here, in the web process

    return worker
