"""LoRA adapters: validation against the base model, switching, bounded residency."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from inference.runtime.errors import AdapterRefused
from inference.runtime.lora import AdapterPool, adapter_validate
from inference.runtime.random_model import TINY_QWEN2, save_random_adapter, save_random_model
from inference.runtime.registry import load_model

IDS = [101, 1996, 4680, 1997, 3417, 12005, 7480, 2012, 2416, 1012]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    # Its own copy of the tiny model: injected adapter slots must not leak into other tests' model.
    path = save_random_model(TINY_QWEN2, tmp_path_factory.mktemp("lora-base"), seed=1)
    return load_model(path)


@pytest.fixture(scope="module")
def adapters(served, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("adapters")
    return [save_random_adapter(served.path, root / f"a{i}", seed=100 + i) for i in range(3)]


def _next_logits(handle) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with torch.inference_mode():
        return handle.model(input_ids=torch.tensor([IDS])).logits[0, -1].clone()


def _greedy(handle, n: int = 8) -> list[int]:  # type: ignore[no-untyped-def]
    from inference.runtime.generate import greedy_generate

    return greedy_generate(handle, IDS, max_new_tokens=n, stop_ids=set()).token_ids


def test_switching_adapters_changes_outputs_and_switching_back_restores_them(served, adapters) -> None:  # type: ignore[no-untyped-def]
    pool = AdapterPool(served, max_resident=4)
    a, b = (adapter_validate(p, served) for p in adapters[:2])
    try:
        base_logits, base_tokens = _next_logits(served), _greedy(served)
        pool.activate(a)
        a_logits, a_tokens = _next_logits(served), _greedy(served)
        pool.activate(b)
        b_logits, b_tokens = _next_logits(served), _greedy(served)

        assert not torch.allclose(a_logits, base_logits)
        assert not torch.allclose(b_logits, a_logits)
        assert a_tokens != base_tokens or b_tokens != base_tokens

        pool.activate(a)
        assert torch.equal(_next_logits(served), a_logits) and _greedy(served) == a_tokens
        pool.activate(None)
        assert torch.equal(_next_logits(served), base_logits) and _greedy(served) == base_tokens
        assert pool.loads == 2  # switching back reused the resident slot
    finally:
        pool.activate(None)


def test_resident_adapters_are_bounded_with_lru_eviction(served, adapters, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    specs = [adapter_validate(p, served) for p in adapters]
    pool = AdapterPool(served, max_resident=2)
    try:
        pool.activate(specs[0])
        expected_c = None
        pool.activate(specs[1])
        b_logits = _next_logits(served)
        pool.activate(specs[0])  # a is now the most recently used
        pool.activate(specs[2])  # evicts b, the least recently used
        expected_c = _next_logits(served)
        assert pool.resident == [specs[0].sha256, specs[2].sha256]
        assert pool.evictions == 1 and pool.hotswaps == 1  # same rank and targets: weights swapped in place

        pool.activate(specs[1])  # b comes back into the slot of a, and computes what it did before
        assert torch.equal(_next_logits(served), b_logits)
        pool.activate(specs[2])
        assert torch.equal(_next_logits(served), expected_c)
        assert len(pool.resident) == 2
    finally:
        pool.activate(None)


def test_an_adapter_for_another_architecture_is_refused_with_a_clear_error(
    served,
    tiny_llama_dir: Path,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    foreign = save_random_adapter(tiny_llama_dir, tmp_path / "llama-adapter", seed=5)
    with pytest.raises(AdapterRefused) as exc:
        adapter_validate(foreign, served)
    assert "made for another base model" in exc.value.message
    assert "LlamaForCausalLM" in exc.value.message and "Qwen2ForCausalLM" in exc.value.message
    assert exc.value.status == 422


def test_an_adapter_without_declared_identity_is_checked_by_shape(
    served,
    tiny_llama_dir: Path,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    foreign = save_random_adapter(tiny_llama_dir, tmp_path / "anon", seed=5)
    (foreign / "memhub_adapter.json").unlink()  # a third-party adapter: no MemHub sidecar
    with pytest.raises(
        AdapterRefused, match=r"needs \[8, 64\]: this adapter was made for another base model"
    ):
        adapter_validate(foreign, served)


def test_an_adapter_for_a_same_shape_but_different_model_is_refused(
    served,
    other_qwen_dir: Path,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    foreign = save_random_adapter(other_qwen_dir, tmp_path / "other", seed=5)
    with pytest.raises(AdapterRefused, match="made for another base model") as exc:
        adapter_validate(foreign, served)
    assert exc.value.extra["model_fingerprint"] == served.fingerprint.fingerprint


def test_a_target_module_the_model_lacks_is_refused(served, adapters, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = Path(shutil.copytree(adapters[0], tmp_path / "bad"))
    config = json.loads((bad / "adapter_config.json").read_text())
    config["target_modules"] = ["c_attn"]
    (bad / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterRefused, match="Target module 'c_attn' does not exist in Qwen2ForCausalLM"):
        adapter_validate(bad, served)


def test_pickled_adapter_weights_are_refused(served, adapters, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = Path(shutil.copytree(adapters[0], tmp_path / "pickled"))
    (bad / "adapter_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(AdapterRefused, match="pickle formats are refused"):
        adapter_validate(bad, served)
    (bad / "adapter_model.bin").unlink()
    (bad / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterRefused, match=r"lacks adapter_model\.safetensors"):
        adapter_validate(bad, served)


def test_rank_beyond_the_limit_is_refused(served, adapters) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(AdapterRefused, match="rank r=8 must be an integer between 1 and 4"):
        adapter_validate(adapters[0], served, max_rank=4)


def test_a_declared_base_fingerprint_must_match(served, adapters) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(AdapterRefused, match="made for another base model"):
        adapter_validate(adapters[0], served, declared_base_fingerprint="0" * 64)
    assert (
        adapter_validate(adapters[0], served, declared_base_fingerprint=served.fingerprint.fingerprint).rank
        == 8
    )


def test_clearing_the_pool_restores_the_base_model(served, adapters) -> None:  # type: ignore[no-untyped-def]
    base = _next_logits(served)
    pool = AdapterPool(served, max_resident=2)
    pool.activate(adapter_validate(adapters[0], served))
    assert not torch.allclose(_next_logits(served), base)
    pool.clear()
    assert pool.resident == [] and pool.active is None
    assert torch.equal(_next_logits(served), base)
