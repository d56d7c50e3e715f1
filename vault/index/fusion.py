"""Fusing the dense and lexical routes into one ranking, and lexical pseudo-relevance feedback.

The default, `weighted`, is a weighted sum of *calibrated* route scores: the cosine similarity as is
(clipped at 0) and BM25 through a saturating transform `s / (s + bm25_half)`. Both lie in [0, 1] and
mean the same thing whatever the query, so a fused score is comparable across queries and a caller can
set a `min_score`. (Per-query min-max normalisation, kept as `minmax`, gives the best hit of every
query 1.0, even for a query nothing answers.) `rrf` fuses ranks only.
"""

from __future__ import annotations

import math

from vault.index.types import FUSIONS

DEFAULT_DENSE_WEIGHT = 0.3  # chosen by leave-one-conversation-out on LoCoMo dev (docs/vault-index.md)
DEFAULT_BM25_HALF = 16.0  # the BM25 score that counts as half-way lexical evidence (tuned likewise)
DEFAULT_RRF_K = 60
DEFAULT_PRF_DOCS = 5
DEFAULT_PRF_TERMS = 10
DEFAULT_PRF_WEIGHT = 0.5
PRF_MIN_CANDIDATES_PER_DOC = 3
BM25_K1 = 0.9  # short turns: saturate term frequency early ...
BM25_B = 0.4  # ... and penalise length mildly (measured on LoCoMo, docs/vault-index.md)


def dense_calibrated(cosine: float) -> float:
    """Cosine similarity as a [0, 1] score: negative similarity is no evidence at all."""
    return min(1.0, max(0.0, cosine))


def sparse_calibrated(bm25: float, half: float = DEFAULT_BM25_HALF) -> float:
    """BM25 (unbounded) as a [0, 1] score that saturates: `half` maps to 0.5."""
    return bm25 / (bm25 + half) if bm25 > 0 else 0.0


def _minmax(scores: dict[str, float]) -> dict[str, float]:
    if not scores:
        return {}
    lo, hi = min(scores.values()), max(scores.values())
    if hi - lo < 1e-9:
        return dict.fromkeys(scores, 1.0)
    return {k: (v - lo) / (hi - lo) for k, v in scores.items()}


def fuse(
    dense: dict[str, float],
    sparse: dict[str, float],
    *,
    fusion: str = "weighted",
    dense_weight: float = DEFAULT_DENSE_WEIGHT,
    rrf_k: int = DEFAULT_RRF_K,
    bm25_half: float = DEFAULT_BM25_HALF,
) -> list[tuple[str, float]]:
    """Fuse two routes' candidate scores (id -> cosine / BM25) into one ranking, best first.

    weighted: dense_weight * calibrated cosine + (1 - dense_weight) * calibrated BM25 (a missing route
              counts 0); scores in [0, 1], comparable across queries.
    minmax:   the same weighted sum of each route min-max normalised over its own candidates.
    rrf:      sum over routes of 1 / (rrf_k + rank), ranks from 1; dense_weight is ignored.
    """
    fused: dict[str, float] = {}
    if fusion in ("weighted", "minmax"):
        if fusion == "weighted":
            d = {k: dense_calibrated(v) for k, v in dense.items()}
            s = {k: sparse_calibrated(v, bm25_half) for k, v in sparse.items()}
        else:
            d, s = _minmax(dense), _minmax(sparse)
        for ranked, weight in ((d, dense_weight), (s, 1.0 - dense_weight)):
            for key, value in ranked.items():
                fused[key] = fused.get(key, 0.0) + weight * value
    elif fusion == "rrf":
        for route in (dense, sparse):
            ordered = sorted(route.items(), key=lambda kv: -kv[1])
            for rank, (key, _) in enumerate(ordered, start=1):
                fused[key] = fused.get(key, 0.0) + 1.0 / (rrf_k + rank)
    else:
        raise ValueError(f"fusion {fusion!r} is not one of {', '.join(FUSIONS)}")
    return ranked_items(fused)


def ranked_items(scores: dict[str, float]) -> list[tuple[str, float]]:
    """Best first; ties broken by id so results are deterministic."""
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def expand_lexical_scores(
    sparse: dict[str, float],
    texts: dict[str, str],
    *,
    feedback: list[str],
    query_terms: set[str],
    terms: int = DEFAULT_PRF_TERMS,
    weight: float = DEFAULT_PRF_WEIGHT,
    k1: float = BM25_K1,
    b: float = BM25_B,
) -> dict[str, float]:
    """Pseudo-relevance feedback on the lexical route, computed over the candidates only.

    The best few fused candidates are assumed relevant; their most distinctive terms (tf x idf, with
    document frequencies taken over the candidate set) expand the query, and every candidate's BM25
    score gains `weight` x its BM25 for the expansion terms under candidate-set statistics (the feedback
    documents themselves keep their score, else they would crowd the top by their own terms). This
    re-ranks candidates both routes already found, with no second search: memories phrased unlike the
    question but like its best answers move up (LoCoMo: recall@10 +1.5 to 2 points, MRR unchanged).
    """
    candidates = list(texts)
    # With few candidates the "feedback" is most of the set and its distinctive terms are noise.
    if len(candidates) < PRF_MIN_CANDIDATES_PER_DOC * max(1, len(feedback)) or not feedback:
        return sparse
    counts = {key: _term_counts(texts[key]) for key in candidates}
    n = len(candidates)
    df: dict[str, int] = {}
    for bag in counts.values():
        for term in bag:
            df[term] = df.get(term, 0) + 1
    term_weights: dict[str, float] = {}
    for key in feedback:
        feedback_bag = counts.get(key)
        if not feedback_bag:
            continue
        length = sum(feedback_bag.values())
        for term, tf in feedback_bag.items():
            if term not in query_terms:
                term_weights[term] = term_weights.get(term, 0.0) + tf / length * math.log((n + 1) / df[term])
    expansion = [t for t, _ in sorted(term_weights.items(), key=lambda kv: (-kv[1], kv[0]))[:terms]]
    if not expansion:
        return sparse
    lengths = {key: sum(bag.values()) for key, bag in counts.items()}
    avg_length = max(1e-9, sum(lengths.values()) / n)
    idf = {t: math.log((n - df[t] + 0.5) / (df[t] + 0.5) + 1.0) for t in expansion}
    expanded = dict(sparse)
    chosen = set(feedback)
    for key, bag in counts.items():
        if key in chosen:
            continue  # their terms define the expansion; boosting them would only reinforce the first pass
        norm = k1 * (1.0 - b + b * lengths[key] / avg_length)
        extra = sum(idf[t] * bag[t] * (k1 + 1.0) / (bag[t] + norm) for t in expansion if t in bag)
        if extra > 0:
            expanded[key] = expanded.get(key, 0.0) + weight * extra
    return expanded


def _term_counts(text: str) -> dict[str, int]:
    bag: dict[str, int] = {}
    for term in text.split():
        bag[term] = bag.get(term, 0) + 1
    return bag
