"""Erasure of derived artifacts: the vault's purge hook for inference (registered in `apps.py`).

When `vault.services.memory_purge` erases memories it runs `vault.hooks.run_purge_hooks`; this hook then
deletes what was derived from those memories' text:
- KV prefixes built from them (file and row; the packs go back to plaintext and are promoted again from
  their remaining memories when used),
- adapters distilled from them (files and every row naming those weights), with the prefixes computed
  under such an adapter, and the distillation jobs' records of the erased memories.
Artifacts record their sources as ids and hashes (`memory_sources`); those recorded before sources were
kept are matched by namespace. Files go at once, not on commit: an erasure must not wait on a cache.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from django.db import transaction
from django.db.models import Q

from governance.audit import audit_record
from inference.models import DistillationJob, InstalledAdapter, JobStatus, KVArtifact
from vault.hooks import PurgeEvent

PURGE_OPERATION = "inference.purge"


def _erased(sources: Iterable[dict[str, Any]], event: PurgeEvent) -> list[dict[str, Any]]:
    ids, provenance, hashes = set(event.cube_ids), set(event.provenance_ids), set(event.content_sha256s)
    return [
        s
        for s in sources
        if str(s.get("id")) in ids
        or str(s.get("provenance_id")) in provenance
        or s.get("content_sha256") in hashes
    ]


def _forget_in_worker(*, kv_paths: list[str], adapter_sha256s: list[str]) -> None:
    """Drop resident copies in this process's worker, if it runs here; importing it would load torch."""
    worker = sys.modules.get("inference.worker")
    if worker is not None:
        worker.forget(kv_paths=kv_paths, adapter_sha256s=adapter_sha256s)


def kv_artifacts_delete(*, artifacts: Iterable[KVArtifact]) -> list[str]:
    """Delete prefixes, files first. Returns the ids deleted."""
    deleted, paths = [], []
    for artifact in artifacts:
        if artifact.file_path:
            Path(artifact.file_path).unlink(missing_ok=True)
            paths.append(artifact.file_path)
        deleted.append(str(artifact.id))
    KVArtifact.objects.filter(pk__in=deleted).delete()
    _forget_in_worker(kv_paths=paths, adapter_sha256s=[])
    return deleted


def adapters_retire(*, adapters: Iterable[InstalledAdapter], reason: str) -> dict[str, list[str]]:
    """Delete adapters' weights and every row that names them, with the prefixes computed under them."""
    pairs = {(a.base_model_id, a.sha256) for a in adapters}
    rows: list[InstalledAdapter] = []
    for base_model_id, sha in pairs:
        rows += list(InstalledAdapter.objects.filter(base_model_id=base_model_id, sha256=sha))
    under: Q = Q(pk__in=[])
    for base_model_id, sha in pairs:
        under |= Q(base_model_id=base_model_id, adapter_sha256=sha)
    kv_ids = kv_artifacts_delete(artifacts=list(KVArtifact.objects.filter(under)))
    ids = [str(r.id) for r in rows]
    paths = {r.path for r in rows}
    InstalledAdapter.objects.filter(pk__in=ids).delete()
    for path in paths:
        if path and not InstalledAdapter.objects.filter(path=path).exists():
            shutil.rmtree(path, ignore_errors=True)
    _forget_in_worker(kv_paths=[], adapter_sha256s=sorted({s for _, s in pairs}))
    if ids:
        audit_record(
            actor=None,
            operation="inference.adapter.retire",
            object_type="adapter",
            object_ids=ids,
            memory_kind="parameter",
            details={"reason": reason, "sha256s": sorted({s for _, s in pairs}), "kv_artifacts": kv_ids},
        )
    return {"adapters": ids, "kv_artifacts": kv_ids}


@transaction.atomic
def derived_artifacts_purge(event: PurgeEvent) -> dict[str, list[str]]:
    """The purge hook: delete everything inference derived from the erased memories."""
    kv = [
        a
        for a in KVArtifact.objects.filter(
            ~Q(memory_sources=[]) | Q(namespaces__id=event.namespace_id)
        ).distinct()
        if _erased(a.memory_sources, event) or (not a.memory_sources and _has_namespace(a, event))
    ]
    kv_ids = kv_artifacts_delete(artifacts=kv)

    jobs = [
        j
        for j in DistillationJob.objects.select_related("adapter").filter(
            ~Q(memory_sources=[]) | Q(namespace_id=event.namespace_id)
        )
        if _erased(j.memory_sources, event)
        or (not j.memory_sources and str(j.namespace_id) == str(event.namespace_id) and j.adapter_id)
    ]
    retired: dict[str, list[str]] = {"adapters": [], "kv_artifacts": []}
    adapters = [j.adapter for j in jobs if j.adapter is not None]
    if adapters:
        retired = adapters_retire(adapters=adapters, reason="distilled from erased memories")
    for job in jobs:
        erased = _erased(job.memory_sources, event)
        kept = [s for s in job.memory_sources if s not in erased]
        DistillationJob.objects.filter(pk=job.pk).update(
            status=JobStatus.PURGED,
            adapter=None,
            memory_sources=kept,
            error="Memories this job trained on were erased; the adapter derived from them was deleted.",
        )
    result = {
        "kv_artifacts": kv_ids + retired["kv_artifacts"],
        "adapters": retired["adapters"],
        "distillations": [str(j.id) for j in jobs],
    }
    if any(result.values()):
        audit_record(
            actor=None,
            operation=PURGE_OPERATION,
            object_type="memory",
            object_ids=list(event.cube_ids),
            details=result,
        )
    return result


def _has_namespace(artifact: KVArtifact, event: PurgeEvent) -> bool:
    return artifact.namespaces.filter(id=event.namespace_id).exists()


def purge_hook(event: PurgeEvent) -> None:
    """What `inference.apps` registers with `vault.hooks`."""
    derived_artifacts_purge(event)
