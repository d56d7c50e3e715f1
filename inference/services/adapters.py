"""Installing LoRA adapters for a namespace: uploads (streamed to disk, capped) and distilled ones.

Only `adapter_config.json`, `adapter_model.safetensors` and `memhub_adapter.json` are accepted; the files
are copied in chunks into a private staging directory, validated by the worker (architecture, targets,
shapes, rank, declared base fingerprint) and only then recorded, so a refused or oversized adapter leaves
no row and no files behind. Adapters live content-addressed under the artifact directory.
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

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


# --- adapters shipped in marketplace packs -----------------------------------------------------------------

PACK_SOURCE = "pack"
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")
SUSPENDED_MARK = "suspended: "


def pack_adapter_dir(blob_uri: str) -> Path | None:
    """Where a pack's adapter lives: `blob_uri` is a directory (or `file://` URI) holding
    `adapter_model.safetensors` and `adapter_config.json`, or the path of the safetensors file itself."""
    raw = blob_uri[len("file://") :] if blob_uri.startswith("file://") else blob_uri
    if not raw:
        return None
    path = Path(raw)
    if path.is_file() and path.name == "adapter_model.safetensors":
        path = path.parent
    if (path / "adapter_model.safetensors").is_file() and (path / "adapter_config.json").is_file():
        return path
    return None


def pack_adapters_install(*, installation: Any, model: BaseModel) -> dict[str, list[str]]:
    """Register the LoRA adapters an installation's release ships (its `parameter` memories), each
    watermarked for this installation (`governance.watermark.adapter`, keyed by the publisher's
    watermark key and the installation's watermark id), validated against `model`. Idempotent: an
    adapter already registered for the namespace and model is kept. A refused adapter (wrong base model,
    bad files, checksum mismatch) is skipped with its reason; the others still install."""
    import hashlib

    from governance.watermark import watermark_adapter
    from governance.watermarking import watermark_key
    from vault.models import LIVE_STATES, MemCube, MemoryKind

    namespace = installation.namespace
    key = watermark_key(installation.release.pack.publisher.namespace)
    installed: list[str] = []
    refused: list[str] = []
    cubes = MemCube.objects.filter(namespace=namespace, kind=MemoryKind.PARAMETER, state__in=LIVE_STATES)
    for cube in cubes.order_by("created_at", "id"):
        source = pack_adapter_dir(cube.blob_uri)
        if source is None:
            refused.append(f"{cube.provenance_id}: adapter files not found at {cube.blob_uri!r}")
            continue
        weights = (source / "adapter_model.safetensors").read_bytes()
        if cube.blob_sha256 and hashlib.sha256(weights).hexdigest() != cube.blob_sha256:
            refused.append(f"{cube.provenance_id}: adapter_model.safetensors does not match blob_sha256")
            continue
        staging = conf.artifact_dir() / "adapters" / f"incoming-{uuid.uuid4().hex}"
        staging.mkdir(parents=True)
        try:
            (staging / "adapter_model.safetensors").write_bytes(
                watermark_adapter(weights, key=key, installation_id=installation.watermark_id)
            )
            for extra in ("adapter_config.json", "memhub_adapter.json"):
                if (source / extra).is_file():
                    shutil.copyfile(source / extra, staging / extra)
            adapter = adapter_register(
                subject=None,
                namespace=namespace,
                model=model,
                staging=staging,
                name=(cube.title or f"{installation.release.pack} adapter")[:200],
                # A publisher names the base by fingerprint (64 hex) or, unverified, by name only.
                declared_base=cube.model_fingerprint if _FINGERPRINT.match(cube.model_fingerprint) else None,
                source=PACK_SOURCE,
            )
            installed.append(str(adapter.id))
        except ApplicationError as exc:
            refused.append(f"{cube.provenance_id}: {exc.message}")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if refused:
        audit_record(
            actor=None,
            operation="inference.adapter.refused",
            namespace=namespace,
            object_type="installation",
            object_ids=[str(installation.pk)],
            memory_kind="parameter",
            details={"refused": refused[:20]},
        )
    return {"adapters": installed, "refused": refused}


def namespace_adapters_suspend(*, namespace: Namespace, reason: str) -> int:
    """Stop using a namespace's adapters (licence suspended): they leave `ready`, files kept."""
    return InstalledAdapter.objects.filter(namespace=namespace, status=ArtifactStatus.READY).update(
        status=ArtifactStatus.DEMOTED, error=(SUSPENDED_MARK + reason)[:2000]
    )


def namespace_adapters_resume(*, namespace: Namespace) -> int:
    """Use again the adapters a suspension stopped (and only those)."""
    return InstalledAdapter.objects.filter(
        namespace=namespace, status=ArtifactStatus.DEMOTED, error__startswith=SUSPENDED_MARK
    ).update(status=ArtifactStatus.READY, error="")


def installation_artifacts_sync(*, installation_id: Any) -> dict[str, Any]:
    """What inference does for a ready installation: register its adapters (if the licence allows the
    LoRA form) and schedule KV prefix builds of its own watermarked text for the base models the buyer
    uses (if it allows KV). No generator configured: nothing to do."""
    from inference.services.kv import kv_schedule_for_namespace
    from inference.services.registry import base_model_current
    from marketplace.models import Installation, InstallationStatus

    installation = (
        Installation.objects.select_related(
            "namespace", "licence", "release__pack__publisher__namespace", "user"
        )
        .filter(pk=installation_id)
        .first()
    )
    if installation is None or installation.status != InstallationStatus.READY:
        return {"skipped": "not a ready installation"}
    if installation.namespace.suspended_reason:
        return {"skipped": "namespace suspended"}
    model = base_model_current()
    if model is None:
        return {"skipped": "no generator configured"}
    forms = list(installation.licence.forms if installation.licence else installation.release.pack.forms)
    result: dict[str, Any] = {}
    if not forms or "lora" in forms:
        result.update(pack_adapters_install(installation=installation, model=model))
    if not forms or "kv" in forms:
        result["kv_artifacts"] = kv_schedule_for_namespace(
            namespace=installation.namespace, user=installation.user, current=model
        )
    return result


def installation_hook(event: Any) -> None:
    """What `inference.apps` registers with `marketplace.hooks`: ready (installed or upgraded) schedules
    adapters and KV for after the commit; suspended stops the namespace's adapters and deletes its KV
    prefixes; resumed re-enables the adapters; removed deletes adapters and prefixes."""
    from inference.models import KVArtifact
    from inference.services.purge import adapters_retire, kv_artifacts_delete

    namespace = Namespace.objects.filter(pk=event.namespace_id).first()
    if namespace is None:
        return
    if event.kind == "ready":
        installation_id = event.installation_id

        def enqueue() -> None:
            from inference.tasks import installation_artifacts_task

            installation_artifacts_task.delay(installation_id)

        transaction.on_commit(enqueue)
    elif event.kind == "suspended":
        namespace_adapters_suspend(namespace=namespace, reason=event.reason or "licence not usable")
        kv_artifacts_delete(artifacts=list(KVArtifact.objects.filter(namespaces=namespace).distinct()))
    elif event.kind == "resumed":
        namespace_adapters_resume(namespace=namespace)
    elif event.kind == "removed":
        adapters_retire(
            adapters=list(InstalledAdapter.objects.filter(namespace=namespace)), reason="installation removed"
        )
        kv_artifacts_delete(artifacts=list(KVArtifact.objects.filter(namespaces=namespace).distinct()))
