"""Erasure reaches inference: the purge hook (registered by `inference.apps`) deletes the KV prefixes and
distilled adapters derived from erased memories. Driven through `vault.hooks.run_purge_hooks` exactly as
`vault.services.memory_purge` calls it; the end-to-end purge is tested with the vault."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from governance.models import AuditEvent
from inference.models import ArtifactStatus, DistillationJob, InstalledAdapter, JobStatus, KVArtifact
from tests.inference.django_fixtures import chat
from vault.hooks import PurgeEvent, run_purge_hooks
from vault.models import MemCube

pytestmark = pytest.mark.django_db


def purge_event(cube: MemCube) -> PurgeEvent:
    return PurgeEvent(
        namespace_id=str(cube.namespace_id),
        cube_ids=(str(cube.id),),
        provenance_ids=(str(cube.provenance_id),),
        content_sha256s=(cube.content_sha256,),
    )


def unrelated_event(cube: MemCube) -> PurgeEvent:
    return PurgeEvent(
        namespace_id=str(cube.namespace_id),
        cube_ids=(str(uuid.uuid4()),),
        provenance_ids=(str(uuid.uuid4()),),
        content_sha256s=("0" * 64,),
    )


@pytest.fixture
def prefix(alice, api_for, installed_pack, generator, settings, django_capture_on_commit_callbacks):  # type: ignore[no-untyped-def]
    settings.MEMHUB_KV_PROMOTE_AFTER = 2
    client = api_for(alice)
    scope = {"namespaces": [installed_pack.namespace.key]}
    chat(client, "ferries?", max_tokens=2, memhub=scope)
    with django_capture_on_commit_callbacks(execute=True):
        chat(client, "ferries?", max_tokens=2, memhub=scope)
    artifact = KVArtifact.objects.get(status=ArtifactStatus.READY)
    assert chat(client, "ferries?", max_tokens=2, memhub=scope).json()["memhub"]["kv"]["used"] is True
    return client, scope, artifact


def test_erasing_a_memory_deletes_the_kv_prefix_built_from_it(alice, installed_pack, prefix):
    client, scope, artifact = prefix
    cube = MemCube.objects.get(namespace=installed_pack.namespace, title="Lighthouse")
    assert str(cube.id) in {s["id"] for s in artifact.memory_sources}

    run_purge_hooks(unrelated_event(cube))  # another memory's erasure leaves this prefix alone
    assert KVArtifact.objects.filter(pk=artifact.pk, status=ArtifactStatus.READY).exists()

    run_purge_hooks(purge_event(cube))
    assert not KVArtifact.objects.filter(pk=artifact.pk).exists()
    assert not Path(artifact.file_path).exists()
    event = AuditEvent.objects.filter(operation="inference.purge").get()
    assert event.object_ids == [str(cube.id)] and event.details["kv_artifacts"] == [str(artifact.id)]
    # The next request runs the pack as plaintext again; nothing points at the deleted prefix.
    body = chat(client, "ferries?", max_tokens=2, memhub=scope).json()
    assert body["memhub"]["kv"] is None
    assert {m["form"] for m in body["memhub"]["memories"]} <= {"plaintext"}


def test_erasing_a_memory_retires_the_adapter_distilled_from_it(
    alice, api_for, installed_pack, generator, django_capture_on_commit_callbacks
):
    client = api_for(alice)
    pack = installed_pack.namespace.key
    with django_capture_on_commit_callbacks(execute=True):
        resp = client.post(
            "/v1/memhub/distillations",
            {"namespace": pack, "config": {"steps": 2, "rank": 2, "seq_len": 32}},
            format="json",
        )
    job = DistillationJob.objects.get(pk=resp.json()["id"])
    assert job.status == JobStatus.SUCCEEDED, job.error
    adapter = job.adapter
    assert adapter is not None and Path(adapter.path).is_dir()
    cube = MemCube.objects.get(namespace=installed_pack.namespace, title="Ferry timetable")
    assert str(cube.id) in {s["id"] for s in job.memory_sources}
    assert chat(client, "ferries?", max_tokens=2, memhub={"namespaces": [pack]}).json()["memhub"]["adapter"]

    run_purge_hooks(unrelated_event(cube))
    assert InstalledAdapter.objects.filter(pk=adapter.pk).exists()

    run_purge_hooks(purge_event(cube))
    assert not InstalledAdapter.objects.filter(sha256=adapter.sha256).exists()
    assert not Path(adapter.path).exists()
    job.refresh_from_db()
    assert job.status == JobStatus.PURGED and job.adapter is None
    assert str(cube.id) not in {s["id"] for s in job.memory_sources}
    assert "erased" in client.get(f"/v1/memhub/distillations/{job.id}").json()["error"]
    # The pack is no longer answered by weights trained on the erased text.
    body = chat(client, "ferries?", max_tokens=2, memhub={"namespaces": [pack]}).json()
    assert body["memhub"]["adapter"] is None
    assert AuditEvent.objects.filter(
        operation="inference.adapter.retire", object_ids=[str(adapter.id)]
    ).exists()


def test_a_prefix_requested_before_an_erasure_is_never_built(
    alice, api_for, installed_pack, generator, settings
):
    from inference.tasks import kv_artifact_build_task

    settings.MEMHUB_KV_PROMOTE_AFTER = 2
    client = api_for(alice)
    scope = {"namespaces": [installed_pack.namespace.key]}
    chat(client, "ferries?", max_tokens=2, memhub=scope)
    chat(client, "ferries?", max_tokens=2, memhub=scope)  # promotion: the build task is still queued
    artifact = KVArtifact.objects.get(status=ArtifactStatus.PENDING)
    cube = MemCube.objects.filter(namespace=installed_pack.namespace).first()

    run_purge_hooks(purge_event(cube))

    assert not KVArtifact.objects.filter(pk=artifact.pk).exists()
    assert kv_artifact_build_task(str(artifact.id)) == "gone"  # the queued task then finds nothing to do
    kv_dir = Path(settings.MEMHUB_INFERENCE_DIR) / "kv"
    assert not any(p.is_file() for p in kv_dir.rglob("*")) if kv_dir.exists() else True
