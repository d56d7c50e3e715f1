"""Model registry: fingerprints and the per-process model cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from inference.runtime.errors import ModelUnavailable
from inference.runtime.fingerprint import fingerprint_model_dir
from inference.runtime.random_model import TINY_QWEN2, save_random_model
from inference.runtime.registry import load_model


def test_fingerprint_is_stable_across_saves_of_the_same_weights(tiny_qwen_dir: Path, tmp_path: Path) -> None:
    resaved = save_random_model(TINY_QWEN2, tmp_path / "again", seed=1)
    assert fingerprint_model_dir(resaved) == fingerprint_model_dir(tiny_qwen_dir)


def test_fingerprint_separates_models_of_the_same_shape(tiny_qwen_dir: Path, other_qwen_dir: Path) -> None:
    mine, other = fingerprint_model_dir(tiny_qwen_dir), fingerprint_model_dir(other_qwen_dir)
    assert mine.architecture == other.architecture == "Qwen2ForCausalLM"
    assert mine.config_sha256 == other.config_sha256
    assert mine.weights_sha256 != other.weights_sha256
    assert mine.fingerprint != other.fingerprint


def test_fingerprint_changes_with_the_config(tiny_qwen_dir: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_qwen_dir, tmp_path / "copy"))
    config = json.loads((copy / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5
    (copy / "config.json").write_text(json.dumps(config))
    assert fingerprint_model_dir(copy).fingerprint != fingerprint_model_dir(tiny_qwen_dir).fingerprint


def test_a_model_is_loaded_once_per_process(tiny_qwen_dir: Path) -> None:
    first = load_model(tiny_qwen_dir)
    assert load_model(str(tiny_qwen_dir)) is first
    assert first.fingerprint == fingerprint_model_dir(tiny_qwen_dir)
    assert not first.model.training


def test_pickle_only_weights_are_refused(tiny_qwen_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "pickled"
    bad.mkdir()
    shutil.copy(tiny_qwen_dir / "config.json", bad / "config.json")
    (bad / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ModelUnavailable, match="pickle formats are refused"):
        load_model(bad)


def test_missing_model_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="not a directory"):
        load_model(tmp_path / "nope")


def test_the_packaged_word_piece_tokenizer_survives_a_qwen2_config(tiny_qwen_dir: Path) -> None:
    # transformers 5 would rebuild it as a character-level BPE; the registry keeps the declared one.
    tokenizer = load_model(tiny_qwen_dir).tokenizer
    assert tokenizer.convert_ids_to_tokens(
        tokenizer("hello world", add_special_tokens=False)["input_ids"]
    ) == ["hello", "world"]
