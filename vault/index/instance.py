"""The process-wide index, built once from settings."""

from __future__ import annotations

import threading

from vault.index.client import (
    DEFAULT_CANDIDATES,
    DEFAULT_HNSW_EF,
    LITE_FLUSH_EVERY,
    SearchTuning,
    VectorIndex,
)
from vault.index.fusion import DEFAULT_BM25_HALF, DEFAULT_DENSE_WEIGHT, DEFAULT_PRF_DOCS

_index: VectorIndex | None = None
_index_lock = threading.Lock()


def tuning_from_settings() -> SearchTuning:
    from django.conf import settings

    return SearchTuning(
        fusion=getattr(settings, "VAULT_FUSION", "weighted"),
        dense_weight=float(getattr(settings, "VAULT_DENSE_WEIGHT", DEFAULT_DENSE_WEIGHT)),
        bm25_half=float(getattr(settings, "VAULT_BM25_HALF", DEFAULT_BM25_HALF)),
        candidates=int(getattr(settings, "VAULT_SEARCH_CANDIDATES", DEFAULT_CANDIDATES)),
        hnsw_ef=int(getattr(settings, "VAULT_HNSW_EF", DEFAULT_HNSW_EF)),
        prf_docs=int(getattr(settings, "VAULT_PRF_DOCS", DEFAULT_PRF_DOCS)),
        lite_flush_every=int(getattr(settings, "VAULT_LITE_FLUSH_EVERY", LITE_FLUSH_EVERY)),
    )


def get_index() -> VectorIndex:
    """The process-wide index, built from settings (MILVUS_URI, MILVUS_TOKEN, MILVUS_COLLECTION_PREFIX)."""
    global _index
    if _index is None:
        with _index_lock:
            if _index is None:
                from django.conf import settings

                _index = VectorIndex(
                    uri=settings.MILVUS_URI,
                    token=getattr(settings, "MILVUS_TOKEN", ""),
                    collection_prefix=getattr(settings, "MILVUS_COLLECTION_PREFIX", "memhub"),
                    tuning=tuning_from_settings(),
                )
    return _index


def reset_index_cache() -> None:
    """Forget the process-wide index (tests, settings changes); closes its connection."""
    global _index
    with _index_lock:
        if _index is not None:
            _index.close()
        _index = None
