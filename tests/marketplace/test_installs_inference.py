"""Installations and inference: a pack's LoRA adapter is registered per installation and watermarked for
it, KV prefixes are built from the installation's own watermarked text, and a suspended or removed
installation's adapters and prefixes stop being used."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from governance.policy import Subject
from governance.watermarking import watermark_key
from inference.models import ArtifactStatus, InstalledAdapter, KVArtifact
from marketplace import hooks
from marketplace.models import Installation
from marketplace.services import installs
from tests.inference.django_fixtures import generator, generator_dir  # noqa: F401
from vault.models import MemCube, MemoryKind

pytestmark = pytest.mark.django_db


@pytest.fixture
def adapter_pack(make_pack, expert, generator_dir, tmp_path):  # type: ignore[no-untyped-def]  # noqa: F811
    from inference.runtime.fingerprint import fingerprint_model_dir
    from inference.runtime.random_model import save_random_adapter
    from marketplace import services as market
    from marketplace.services.releases import release_publish

    source = save_random_adapter(generator_dir, tmp_path / "publisher-adapter", seed=11)
    weights = (source / "adapter_model.safetensors").read_bytes()
    pack = make_pack(slug="harbour", texts=("The harbour office opens at six and closes at nine.",))
    market.pack_add_memories(
        actor=Subject(user=expert),
        pack=pack,
        items=[
            {
                "kind": MemoryKind.PARAMETER,
                "title": "Harbour LoRA",
                "text": "LoRA adapter (r=8) for the harbour guide.",
                "blob_uri": f"file://{source}",
                "blob_sha256": hashlib.sha256(weights).hexdigest(),
                "model_fingerprint": fingerprint_model_dir(generator_dir).fingerprint,
            }
        ],
    )
    release_publish(actor=Subject(user=expert), pack=pack, version="1.0.0")
    return pack, source


def test_pack_adapter_is_watermarked_per_installation_and_kv_is_built_from_the_copy(
    adapter_pack,
    alice,
    bob,
    generator,  # noqa: F811
):
    from governance.watermark import detect_adapter, load_adapter
    from inference.services.adapters import installation_artifacts_sync
    from inference.services.kv import kv_artifact_build

    pack, source = adapter_pack
    release = pack.releases.get()
    mine = installs.pack_install(actor=Subject(user=alice), release=release)
    theirs = installs.pack_install(actor=Subject(user=bob), release=release)
    result = installation_artifacts_sync(installation_id=mine.pk)
    installation_artifacts_sync(installation_id=theirs.pk)
    assert result["refused"] == [] and len(result["adapters"]) == 1, result
    adapter = InstalledAdapter.objects.get(namespace=mine.namespace)
    assert adapter.status == ArtifactStatus.READY and adapter.source == "pack"
    original = (source / "adapter_model.safetensors").read_bytes()
    assert adapter.sha256 != hashlib.sha256(original).hexdigest()  # not the publisher's weights
    other = InstalledAdapter.objects.get(namespace=theirs.namespace)
    assert other.sha256 != adapter.sha256  # each installation carries its own mark
    leaked = load_adapter(Path(adapter.path) / "adapter_model.safetensors")
    verdict = detect_adapter(
        leaked.tensors,
        key=watermark_key(pack.publisher.namespace),
        candidates=[mine.watermark_id, theirs.watermark_id],
        reference=load_adapter(original).tensors,
    )
    assert verdict.installation_id == mine.watermark_id

    # KV: a prefix of this installation's own (watermarked) memories, for the served model
    assert len(result["kv_artifacts"]) == 1
    artifact = kv_artifact_build(artifact_id=result["kv_artifacts"][0])
    assert artifact.status == ArtifactStatus.READY, artifact.error
    copies = {
        str(c.id)
        for c in MemCube.objects.filter(namespace=mine.namespace, kind=MemoryKind.PLAINTEXT, is_canary=False)
    }
    assert {s["id"] for s in artifact.memory_sources} == copies
    assert list(artifact.namespaces.all()) == [mine.namespace]
    # idempotent
    assert installation_artifacts_sync(installation_id=mine.pk)["adapters"] == [str(adapter.id)]


def test_suspended_and_removed_installations_stop_their_adapters_and_prefixes(adapter_pack, alice, generator):  # noqa: F811
    from inference.selectors import adapters_ready
    from inference.services.adapters import installation_artifacts_sync
    from inference.services.registry import base_model_current

    pack, _ = adapter_pack
    installation = installs.pack_install(actor=Subject(user=alice), release=pack.releases.get())
    installation_artifacts_sync(installation_id=installation.pk)
    model = base_model_current()
    ns = installation.namespace
    assert (
        len(adapters_ready(base_model=model, namespaces=[ns])) == 1
        and KVArtifact.objects.filter(namespaces=ns).exists()
    )

    event = hooks.InstallationEvent(
        kind="suspended", installation_id=str(installation.pk), namespace_id=str(ns.pk), reason="refunded"
    )
    hooks.run_installation_hooks(event)
    assert adapters_ready(base_model=model, namespaces=[ns]) == []
    assert not KVArtifact.objects.filter(namespaces=ns).exists()
    hooks.run_installation_hooks(
        hooks.InstallationEvent(kind="resumed", installation_id=str(installation.pk), namespace_id=str(ns.pk))
    )
    assert len(adapters_ready(base_model=model, namespaces=[ns])) == 1

    path = Path(InstalledAdapter.objects.get(namespace=ns).path)
    installs.installation_remove(
        actor=Subject(user=alice), installation=Installation.objects.get(pk=installation.pk)
    )
    assert not InstalledAdapter.objects.filter(namespace=ns).exists() and not path.exists()
    assert not KVArtifact.objects.filter(namespaces=ns).exists()
