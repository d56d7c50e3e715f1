"""Installing LoRA adapters for a namespace: uploads (streamed to disk, capped) and distilled ones.

Only `adapter_config.json`, `adapter_model.safetensors` and `memhub_adapter.json` are accepted; the files
are copied in chunks into a private staging directory, validated by the worker (architecture, targets,
shapes, rank, declared base fingerprint) and only then recorded, so a refused or oversized adapter leaves
no row and no files behind. Adapters live content-addressed under the artifact directory.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from django.db import transaction

from accounts.models import Namespace
from core.errors import ApplicationError, NotFound
from governance.audit import audit_record
from governance.policy import Action, Subject, authorize
from inference import conf
from inference.models import ArtifactStatus, BaseModel, InstalledAdapter
from inference.runtime.errors import AdapterRefused
from inference.services.registry import base_model_required, worker_module, worker_payload

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "memhub_adapter.json")
COPY_CHUNK_BYTES = 1024 * 1024

AdapterFile = bytes | IO[bytes]


def adapter_upload_too_large(*, field: str, limit: int) -> ApplicationError:
    """The one answer to an adapter over the cap (the upload handler and the service both give it)."""
    return ApplicationError(
        f"The adapter upload exceeds the limit of {limit} bytes (MEMHUB_ADAPTER_MAX_BYTES) at '{field}'.",
        {"field": field, "limit_bytes": limit},
        status=413,
        code="too_large",
    )


def adapter_namespace(*, subject: Subject, namespace_key: str) -> Namespace:
    namespace = Namespace.objects.filter(key=namespace_key).first()
    if namespace is None:
        raise NotFound(f"Namespace '{namespace_key}' not found.")
    # ADMIN: the owner of an installation (or an org admin) decides what is installed into it.
    authorize(subject=subject, action=Action.ADMIN, namespace=namespace)
    return namespace


def _declared_size(content: AdapterFile) -> int | None:
    if isinstance(content, bytes):
        return len(content)
    size = getattr(content, "size", None)
    return size if isinstance(size, int) else None


def _write_capped(target: Path, content: AdapterFile, *, field: str, used: int, limit: int) -> int:
    """Copy one file to disk in chunks; returns the bytes written so far across the upload."""
    with target.open("wb") as out:
        if isinstance(content, bytes):
            out.write(content)
            return used + len(content)
        while chunk := content.read(COPY_CHUNK_BYTES):
            used += len(chunk)
            if used > limit:  # a stream that did not say its size, or lied about it
                raise adapter_upload_too_large(field=field, limit=limit)
            out.write(chunk)
    return used


def adapter_install(
    *,
    subject: Subject,
    namespace_key: str,
    files: Mapping[str, AdapterFile],
    name: str = "",
    declared_base_fingerprint: str | None = None,
    source: str = "upload",
) -> InstalledAdapter:
    """Install a published LoRA adapter for a namespace, validated against the served base model.

    `files` maps each file name to its bytes or a binary file object (an upload already on disk is
    copied in chunks, never read whole). Over `MEMHUB_ADAPTER_MAX_BYTES` in all: 413, nothing written.
    """
    namespace = adapter_namespace(subject=subject, namespace_key=namespace_key)
    model = base_model_required()
    unknown = sorted(set(files) - set(ADAPTER_FILES))
    if unknown:
        raise AdapterRefused(
            f"Unexpected adapter file(s) {', '.join(unknown)}; an adapter is "
            "adapter_model.safetensors + adapter_config.json (pickle formats are refused)."
        )
    limit = conf.adapter_max_bytes()
    declared = 0
    for filename, content in files.items():
        declared += _declared_size(content) or 0
        if declared > limit:
            raise adapter_upload_too_large(field=filename, limit=limit)
    staging = conf.artifact_dir() / "adapters" / f"incoming-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    try:
        used = 0
        for filename, content in files.items():
            used = _write_capped(staging / filename, content, field=filename, used=used, limit=limit)
        return adapter_register(
            subject=subject,
            namespace=namespace,
            model=model,
            staging=staging,
            name=name,
            declared_base=declared_base_fingerprint,
            source=source,
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def adapter_register(
    *,
    subject: Subject | None,
    namespace: Namespace,
    model: BaseModel,
    staging: Path,
    name: str,
    declared_base: str | None,
    source: str,
) -> InstalledAdapter:
    """Validate a staged adapter directory on the worker and record it (once per namespace and sha)."""
    check = worker_module().adapter_check(
        {**worker_payload(model), "path": str(staging), "declared_base": declared_base}
    )
    final = conf.artifact_dir() / "adapters" / model.fingerprint[:16] / check["sha256"]
    if not final.exists():
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staging, final)
    with transaction.atomic():
        adapter, created = InstalledAdapter.objects.get_or_create(
            namespace=namespace,
            base_model=model,
            sha256=check["sha256"],
            defaults={
                "name": name[:200],
                "path": str(final),
                "rank": check["rank"],
                "alpha": check["alpha"],
                "target_modules": check["target_modules"],
                "source": source,
                "status": ArtifactStatus.READY,
                "installed_by": subject.user if subject and subject.is_user else None,
            },
        )
        if created:
            audit_record(
                actor=subject,
                operation="inference.adapter.install",
                namespace=namespace,
                object_type="adapter",
                object_ids=[str(adapter.id)],
                memory_kind="parameter",
                details={
                    "sha256": adapter.sha256,
                    "rank": adapter.rank,
                    "source": source,
                    "model_fingerprint": model.fingerprint,
                },
            )
    return adapter
