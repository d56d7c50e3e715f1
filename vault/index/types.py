"""The index's contract: what a document, a filter and a hit are, and the limits every value must meet.

Field limits are part of the Milvus schema; values beyond them are rejected, never truncated, because a
silently truncated tag or id would make filters lie. The API validates with the same rules
(`vault.index.rules`), so a value the index would refuse is a 400 at the door, not a stuck outbox row.
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = frozenset({"plaintext", "activation", "parameter"})
STATES = frozenset({"generated", "activated", "merged", "archived", "expired", "deleted"})
MODES = ("dense", "sparse", "hybrid")
FUSIONS = ("weighted", "minmax", "rrf")

MAX_KEY_LEN = 64
MAX_TAG_LEN = 128
MAX_TAGS = 64
MAX_SEMANTIC_TYPE_LEN = 64
MAX_LEXICAL_BYTES = 60_000  # VARCHAR max is 65,535 bytes
MAX_FILTER_VALUES = 1_000
MAX_TOP_K = 1_000
# Timestamps are epoch seconds in INT64 fields; 0 means "unknown" (valid_from) or "open-ended"
# (valid_to), so moments before 1970 cannot be represented.
MIN_TS = 0
MAX_TS = 2**62
MAX_QUERY_TERMS = 256


class IndexValueError(ValueError):
    """A value the index cannot hold or filter on. `field` names it (e.g. "tag", "valid_from_ts")."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class IndexDoc:
    id: str  # MemCube UUID as str (primary key)
    namespace: str  # namespace UUID as str: the partition key field
    text: str
    kind: str  # plaintext | activation | parameter
    state: str  # generated | activated | merged | archived | expired | deleted
    owner: str  # owner user UUID as str
    tags: list[str]
    semantic_type: str
    created_ts: int  # epoch seconds
    valid_from_ts: int  # epoch seconds, 0 when unknown
    valid_to_ts: int  # epoch seconds, 0 when open-ended
    version: int


@dataclass(frozen=True)
class IndexFilter:
    namespaces: list[str]  # required, non-empty: a search never spans unnamed tenants
    kinds: list[str] | None = None
    states: list[str] | None = None
    owners: list[str] | None = None
    tags_any: list[str] | None = None
    tags_all: list[str] | None = None
    semantic_types: list[str] | None = None
    created_from_ts: int | None = None  # inclusive
    created_to_ts: int | None = None  # inclusive
    valid_at_ts: int | None = None  # valid_from <= t and (valid_to == 0 or t < valid_to)


@dataclass(frozen=True)
class IndexHit:
    id: str
    score: float  # fused score in [0, 1], higher is better, comparable across queries (calibrated)
    dense_score: float | None  # cosine similarity, None when the dense route did not return it
    sparse_score: float | None  # BM25, None when the lexical route did not return it
