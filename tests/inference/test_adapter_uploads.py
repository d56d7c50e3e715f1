"""Adapter uploads stream to disk under a size cap: over it, 413 naming the limit, and nothing written."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from core.errors import ApplicationError
from governance.policy import Subject
from inference.models import InstalledAdapter

pytestmark = pytest.mark.django_db


def adapter_files(model_dir: Path, tmp_path: Path) -> dict[str, io.BytesIO]:
    from inference.runtime.random_model import save_random_adapter

    out = save_random_adapter(model_dir, tmp_path / "adapter", seed=7)
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


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


@pytest.fixture
def upload_dirs(settings, tmp_path: Path) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    settings.FILE_UPLOAD_TEMP_DIR = str(uploads)
    return uploads, Path(settings.MEMHUB_INFERENCE_DIR) / "adapters"


def test_an_adapter_within_the_cap_is_installed(
    alice, api_for, installed_pack, generator, tmp_path, settings, upload_dirs
):
    files = adapter_files(generator, tmp_path)
    settings.MEMHUB_ADAPTER_MAX_BYTES = sum(len(f.getvalue()) for f in files.values()) + 1
    resp = api_for(alice).post(
        "/v1/memhub/adapters", {"namespace": installed_pack.namespace.key, **files}, format="multipart"
    )
    assert resp.status_code == 201, resp.json()
    assert InstalledAdapter.objects.count() == 1
    assert files_under(upload_dirs[0]) == []  # the streamed copies are gone after the request


@pytest.mark.parametrize("oversize", ["streamed", "declared"])
def test_an_oversized_adapter_upload_is_413_and_writes_nothing(
    alice, api_for, installed_pack, generator, tmp_path, settings, upload_dirs, oversize
):
    files = adapter_files(generator, tmp_path)
    model_bytes = len(files["adapter_model"].getvalue())
    if oversize == "streamed":  # the body is small, the cap smaller: refused while streaming
        limit = model_bytes // 2
    else:  # the declared length is far over the cap: refused before the body is read
        limit = 1024
        files["adapter_model"] = io.BytesIO(b"\0" * (limit + 200 * 1024))
        files["adapter_model"].name = "adapter_model.safetensors"
    settings.MEMHUB_ADAPTER_MAX_BYTES = limit

    resp = api_for(alice).post(
        "/v1/memhub/adapters", {"namespace": installed_pack.namespace.key, **files}, format="multipart"
    )

    assert resp.status_code == 413, resp.content
    error = resp.json()["error"]
    assert error["code"] == "too_large"
    assert f"limit of {limit} bytes" in error["message"] and "MEMHUB_ADAPTER_MAX_BYTES" in error["message"]
    assert error["extra"]["limit_bytes"] == limit
    # Refused by the upload handler, at the form field that crossed the cap (or on the declared length).
    assert error["extra"]["field"] == ("adapter_model" if oversize == "streamed" else "request body")
    assert InstalledAdapter.objects.count() == 0
    uploads, adapters = upload_dirs
    assert files_under(uploads) == [] and files_under(adapters) == []


def test_the_service_refuses_an_oversized_adapter_before_writing(
    alice, installed_pack, generator, tmp_path, settings, upload_dirs
):
    from inference.services import adapter_install

    settings.MEMHUB_ADAPTER_MAX_BYTES = 100
    with pytest.raises(ApplicationError) as refused:
        adapter_install(
            subject=Subject(user=alice),
            namespace_key=installed_pack.namespace.key,
            files={"adapter_config.json": b"{}", "adapter_model.safetensors": b"\0" * 200},
        )
    assert refused.value.status == 413 and refused.value.extra["field"] == "adapter_model.safetensors"
    assert InstalledAdapter.objects.count() == 0 and files_under(upload_dirs[1]) == []
