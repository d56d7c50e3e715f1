"""Reads for inference. Everything a caller sees is filtered by the policy or by ownership."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from django.db.models import QuerySet

from accounts.models import Namespace, NamespaceKind
from core.errors import NotFound
from governance.policy import Action, Subject, authorize
from inference.models import (
    ArtifactStatus,
    BaseModel,
    DistillationJob,
    InstalledAdapter,
    KVArtifact,
    PackUsage,
    SchedulerDecision,
)
from inference.prompting import PROMPT_FORMAT, MemoryBlock
from vault.models import LIVE_STATES, MemCube, MemoryKind


def pack_memories(*, namespace: Namespace) -> list[MemCube]:
    """A pack's live plaintext memories in a stable order (the order they take in a KV prefix).

    Callers have already authorised the namespace; this is the text a prefix is built from (and an
    adapter distilled from), so the order must not depend on anything that changes between requests.
    Watermark canaries are left out: they exist to be found in a leaked copy, never to reach answers.
    """
    return list(
        MemCube.objects.filter(
            namespace=namespace, state__in=LIVE_STATES, kind=MemoryKind.PLAINTEXT, is_canary=False
        )
        .select_related("namespace")
        .order_by("created_at", "id")
    )


def source_label(source: Any) -> str:
    """A memory's `source` (a JSON object) as one deterministic line for its prompt record."""
    if not source:
        return ""
    if not isinstance(source, dict):
        return str(source)[:200]
    parts = []
    for key in sorted(source):
        value = source[key]
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))
        parts.append(f"{key}={text}")
    return "; ".join(parts)[:300]


def block_for(cube: MemCube) -> MemoryBlock:
    """A memory as a prompt record, with its provenance. The text is cleaned when it is rendered."""
    return MemoryBlock(
        memory_id=str(cube.id),
        title=cube.title,
        text=cube.text,
        namespace=cube.namespace.key,
        source=source_label(cube.source),
        licence=cube.licence,
    )


def memory_sources(cubes: list[MemCube]) -> list[dict[str, str]]:
    """Which memories an artifact was derived from: identities and hashes, never text. A purge finds
    the artifacts to delete by these."""
    return [
        {"id": str(c.id), "provenance_id": str(c.provenance_id), "content_sha256": c.content_sha256}
        for c in cubes
    ]


def packs_content_key(*, packs: list[tuple[Namespace, list[MemCube]]]) -> str:
    """sha256 over what a prefix renders: the format, and per pack each memory's identity, content hash
    and the metadata its record shows. Any change gives a new key, so a stale prefix is never picked."""
    digest = hashlib.sha256(f"format:{PROMPT_FORMAT}\n".encode())
    for namespace, cubes in packs:
        digest.update(f"ns:{namespace.id}\n".encode())
        for cube in cubes:
            meta = block_for(cube).fingerprint()
            digest.update(f"{cube.id}:{cube.version}:{cube.content_sha256}:{meta}\n".encode())
    return digest.hexdigest()


def kv_artifact_find(
    *, base_model: BaseModel, content_key: str, adapter_sha256: str, dtype: str
) -> KVArtifact | None:
    return KVArtifact.objects.filter(
        base_model=base_model, content_key=content_key, adapter_sha256=adapter_sha256, dtype=dtype
    ).first()


def adapters_ready(*, base_model: BaseModel, namespaces: list[Namespace]) -> list[InstalledAdapter]:
    by_ns = {ns.id: i for i, ns in enumerate(namespaces)}
    adapters = list(
        InstalledAdapter.objects.filter(
            base_model=base_model, namespace__in=namespaces, status=ArtifactStatus.READY
        ).select_related("namespace")
    )
    # The request's namespace order decides, then the newest install.
    adapters.sort(key=lambda a: (by_ns[a.namespace_id], -a.created_at.timestamp()))
    return adapters


def pack_usage_counts(*, base_model: BaseModel, namespaces: list[Namespace]) -> dict[Any, int]:
    rows = PackUsage.objects.filter(base_model=base_model, namespace__in=namespaces)
    return {row.namespace_id: row.uses for row in rows}


def is_pack(namespace: Namespace) -> bool:
    return namespace.kind == NamespaceKind.INSTALLATION


def decisions_for_request(*, subject: Subject, request_id: Any) -> QuerySet[SchedulerDecision]:
    qs = SchedulerDecision.objects.filter(request_id=request_id, user=subject.user).order_by("id")
    if not qs.exists():
        raise NotFound("No scheduler decisions for that request.")
    return qs


def distillation_get(*, subject: Subject, job_id: Any) -> DistillationJob:
    job = (
        DistillationJob.objects.select_related("namespace", "base_model", "adapter").filter(pk=job_id).first()
    )
    if job is None:
        raise NotFound("Distillation job not found.")
    authorize(subject=subject, action=Action.READ, namespace=job.namespace)  # 404 for other tenants
    return job


def adapter_list(*, subject: Subject, namespace: Namespace) -> QuerySet[InstalledAdapter]:
    authorize(subject=subject, action=Action.READ, namespace=namespace)
    return InstalledAdapter.objects.filter(namespace=namespace).order_by("-created_at")
