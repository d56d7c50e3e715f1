"""KV caches carry the installation's watermark by construction: they are built from its marked text.

A KV cache is a deterministic function of (model, exact token ids). If every installation's cache is
built from *its* watermarked text, two installations' caches differ wherever their variants differ,
and a leaked cache is attributed in one of two ways:

1. The artifact stores its token ids (our MemCube `activation` payload does): decode them and run
   `detect_text` on the result; no model is needed.
2. Only tensors leaked: for each candidate, rebuild the cache from `kv_build_text(...)` with the same
   model and compare (`attribute_kv_cache`, with the inference worker supplying the `recompute`
   callable so that torch stays out of this module). Caches of different installations usually differ
   in length already, which makes most comparisons free.

The zero-width layer is left out of KV text by default: invisible characters become real tokens in
most LLM tokenizers, and a prefix cache should cost no more tokens than the text it stands for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from governance.watermark.text import watermark_text


def kv_build_text(text: str, *, key: bytes, installation_id: str, zero_width: bool = False) -> str:
    """The exact text an installation's KV cache must be built from (never the publisher's original)."""
    return watermark_text(text, key=key, installation_id=installation_id, zero_width=zero_width)


def kv_candidate_texts(
    text: str, *, key: bytes, candidates: Sequence[str], zero_width: bool = False
) -> dict[str, str]:
    return {c: kv_build_text(text, key=key, installation_id=c, zero_width=zero_width) for c in candidates}


def attribute_kv_cache(
    leaked: Sequence[np.ndarray],
    *,
    text: str,
    key: bytes,
    candidates: Sequence[str],
    recompute: Callable[[str], Sequence[np.ndarray]],
    rtol: float = 1e-3,
    atol: float = 1e-3,
) -> str | None:
    """The candidate whose rebuilt cache matches `leaked` layer by layer, or None.

    `recompute(text)` returns the cache tensors for `text` (e.g. keys and values per layer, as numpy),
    built exactly as installations build them. Different texts give different token sequences, so a
    shape mismatch rules a candidate out without comparing values.
    """
    texts = kv_candidate_texts(text, key=key, candidates=candidates)
    seen: dict[str, str | None] = {}
    for candidate, candidate_text in texts.items():
        if candidate_text in seen:
            continue  # identical texts give identical caches: attribution cannot separate them
        rebuilt = recompute(candidate_text)
        match = len(rebuilt) == len(leaked) and all(
            a.shape == b.shape and np.allclose(a, b, rtol=rtol, atol=atol)
            for a, b in zip(rebuilt, leaked, strict=True)
        )
        seen[candidate_text] = candidate if match else None
        if match:
            duplicates = [c for c, t in texts.items() if t == candidate_text]
            return candidate if len(duplicates) == 1 else None
    return None


def distinct_kv_texts(texts: Mapping[str, str]) -> float:
    """Share of candidates whose KV text is unique (1.0: every cache is attributable on its own)."""
    counts: dict[str, int] = {}
    for t in texts.values():
        counts[t] = counts.get(t, 0) + 1
    return sum(1 for t in texts.values() if counts[t] == 1) / max(1, len(texts))
