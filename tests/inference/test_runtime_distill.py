"""Distillation: a plaintext pack becomes a LoRA adapter for the base model that trained it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from inference.runtime.distill import DistillConfig, distill_lora
from inference.runtime.lora import AdapterPool, adapter_validate
from inference.runtime.random_model import TINY_QWEN2, save_random_model
from inference.runtime.registry import load_model

TEXT = (
    "Port Elin's harbour opens at six in the morning. Ferries to Tarsk leave every forty minutes. "
    "Mara Voss keeps the lighthouse. "
) * 8


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return load_model(save_random_model(TINY_QWEN2, tmp_path_factory.mktemp("distill-base"), seed=1))


def test_distillation_trains_an_adapter_with_progress(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    events: list[tuple[int, int, float]] = []
    before = [t.clone() for t in served.model.state_dict().values()]

    result = distill_lora(
        served,
        TEXT,
        tmp_path / "adapter",
        config=DistillConfig(steps=12, learning_rate=1e-2, seq_len=64, rank=4),
        progress=lambda step, total, loss: events.append((step, total, loss)),
    )

    assert [e[0] for e in events] == list(range(1, 13)) and all(e[1] == 12 for e in events)
    assert result.final_loss < result.first_loss  # it learned the text
    # The served model was not trained: distillation works on a private copy.
    assert all(torch.equal(a, b) for a, b in zip(before, served.model.state_dict().values(), strict=True))

    sidecar = json.loads((result.adapter_dir / "memhub_adapter.json").read_text())
    assert sidecar["base_model_fingerprint"] == served.fingerprint.fingerprint
    assert sorted(p.name for p in result.adapter_dir.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "memhub_adapter.json",
    ]

    spec = adapter_validate(result.adapter_dir, served)
    assert spec.rank == 4 and set(spec.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    # The text the adapter learned is now more likely under the adapted model.
    ids = [101, *served.tokenizer(TEXT, add_special_tokens=False)["input_ids"][:48]]
    pool = AdapterPool(served, max_resident=1)

    def nll() -> float:
        with torch.inference_mode():
            return float(served.model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss)

    try:
        base = nll()
        pool.activate(spec)
        assert nll() < base
    finally:
        pool.activate(None)


def test_too_little_text_is_refused(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from inference.runtime.errors import AdapterRefused

    with pytest.raises(AdapterRefused, match="too little text"):
        distill_lora(served, "hi", tmp_path / "x")
