"""Keyed bits and the statistics that turn agreeing bits into evidence.

Every installation gets a 64-bit vector `h_i = HMAC(key, installation_id)`; every carrier position (a
slot, named by its local context) gets `h_s = HMAC(key, slot_key)`. The installation's bit at the slot
is the GF(2) inner product `popcount(h_i & h_s) mod 2`. For a fixed pair of distinct installations the
two bits differ exactly when `popcount((h_i ^ h_j) & h_s)` is odd, which for a pseudo-random `h_s`
happens with probability 1/2 independently per slot: an innocent installation agrees with the leaked
text on each slot like a fair coin, so its agreement count is Binomial(n, 1/2). That is the null
hypothesis the p-values below use. (The inner product makes scoring a thousand candidates one
vectorised AND + popcount instead of a million HMACs.)
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Iterable, Sequence

import numpy as np

DOMAIN = b"memhub-watermark-v1"


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) < 16:
        raise ValueError("watermark key must be at least 16 bytes")


def keyed_u64(key: bytes, label: bytes, message: bytes) -> int:
    digest = hmac.new(key, DOMAIN + b"/" + label + b"/" + message, hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "little")


def installation_vector(key: bytes, installation_id: str) -> int:
    _check_key(key)
    value = keyed_u64(key, b"installation", installation_id.encode())
    return value or 1  # the zero vector would agree with everything; 2**-64, but never allow it


def installation_vectors(key: bytes, installation_ids: Sequence[str]) -> np.ndarray:
    return np.fromiter(
        (installation_vector(key, i) for i in installation_ids), dtype=np.uint64, count=len(installation_ids)
    )


def slot_vectors(key: bytes, label: bytes, slot_keys: Iterable[str]) -> np.ndarray:
    return np.array([keyed_u64(key, label, s.encode()) for s in slot_keys], dtype=np.uint64)


def bits_for(slots: np.ndarray, installations: np.ndarray) -> np.ndarray:
    """(n_slots, n_installations) array of 0/1 bits."""
    if slots.size == 0 or installations.size == 0:
        return np.zeros((slots.size, installations.size), dtype=np.uint8)
    return (np.bitwise_count(slots[:, None] & installations[None, :]) & 1).astype(np.uint8)


def binomial_sf(k: int, n: int, p: float = 0.5) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exact, in log space (n may be thousands)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        for i in range(k, n + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def bonferroni(p: float, comparisons: int) -> float:
    return min(1.0, p * max(1, comparisons))
