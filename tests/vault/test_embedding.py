"""The vault's embedder: ONNX Runtime output must match the sentence-transformers reference."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings

from vault import embedding
from vault.embedding import MODEL_DIM, MODEL_NAME, build_embedder, ensure_onnx_model, get_embedder

REPO = Path(__file__).resolve().parents[2]

TEXTS = [
    "Caroline: I went to a LGBTQ support group yesterday and it was so powerful.",
    "Melanie: Hey Caroline! Good to see you! I'm swamped with the kids & work.",
    "The invoice for order 88231-ZQ was paid on 3 March.",
    "short",
    "",
    "Ünïcödé text, emoji 🎉 and 中文 characters survive tokenisation.",
    "A much longer memory about gardening: " + "tomatoes need sun, water and patience. " * 12,
    "Der Zug nach Berlin fährt um acht Uhr.",
]


@pytest.fixture(scope="module")
def cache_dir() -> Path:
    return Path(settings.EMBEDDING_CACHE_DIR)


@pytest.fixture(scope="module")
def onnx_int8(cache_dir: Path) -> embedding.Embedder:
    return build_embedder("onnx", cache_dir=cache_dir, quantize=True, batch_size=3)


@pytest.fixture(scope="module")
def onnx_fp32(cache_dir: Path) -> embedding.Embedder:
    return build_embedder("onnx", cache_dir=cache_dir, quantize=False, batch_size=3)


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """sentence-transformers' own output, the definition of all-MiniLM-L6-v2 embeddings."""
    return build_embedder("torch").embed(TEXTS)


def test_describes_itself(onnx_int8: embedding.Embedder) -> None:
    assert onnx_int8.name == MODEL_NAME == "all-minilm-l6-v2"
    assert onnx_int8.dim == MODEL_DIM == 384


def test_fp32_onnx_matches_torch_reference(onnx_fp32: embedding.Embedder, reference: np.ndarray) -> None:
    vectors = onnx_fp32.embed(TEXTS)
    cosine = (vectors * reference).sum(axis=1)
    assert cosine.min() > 0.999


def test_int8_onnx_agrees_with_torch_reference(onnx_int8: embedding.Embedder, reference: np.ndarray) -> None:
    # Per-channel int8 keeps mean agreement near 0.99 (per-tensor int8 would give about 0.95).
    cosine = (onnx_int8.embed(TEXTS) * reference).sum(axis=1)
    assert cosine.mean() > 0.98
    assert cosine.min() > 0.95


def test_int8_keeps_the_reference_ranking(onnx_int8: embedding.Embedder) -> None:
    # Given a query and candidates, the quantized model ranks the relevant text first as the reference does.
    query = onnx_int8.embed(["When did Caroline go to the support group?"])[0]
    scores = onnx_int8.embed(TEXTS) @ query
    assert int(np.argmax(scores)) == 0


def test_output_is_float32_unit_vectors(onnx_int8: embedding.Embedder) -> None:
    vectors = onnx_int8.embed(TEXTS)
    assert vectors.dtype == np.float32
    assert vectors.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_order_is_preserved_across_length_sorted_batches(onnx_fp32: embedding.Embedder) -> None:
    # batch_size=3 with texts of very different lengths: batches are formed by length, output by input.
    forward = onnx_fp32.embed(TEXTS)
    one_by_one = np.stack([onnx_fp32.embed([t])[0] for t in TEXTS])
    np.testing.assert_allclose(forward, one_by_one, atol=1e-4)
    permutation = np.random.default_rng(7).permutation(len(TEXTS))
    shuffled = onnx_fp32.embed([TEXTS[i] for i in permutation])
    np.testing.assert_allclose(shuffled, forward[permutation], atol=1e-4)


def test_empty_input_gives_empty_matrix(onnx_int8: embedding.Embedder) -> None:
    vectors = onnx_int8.embed([])
    assert vectors.shape == (0, 384)
    assert vectors.dtype == np.float32


def test_text_beyond_256_tokens_is_truncated_like_the_model_card(onnx_fp32: embedding.Embedder) -> None:
    long = " ".join(f"word{i}" for i in range(400))
    a, b = onnx_fp32.embed([long, long + " and a different ending that falls past the limit"])
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_rejects_a_bare_string_and_non_strings(onnx_int8: embedding.Embedder) -> None:
    with pytest.raises(TypeError, match="list of strings"):
        onnx_int8.embed("not a list")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        onnx_int8.embed(["ok", 3])  # type: ignore[list-item]


def test_unknown_backend_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown EMBEDDING_BACKEND 'tpu'"):
        build_embedder("tpu")


def test_get_embedder_is_one_instance_per_process(settings) -> None:  # type: ignore[no-untyped-def]
    settings.EMBEDDING_BACKEND = "onnx"
    embedding.reset_embedder_cache()
    seen: list[embedding.Embedder] = []
    threads = [threading.Thread(target=lambda: seen.append(get_embedder())) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert len(seen) == 6
        assert all(e is seen[0] for e in seen)
        assert seen[0] is get_embedder()
        assert seen[0].backend == "onnx"
    finally:
        embedding.reset_embedder_cache()


def test_importing_the_module_does_not_import_torch() -> None:
    code = "import sys, vault.embedding; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["False", "False"]


def test_export_cache_is_keyed_by_weights_and_reused(cache_dir: Path) -> None:
    first = ensure_onnx_model(cache_dir, quantize=True)
    assert first.exists()
    weights = embedding._weights_sha256(embedding.model_dir() / "model.safetensors")
    assert weights[:16] in first.name
    mtime = first.stat().st_mtime_ns
    assert ensure_onnx_model(cache_dir, quantize=True) == first
    assert first.stat().st_mtime_ns == mtime  # not exported again


@pytest.mark.slow
def test_two_processes_racing_to_export_both_get_a_valid_model(tmp_path: Path) -> None:
    code = (
        "import sys; from vault.embedding import OnnxEmbedder; "
        "e = OnnxEmbedder(sys.argv[1], quantize=True); v = e.embed(['hello world']); print(v.shape[1])"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert [o.strip() for o in outputs] == ["384", "384"]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2  # the fp32 export and its int8 quantization, no temporary files left
    assert all(n.endswith(".onnx") and not n.startswith(".") for n in names)
