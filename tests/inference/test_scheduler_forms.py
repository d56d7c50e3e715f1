"""MemScheduler through the API: KV promotion and demotion, LoRA adapters, distillation jobs."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from governance.models import AuditEvent
from inference.models import ArtifactStatus, DistillationJob, InstalledAdapter, KVArtifact, PackUsage
from inference.services import kv_artifacts_demote_cold
from tests.inference.django_fixtures import chat

pytestmark = pytest.mark.django_db


def decisions(body: dict, action: str) -> list[dict]:
    return [d for d in body["memhub"]["decisions"] if d["action"] == action]


@pytest.fixture
def promote_after_two(settings):  # type: ignore[no-untyped-def]
    settings.MEMHUB_KV_PROMOTE_AFTER = 2


def test_a_frequently_used_pack_is_promoted_to_kv_then_demoted_when_cold(
    alice, api_for, installed_pack, generator, promote_after_two, django_capture_on_commit_callbacks
):
    client = api_for(alice)
    pack = installed_pack.namespace.key
    scope = {"namespaces": [pack]}

    first = chat(client, "When do ferries leave?", max_tokens=4, memhub=scope).json()
    assert any("not hot enough" in d["reason"] for d in decisions(first, "skip"))
    assert first["memhub"]["kv"] is None

    with django_capture_on_commit_callbacks(execute=True):  # the build task runs (eagerly) after commit
        second = chat(client, "When do ferries leave?", max_tokens=4, memhub=scope).json()
    assert decisions(second, "promote") and second["memhub"]["kv"] is None
    artifact = KVArtifact.objects.get()
    assert artifact.status == ArtifactStatus.READY, artifact.error
    assert Path(artifact.file_path).is_file() and artifact.num_tokens > 20
    assert artifact.namespace_keys == [pack] and len(artifact.token_ids_sha256) == 64

    third = chat(client, "When do ferries leave?", max_tokens=4, memhub=scope).json()
    kv = third["memhub"]["kv"]
    assert kv["artifact_id"] == str(artifact.id) and kv["used"] is True, kv
    # Every memory of the pack (the installation's watermark canaries included) is served from the prefix.
    memories = third["memhub"]["memories"]
    assert {m["form"] for m in memories} == {"kv"}
    assert {m["namespace"] for m in memories} == {pack}
    assert {"Ferry timetable", "Lighthouse", "Harbour hours"} <= {m["title"] for m in memories}
    assert third["memhub"]["memories"][0]["label"] == "M1"
    assert third["usage"]["prompt_tokens"] > artifact.num_tokens

    # A week without use: the prefix is deleted and the pack goes back to plaintext.
    KVArtifact.objects.filter(pk=artifact.pk).update(last_used_at=timezone.now() - timedelta(days=8))
    assert kv_artifacts_demote_cold() == 1
    artifact.refresh_from_db()
    assert (
        artifact.status == ArtifactStatus.DEMOTED and not Path(artifact.file_path or "/nonexistent").exists()
    )
    assert PackUsage.objects.get(namespace=installed_pack.namespace).uses == 0
    assert AuditEvent.objects.filter(operation="inference.kv.demote", object_ids=[str(artifact.id)]).exists()
    fourth = chat(client, "When do ferries leave?", max_tokens=4, memhub=scope).json()
    assert fourth["memhub"]["kv"] is None
    assert {m["form"] for m in fourth["memhub"]["memories"]} == {"plaintext"}


def test_a_changed_pack_does_not_reuse_its_old_prefix(
    alice, api_for, installed_pack, generator, promote_after_two, django_capture_on_commit_callbacks, settings
):
    from vault.models import MemCube

    client = api_for(alice)
    scope = {"namespaces": [installed_pack.namespace.key]}
    chat(client, "ferries?", max_tokens=2, memhub=scope)
    with django_capture_on_commit_callbacks(execute=True):
        chat(client, "ferries?", max_tokens=2, memhub=scope)
    old = KVArtifact.objects.get(status=ArtifactStatus.READY)
    # A new version of a pack memory (e.g. a feed update) changes the pack's content key.
    cube = MemCube.objects.filter(namespace=installed_pack.namespace, is_canary=False).first()
    MemCube.objects.filter(pk=cube.pk).update(version=cube.version + 1, content_sha256="0" * 64)
    body = chat(client, "ferries?", max_tokens=2, memhub=scope).json()
    assert body["memhub"]["kv"] is None
    assert decisions(body, "promote")
    assert KVArtifact.objects.exclude(pk=old.pk).exists()


def _adapter_files(model_dir: Path, tmp_path: Path, seed: int = 7) -> dict[str, io.BytesIO]:
    from inference.runtime.random_model import save_random_adapter

    out = save_random_adapter(model_dir, tmp_path / f"adapter-{seed}", seed=seed)
    files = {}
    for field, name in (
        ("adapter_config", "adapter_config.json"),
        ("adapter_model", "adapter_model.safetensors"),
        ("memhub_adapter", "memhub_adapter.json"),
    ):
        handle = io.BytesIO((out / name).read_bytes())
        handle.name = name
        files[field] = handle
    return files


def test_an_installed_adapter_serves_its_pack_and_changes_the_answer(
    alice, api_for, installed_pack, generator, tmp_path
):
    client = api_for(alice)
    pack = installed_pack.namespace.key
    before = chat(client, "ferries?", max_tokens=8, memhub={"namespaces": [pack]}).json()

    resp = client.post(
        "/v1/memhub/adapters",
        {"namespace": pack, "name": "harbour lora", **_adapter_files(generator, tmp_path)},
        format="multipart",
    )
    assert resp.status_code == 201, resp.json()
    assert resp.json()["rank"] == 8 and resp.json()["status"] == "ready"

    after = chat(client, "ferries?", max_tokens=8, memhub={"namespaces": [pack]}).json()
    memhub = after["memhub"]
    assert memhub["adapter"]["id"] == resp.json()["id"]
    assert memhub["memories"][0]["form"] == "lora"
    assert any(d["form"] == "lora" and d["action"] == "use" for d in memhub["decisions"])
    # The pack is served by its adapter, so its text is not also pasted into the prompt.
    assert after["usage"]["prompt_tokens"] < before["usage"]["prompt_tokens"]
    assert InstalledAdapter.objects.get().use_count == 1


def test_an_adapter_for_another_base_model_is_refused_with_a_clear_error(
    alice, api_for, installed_pack, generator, tiny_llama_dir, tmp_path, settings
):
    resp = api_for(alice).post(
        "/v1/memhub/adapters",
        {"namespace": installed_pack.namespace.key, **_adapter_files(tiny_llama_dir, tmp_path)},
        format="multipart",
    )
    assert resp.status_code == 422
    error = resp.json()["error"]
    assert error["code"] == "adapter_refused"
    assert "made for another base model" in error["message"] and "LlamaForCausalLM" in error["message"]
    assert InstalledAdapter.objects.count() == 0
    adapters_dir = Path(settings.MEMHUB_INFERENCE_DIR) / "adapters"
    assert not any(p.is_file() for p in adapters_dir.rglob("*")) if adapters_dir.exists() else True


def test_adapter_install_needs_a_namespace_the_caller_controls(
    alice, bob, api_for, installed_pack, generator, tmp_path
):
    resp = api_for(bob).post(
        "/v1/memhub/adapters",
        {"namespace": installed_pack.namespace.key, **_adapter_files(generator, tmp_path)},
        format="multipart",
    )
    assert resp.status_code == 404
    assert InstalledAdapter.objects.count() == 0


def test_adapter_install_without_a_model_is_503(
    alice, api_for, installed_pack, settings, tmp_path, tiny_qwen_dir
):
    settings.MEMHUB_MODEL_PATH = ""
    resp = api_for(alice).post(
        "/v1/memhub/adapters",
        {"namespace": installed_pack.namespace.key, **_adapter_files(tiny_qwen_dir, tmp_path)},
        format="multipart",
    )
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "model_unavailable"


def test_distillation_trains_an_adapter_with_progress_and_installs_it(
    alice, bob, api_for, installed_pack, generator, django_capture_on_commit_callbacks
):
    client = api_for(alice)
    pack = installed_pack.namespace.key
    with django_capture_on_commit_callbacks(execute=True):
        resp = client.post(
            "/v1/memhub/distillations",
            {"namespace": pack, "config": {"steps": 6, "rank": 4, "seq_len": 32, "learning_rate": 0.01}},
            format="json",
        )
    assert resp.status_code == 202, resp.json()
    job_id = resp.json()["id"]

    status = client.get(f"/v1/memhub/distillations/{job_id}").json()
    assert status["status"] == "succeeded", status["error"]
    assert status["progress"] == 1.0 and status["step"] == status["total_steps"] == 6
    assert status["loss"] is not None and status["first_loss"] is not None
    adapter = InstalledAdapter.objects.get(pk=status["adapter"]["id"])
    assert (
        adapter.source == "distillation"
        and adapter.rank == 4
        and adapter.namespace == installed_pack.namespace
    )
    # The distilled adapter now serves the pack.
    body = chat(client, "ferries?", max_tokens=2, memhub={"namespaces": [pack]}).json()
    assert body["memhub"]["adapter"]["id"] == str(adapter.id)
    # Other tenants cannot see the job.
    assert api_for(bob).get(f"/v1/memhub/distillations/{job_id}").status_code == 404


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"steps": 0}, "'steps' must be between"),
        ({"steps": "ten"}, "'steps' must be an integer"),
        ({"rank": 100000}, "'rank' must be between"),
        ({"epochs": 3}, "Unknown distillation option 'epochs'"),
    ],
)
def test_bad_distillation_requests_are_400(alice, api_for, installed_pack, generator, config, fragment):
    resp = api_for(alice).post(
        "/v1/memhub/distillations",
        {"namespace": installed_pack.namespace.key, "config": config},
        format="json",
    )
    assert resp.status_code == 400
    assert fragment in resp.json()["error"]["message"]
    assert DistillationJob.objects.count() == 0


def test_distillation_of_an_empty_namespace_is_400(alice, api_for, generator):
    resp = api_for(alice).post("/v1/memhub/distillations", {"namespace": "user:alice"}, format="json")
    assert resp.status_code == 400 and "no plaintext memories" in resp.json()["error"]["message"]


def test_a_distillation_job_runs_once_even_if_the_task_is_delivered_twice(
    alice, api_for, installed_pack, generator, django_capture_on_commit_callbacks
):
    from inference.services import distillation_run

    with django_capture_on_commit_callbacks(execute=True):
        resp = api_for(alice).post(
            "/v1/memhub/distillations",
            {"namespace": installed_pack.namespace.key, "config": {"steps": 2, "rank": 2, "seq_len": 32}},
            format="json",
        )
    job = distillation_run(job_id=resp.json()["id"])  # a redelivered task
    assert job.status == "succeeded"
    assert InstalledAdapter.objects.count() == 1
    assert json.loads(json.dumps(job.config)) == {"steps": 2, "rank": 2, "seq_len": 32}


def _hot_pack_with_prefix(client, installed_pack, capture):  # type: ignore[no-untyped-def]
    scope = {"namespaces": [installed_pack.namespace.key]}
    chat(client, "When do ferries leave?", max_tokens=8, memhub=scope)
    with capture(execute=True):
        chat(client, "When do ferries leave?", max_tokens=8, memhub=scope)
    return scope, KVArtifact.objects.get(status=ArtifactStatus.READY)


def test_a_missing_prefix_file_falls_back_to_the_same_tokens_as_plaintext(
    alice, api_for, installed_pack, generator, promote_after_two, django_capture_on_commit_callbacks
):
    client = api_for(alice)
    scope, artifact = _hot_pack_with_prefix(client, installed_pack, django_capture_on_commit_callbacks)
    with_kv = chat(client, "When do ferries leave?", max_tokens=8, memhub=scope).json()
    assert with_kv["memhub"]["kv"]["used"] is True

    from inference import worker

    Path(artifact.file_path).unlink()
    worker.clear_caches()  # a fresh worker process: the prefix is not resident, the file is gone
    without = chat(client, "When do ferries leave?", max_tokens=8, memhub=scope).json()
    kv = without["memhub"]["kv"]
    assert kv["used"] is False and "not a readable safetensors KV artifact" in kv["reason"]
    assert {m["form"] for m in without["memhub"]["memories"]} == {"plaintext"}
    # The prefix text is still in the prompt at the same place: the answer does not change.
    assert without["choices"][0]["message"]["content"] == with_kv["choices"][0]["message"]["content"]
    assert without["usage"] == with_kv["usage"]
    log = api_for(alice).get(f"/v1/memhub/requests/{without['memhub']['request_id']}/decisions").json()
    assert any(
        d["action"] == "fallback" and "worker ran the prefix as plaintext" in d["reason"]
        for d in log["decisions"]
    )


def test_queue_mode_gives_the_same_answer_as_inline(alice, api_for, alice_notes, generator, settings):
    client = api_for(alice)
    inline = chat(client, "Which seat does Alice prefer?", max_tokens=6).json()
    settings.MEMHUB_INFERENCE_INLINE = False  # generation goes through the inference Celery task
    queued = chat(client, "Which seat does Alice prefer?", max_tokens=6).json()
    assert queued["choices"] == inline["choices"] and queued["usage"] == inline["usage"]


def test_a_prefix_built_before_the_model_changed_is_rebuilt_not_used(
    alice,
    api_for,
    installed_pack,
    generator,
    promote_after_two,
    django_capture_on_commit_callbacks,
    settings,
    tmp_path,
):
    import shutil

    model_dir = Path(shutil.copytree(generator, tmp_path / "model"))
    settings.MEMHUB_MODEL_PATH = str(model_dir)
    client = api_for(alice)
    scope, artifact = _hot_pack_with_prefix(client, installed_pack, django_capture_on_commit_callbacks)
    old_fingerprint = artifact.model_fingerprint

    config = json.loads((model_dir / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5  # new files, new model: the old prefix no longer describes it
    (model_dir / "config.json").write_text(json.dumps(config))
    with django_capture_on_commit_callbacks(execute=True):
        body = chat(client, "When do ferries leave?", max_tokens=2, memhub=scope).json()
    assert body["memhub"]["kv"] is None and decisions(body, "promote")
    assert body["memhub"]["model_fingerprint"] != old_fingerprint
    artifact.refresh_from_db()
    assert artifact.status == ArtifactStatus.READY
    assert artifact.model_fingerprint == body["memhub"]["model_fingerprint"]
    again = chat(client, "When do ferries leave?", max_tokens=2, memhub=scope).json()
    assert again["memhub"]["kv"]["used"] is True
