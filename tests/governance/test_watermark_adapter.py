"""LoRA adapter watermark: safetensors in and out, attribution after casts and noise, no false hits.

No database, no torch: `pytest tests/governance/test_watermark_adapter.py -p no:django --noconftest`.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from governance.watermark import (
    AdapterDetector,
    AdapterFile,
    detect_adapter,
    dump_adapter,
    load_adapter,
    watermark_adapter,
    watermark_tensors,
)
from governance.watermark.adapter import _bf16_to_f32, _f32_to_bf16, marked_names

KEY = b"test-adapter-key-0123456789abcdef"
CANDIDATES = [f"installation-{i:03d}" for i in range(300)]


def lora(layers: int = 2, hidden: int = 256, rank: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for layer in range(layers):
        for proj in ("q_proj", "v_proj"):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            out[f"{prefix}.lora_A.weight"] = rng.normal(0, 1 / np.sqrt(hidden), (rank, hidden)).astype(
                np.float32
            )
            out[f"{prefix}.lora_B.weight"] = rng.normal(0, 0.02, (hidden, rank)).astype(np.float32)
    return out


def delta_w_relative_change(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    rng = np.random.default_rng(1)
    changes = []
    for name in a:
        if ".lora_A." in name:
            bn = name.replace(".lora_A.", ".lora_B.")
            x = rng.normal(size=(a[name].shape[1], 32))
            ref = a[bn].astype(np.float64) @ (a[name].astype(np.float64) @ x)
            new = b[bn].astype(np.float64) @ (b[name].astype(np.float64) @ x)
            changes.append(np.linalg.norm(new - ref) / np.linalg.norm(ref))
    return float(np.mean(changes))


# --- file format ------------------------------------------------------------------------------------------


def test_safetensors_round_trip_is_byte_compatible_with_the_reference_library() -> None:
    tensors = lora() | {"extra.int": np.arange(6, dtype=np.int64).reshape(2, 3)}
    ours = dump_adapter(AdapterFile(tensors, {}, {"format": "pt"}))
    theirs = st_load(ours)
    assert sorted(theirs) == sorted(tensors)
    for name, array in tensors.items():
        np.testing.assert_array_equal(theirs[name], array)
    again = load_adapter(st_save(tensors, metadata={"format": "pt"}))
    assert again.metadata == {"format": "pt"}
    assert all(np.array_equal(again.tensors[n], tensors[n]) for n in tensors)


def test_watermark_adapter_keeps_names_shapes_dtypes_and_metadata(tmp_path) -> None:  # type: ignore[no-untyped-def]
    original = lora()
    path = tmp_path / "adapter_model.safetensors"
    path.write_bytes(st_save(original, metadata={"format": "pt"}))
    marked_bytes = watermark_adapter(path, key=KEY, installation_id="installation-001")
    marked = st_load(marked_bytes)
    assert {n: (a.shape, a.dtype) for n, a in marked.items()} == {
        n: (a.shape, a.dtype) for n, a in original.items()
    }
    assert load_adapter(marked_bytes).metadata == {"format": "pt"}
    assert all(not np.array_equal(marked[n], original[n]) for n in original)


def test_bf16_adapters_round_trip_and_stay_bf16() -> None:
    values = np.random.default_rng(3).normal(0, 0.02, (256, 8)).astype(np.float32)
    raw = _f32_to_bf16(values)
    header = json.dumps(
        {"w.lora_B.weight": {"dtype": "BF16", "shape": [256, 8], "data_offsets": [0, raw.nbytes]}}
    )
    header_bytes = header.encode() + b" " * (-len(header) % 8)
    data = struct.pack("<Q", len(header_bytes)) + header_bytes + raw.tobytes()
    loaded = load_adapter(data)
    np.testing.assert_array_equal(loaded.tensors["w.lora_B.weight"], _bf16_to_f32(raw))
    marked = load_adapter(watermark_adapter(data, key=KEY, installation_id="installation-002"))
    assert marked.dtypes == {"w.lora_B.weight": "BF16"}
    again = load_adapter(dump_adapter(loaded))
    assert again.dtypes == {"w.lora_B.weight": "BF16"}
    np.testing.assert_array_equal(again.tensors["w.lora_B.weight"], loaded.tensors["w.lora_B.weight"])


# --- marking ----------------------------------------------------------------------------------------------


def test_mark_changes_the_adapter_output_by_about_one_percent() -> None:
    original = lora()
    marked = watermark_tensors(original, key=KEY, installation_id="installation-003")
    change = delta_w_relative_change(original, marked)
    assert 0.002 < change < 0.03


def test_untrained_zero_matrices_are_left_alone() -> None:
    tensors = lora()
    tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"][:] = 0.0
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight" not in marked_names(tensors)
    marked = watermark_tensors(tensors, key=KEY, installation_id="x")
    assert not marked["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"].any()


# --- detection --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detector_with_reference() -> AdapterDetector:
    return AdapterDetector(key=KEY, candidates=CANDIDATES, reference=lora())


@pytest.mark.parametrize("leaker", ["installation-000", "installation-150", "installation-299"])
def test_adapter_attribution_with_reference(detector_with_reference: AdapterDetector, leaker: str) -> None:
    marked = watermark_tensors(lora(), key=KEY, installation_id=leaker)
    result = detector_with_reference.detect(marked)
    assert result.installation_id == leaker
    assert result.adjusted_p_value < 1e-100


def test_mark_survives_fp16_cast(detector_with_reference: AdapterDetector) -> None:
    marked = watermark_tensors(lora(), key=KEY, installation_id="installation-010")
    half = {n: a.astype(np.float16) for n, a in marked.items()}
    assert detector_with_reference.detect(half).installation_id == "installation-010"


def test_mark_survives_bf16_cast(detector_with_reference: AdapterDetector) -> None:
    marked = watermark_tensors(lora(), key=KEY, installation_id="installation-011")
    bf = {n: _bf16_to_f32(_f32_to_bf16(a)) for n, a in marked.items()}
    assert detector_with_reference.detect(bf).installation_id == "installation-011"


def test_mark_survives_noise_five_times_its_own_size(detector_with_reference: AdapterDetector) -> None:
    rng = np.random.default_rng(9)
    marked = watermark_tensors(lora(), key=KEY, installation_id="installation-012")
    noisy = {
        n: (a + rng.normal(0, 0.05 * float(np.std(a)), a.shape)).astype(np.float32) for n, a in marked.items()
    }
    assert detector_with_reference.detect(noisy).installation_id == "installation-012"


def test_renamed_wrapper_prefix_still_detects(detector_with_reference: AdapterDetector) -> None:
    marked = watermark_tensors(lora(), key=KEY, installation_id="installation-013")
    renamed = {n.removeprefix("base_model.model."): a for n, a in marked.items()}
    assert detector_with_reference.detect(renamed).installation_id == "installation-013"


def test_blind_detection_on_a_realistically_sized_adapter() -> None:
    original = lora(layers=6, hidden=1024, rank=16, seed=5)  # about 400k weights
    marked = watermark_tensors(original, key=KEY, installation_id="installation-020")
    result = detect_adapter(marked, key=KEY, candidates=CANDIDATES[:50])
    assert result.blind
    assert result.installation_id == "installation-020"


def test_wrong_key_does_not_detect() -> None:
    marked = watermark_tensors(lora(), key=KEY, installation_id="installation-030")
    result = detect_adapter(
        marked, key=b"another-instance-key-0123456789ab", candidates=CANDIDATES, reference=lora()
    )
    assert result.installation_id is None
    assert abs(result.z) < 6


def test_unmarked_and_unlisted_adapters_accuse_nobody(detector_with_reference: AdapterDetector) -> None:
    rng = np.random.default_rng(4)
    original = lora()
    fine_tuned = {
        n: (a + rng.normal(0, 0.01 * float(np.std(a)), a.shape)).astype(np.float32)
        for n, a in original.items()
    }
    assert detector_with_reference.detect(fine_tuned).installation_id is None
    stranger = watermark_tensors(original, key=KEY, installation_id="not-in-the-list")
    assert detector_with_reference.detect(stranger).installation_id is None
    assert detector_with_reference.detect(original).installation_id is None
