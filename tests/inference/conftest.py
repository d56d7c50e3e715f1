"""Tiny random models saved with `save_pretrained` and loaded back through `from_pretrained`."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from inference.runtime.random_model import TINY_QWEN2, save_random_model

    return save_random_model(TINY_QWEN2, tmp_path_factory.mktemp("tiny-qwen2"), seed=1)


@pytest.fixture(scope="session")
def other_qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same architecture and shape as tiny_qwen_dir, different weights: a different model."""
    from inference.runtime.random_model import TINY_QWEN2, save_random_model

    return save_random_model(TINY_QWEN2, tmp_path_factory.mktemp("tiny-qwen2-other"), seed=2)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from inference.runtime.random_model import TINY_LLAMA, save_random_model

    return save_random_model(TINY_LLAMA, tmp_path_factory.mktemp("tiny-llama"), seed=3)


@pytest.fixture(scope="session")
def qwen(tiny_qwen_dir: Path):  # type: ignore[no-untyped-def]
    from inference.runtime.registry import load_model

    return load_model(tiny_qwen_dir)


from tests.inference.django_fixtures import (  # noqa: E402,F401
    alice_notes,
    bob_secret,
    generator,
    generator_dir,
    installed_pack,
)
