"""The Milvus index of memories: a derived, rebuildable copy of the relational source of truth.

This is the only module that imports pymilvus. One collection per embedding model
(`{prefix}_{slug(model)}_{dim}`) holds every tenant's memories; the namespace field is the partition
key, and every search carries a namespace filter, so a search never spans tenants it did not name.

Retrieval is hybrid: a dense route (HNSW, cosine, all-MiniLM-L6-v2 vectors of the memory text) and a
lexical route (BM25 computed by Milvus from a field we analyse ourselves: stop words dropped, English
Snowball stems, plus the memory's valid-from date spelt out so "in May 2022" matches). Both routes are
fused here rather than by Milvus' hybrid_search, because callers need each route's own score (provenance
shows why a memory matched) and because what measured best on LoCoMo (min-max normalised weighted sum,
lexical candidates given their true cosine, pseudo-relevance feedback over the candidates;
docs/vault-index.md) is not one of Milvus' rankers. RRF stays available.

milvus-lite serves reads concurrently but its writes are not meant to interleave, so writes from this
process are serialised by a lock.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import re
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pymilvus import MilvusClient

    from vault.embedding import Embedder

logger = logging.getLogger(__name__)

KINDS = frozenset({"plaintext", "activation", "parameter"})
STATES = frozenset({"generated", "activated", "merged", "archived", "expired", "deleted"})
MODES = ("dense", "sparse", "hybrid")
FUSIONS = ("weighted", "rrf")

# Field limits: Milvus needs them in the schema; values beyond them are rejected, never truncated,
# because a silently truncated tag or id would make filters lie.
MAX_KEY_LEN = 64
MAX_TAG_LEN = 128
MAX_TAGS = 64
MAX_SEMANTIC_TYPE_LEN = 64
MAX_LEXICAL_BYTES = 60_000  # VARCHAR max is 65,535 bytes
MAX_FILTER_VALUES = 1_000
MAX_TOP_K = 1_000
MAX_TS = 2**62
MAX_QUERY_TERMS = 256

DEFAULT_DENSE_WEIGHT = 0.4
DEFAULT_RRF_K = 60
DEFAULT_CANDIDATES = 50
DEFAULT_HNSW_EF = 96
DEFAULT_PRF_DOCS = 5
DEFAULT_PRF_TERMS = 10
DEFAULT_PRF_WEIGHT = 0.5
PRF_MIN_CANDIDATES_PER_DOC = 3
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 200
BM25_K1 = 0.9  # short turns: saturate term frequency early ...
BM25_B = 0.4  # ... and penalise length mildly (measured on LoCoMo, docs/vault-index.md)
WRITE_BATCH = 1_000
# milvus-lite keeps unflushed rows in a memtable that every search scans in Python; flushing after
# this many written rows keeps searches fast. Real Milvus flushes on its own, so this is lite-only.
LITE_FLUSH_EVERY = 2_000
RPC_TIMEOUT_S = 60.0

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
_PREFIX_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_WORD_RE = re.compile(r"\w+", re.UNICODE)

# Ask for the primary key only: an empty list makes milvus-lite return every field, vectors included.
_OUTPUT_ID_ONLY = ["id"]


# ── Contract dataclasses ──────────────────────────────────────────────────────────────────────────


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
    score: float  # fused score, higher is better
    dense_score: float | None  # cosine similarity, None when the dense route did not return it
    sparse_score: float | None  # BM25, None when the lexical route did not return it


# ── Text analysis (lexical route) ─────────────────────────────────────────────────────────────────

# NLTK's English stop words: question words ("what", "when", "did") carry no topic, and keeping
# "not"/"no" out of the index loses nothing BM25 could use.
STOP_WORDS = frozenset(
    """i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she
    her hers herself it its itself they them their theirs themselves what which who whom this that these
    those am is are was were be been being have has had having do does did doing a an the and but if or
    because as until while of at by for with about against between into through during before after
    above below to from up down in out on off over under again further then once here there when where
    why how all any both each few more most other some such no nor not only own same so than too very s
    t can will just don should now""".split()
)

_stemmer_lock = threading.Lock()
_stemmer: Any = None


@functools.lru_cache(maxsize=200_000)
def _stem(word: str) -> str:
    """English Snowball stem; cached because vocabulary repeats, locked because stemmers keep state."""
    global _stemmer
    with _stemmer_lock:
        if _stemmer is None:
            import snowballstemmer

            _stemmer = snowballstemmer.stemmer("english")
        return str(_stemmer.stemWord(word))


def lexical_terms(text: str) -> list[str]:
    """The terms BM25 sees: lower-cased words, stop words dropped, stemmed."""
    return [_stem(w) for w in _WORD_RE.findall(text.lower()) if w not in STOP_WORDS]


def _date_words(ts: int) -> str:
    day = datetime.fromtimestamp(ts, tz=UTC)
    return f"{day.day} {day:%B %Y}"


def lexical_text(doc: IndexDoc) -> str:
    """The analysed text stored for BM25: the memory's terms plus its valid-from date in words.

    Spelling the date ("8 May 2023") lets time-qualified questions match lexically; on LoCoMo it
    lifted recall@10 by 1.5 points. Milvus' standard analyzer then only splits on spaces and
    lower-cases, so the index behaves the same on milvus-lite and on a Milvus server.
    """
    text = doc.text
    if doc.valid_from_ts > 0:
        text = f"{text} {_date_words(doc.valid_from_ts)}"
    analysed = " ".join(lexical_terms(text))
    encoded = analysed.encode("utf-8")
    if len(encoded) > MAX_LEXICAL_BYTES:
        analysed = encoded[:MAX_LEXICAL_BYTES].decode("utf-8", errors="ignore").rsplit(" ", 1)[0]
    return analysed


def lexical_query(query: str) -> str:
    """The analysed query, capped like the dense side (which truncates at 256 tokens)."""
    return " ".join(lexical_terms(query)[:MAX_QUERY_TERMS])


def embedding_text(doc: IndexDoc) -> str:
    """The text the dense route embeds: the memory text itself (a date prefix measured no better)."""
    return doc.text


# ── Validation and filter expressions ────────────────────────────────────────────────────────────


def _quote(value: str) -> str:
    """A Milvus string literal. Values are validated first (no control characters), then the two
    characters with meaning inside a double-quoted literal are escaped, so no value can end the
    literal and inject an expression."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _str_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(_quote(v) for v in values) + "]"


def _check_key(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")
    if len(value) > MAX_KEY_LEN or not _KEY_RE.match(value):
        raise ValueError(f"{what} {value[:80]!r} is not a valid identifier (letters, digits, '_.:-', <= 64)")
    return value


def _check_label(value: Any, what: str, max_len: int) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")
    if len(value) > max_len:
        raise ValueError(f"{what} {value[:40]!r}... is longer than {max_len} characters")
    if _CONTROL_RE.search(value):
        raise ValueError(f"{what} {value[:80]!r} contains control characters")
    return value


def _check_choice(value: Any, what: str, allowed: frozenset[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{what} {value!r} is not one of {', '.join(sorted(allowed))}")
    return str(value)


def _check_ts(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{what} must be an integer number of epoch seconds")
    if not 0 <= int(value) < MAX_TS:
        raise ValueError(f"{what} {value} is out of range")
    return int(value)


def _check_list(values: Any, what: str, *, required: bool = False) -> list[Any] | None:
    if values is None:
        if required:
            raise ValueError(f"{what} is required")
        return None
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise ValueError(f"{what} must be a list")
    values = list(values)
    if not values:
        if required:
            raise ValueError(f"{what} must not be empty: a search never spans unnamed namespaces")
        raise ValueError(f"{what} must not be empty (leave it out to not filter)")
    if len(values) > MAX_FILTER_VALUES:
        raise ValueError(f"{what} has {len(values)} values; at most {MAX_FILTER_VALUES}")
    return list(dict.fromkeys(values))


def build_filter_expr(filters: IndexFilter) -> str:
    """Validate `filters` and turn them into a Milvus boolean expression (raises ValueError)."""
    if not isinstance(filters, IndexFilter):
        raise ValueError("filters must be an IndexFilter")
    namespaces = [
        _check_key(v, "namespace") for v in _check_list(filters.namespaces, "namespaces", required=True) or []
    ]
    clauses = [
        f"namespace == {_quote(namespaces[0])}"
        if len(namespaces) == 1
        else f"namespace in {_str_list(namespaces)}"
    ]
    if (kinds := _check_list(filters.kinds, "kinds")) is not None:
        clauses.append(f"kind in {_str_list([_check_choice(k, 'kind', KINDS) for k in kinds])}")
    if (states := _check_list(filters.states, "states")) is not None:
        checked = [_check_choice(s, "state", STATES) for s in states]
        clauses.append(f"state in {_str_list(checked)}")
    if (owners := _check_list(filters.owners, "owners")) is not None:
        clauses.append(f"owner in {_str_list([_check_key(o, 'owner') for o in owners])}")
    if (tags_any := _check_list(filters.tags_any, "tags_any")) is not None:
        checked = [_check_label(t, "tag", MAX_TAG_LEN) for t in tags_any]
        clauses.append(f"array_contains_any(tags, {_str_list(checked)})")
    if (tags_all := _check_list(filters.tags_all, "tags_all")) is not None:
        checked = [_check_label(t, "tag", MAX_TAG_LEN) for t in tags_all]
        clauses.append(f"array_contains_all(tags, {_str_list(checked)})")
    if (types := _check_list(filters.semantic_types, "semantic_types")) is not None:
        checked = [_check_label(t, "semantic_type", MAX_SEMANTIC_TYPE_LEN) for t in types]
        clauses.append(f"semantic_type in {_str_list(checked)}")
    lo = hi = None
    if filters.created_from_ts is not None:
        lo = _check_ts(filters.created_from_ts, "created_from_ts")
        clauses.append(f"created_ts >= {lo}")
    if filters.created_to_ts is not None:
        hi = _check_ts(filters.created_to_ts, "created_to_ts")
        clauses.append(f"created_ts <= {hi}")
    if lo is not None and hi is not None and lo > hi:
        raise ValueError("created_from_ts is after created_to_ts")
    if filters.valid_at_ts is not None:
        t = _check_ts(filters.valid_at_ts, "valid_at_ts")
        clauses.append(f"valid_from_ts <= {t} and (valid_to_ts == 0 or valid_to_ts > {t})")
    return " and ".join(f"({c})" for c in clauses)


def _check_doc(doc: IndexDoc) -> None:
    if not isinstance(doc, IndexDoc):
        raise ValueError("upsert takes IndexDoc values")
    _check_key(doc.id, "id")
    _check_key(doc.namespace, "namespace")
    _check_key(doc.owner, "owner")
    _check_choice(doc.kind, "kind", KINDS)
    _check_choice(doc.state, "state", STATES)
    if not isinstance(doc.text, str):
        raise ValueError(f"doc {doc.id}: text must be a string")
    if doc.semantic_type:
        _check_label(doc.semantic_type, "semantic_type", MAX_SEMANTIC_TYPE_LEN)
    if len(doc.tags) > MAX_TAGS:
        raise ValueError(f"doc {doc.id}: {len(doc.tags)} tags; the index holds at most {MAX_TAGS}")
    for tag in doc.tags:
        _check_label(tag, "tag", MAX_TAG_LEN)
    for name in ("created_ts", "valid_from_ts", "valid_to_ts"):
        _check_ts(getattr(doc, name), name)
    if isinstance(doc.version, bool) or not isinstance(doc.version, int | np.integer):
        raise ValueError(f"doc {doc.id}: version must be an integer")


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


# ── Fusion ────────────────────────────────────────────────────────────────────────────────────────


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
) -> list[tuple[str, float]]:
    """Fuse two routes' candidate scores (id -> score, higher better) into one ranking.

    weighted: each route min-max normalised over its own candidates, then
              dense_weight * dense + (1 - dense_weight) * sparse (a missing route counts 0).
    rrf:      sum over routes of 1 / (rrf_k + rank), ranks from 1; dense_weight is ignored.
    """
    fused: dict[str, float] = {}
    if fusion == "weighted":
        for ranked, weight in ((_minmax(dense), dense_weight), (_minmax(sparse), 1.0 - dense_weight)):
            for key, value in ranked.items():
                fused[key] = fused.get(key, 0.0) + weight * value
    elif fusion == "rrf":
        for route in (dense, sparse):
            ordered = sorted(route.items(), key=lambda kv: -kv[1])
            for rank, (key, _) in enumerate(ordered, start=1):
                fused[key] = fused.get(key, 0.0) + 1.0 / (rrf_k + rank)
    else:
        raise ValueError(f"fusion {fusion!r} is not one of {', '.join(FUSIONS)}")
    # Ties broken by id so results are deterministic.
    return sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))


@dataclass
class _Route:
    """One retrieval route's candidates: scores, and on request their analysed text and vectors."""

    scores: dict[str, float] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)


def expand_lexical_scores(
    sparse: dict[str, float],
    texts: dict[str, str],
    *,
    feedback: list[str],
    query_terms: set[str],
    terms: int = 10,
    weight: float = 0.5,
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


# ── The index ─────────────────────────────────────────────────────────────────────────────────────


@dataclass
class SearchTuning:
    """Search knobs; the defaults are the measured ones (docs/vault-index.md)."""

    fusion: str = "weighted"
    dense_weight: float = DEFAULT_DENSE_WEIGHT
    rrf_k: int = DEFAULT_RRF_K
    candidates: int = DEFAULT_CANDIDATES  # per route, before fusion (at least top_k)
    hnsw_ef: int = DEFAULT_HNSW_EF
    prf_docs: int = DEFAULT_PRF_DOCS  # feedback documents for lexical expansion (0: off)
    prf_terms: int = DEFAULT_PRF_TERMS
    prf_weight: float = DEFAULT_PRF_WEIGHT
    fill_dense: bool = True  # give lexical-only candidates their true cosine (costs their vectors)
    lite_partition_pruning: bool = True
    parallel_routes: bool = True


class VectorIndex:
    """One Milvus collection per embedding model; see the module docstring."""

    def __init__(
        self,
        *,
        uri: str,
        token: str = "",
        collection_prefix: str = "memhub",
        embedder: Embedder | None = None,
        tuning: SearchTuning | None = None,
    ) -> None:
        if not _PREFIX_RE.match(collection_prefix):
            raise ValueError(f"collection_prefix {collection_prefix!r}: use letters, digits and '_'")
        if embedder is None:
            from vault.embedding import get_embedder

            embedder = get_embedder()
        self.uri = uri
        self.embedder = embedder
        self.dim = int(embedder.dim)
        self.collection_name = f"{collection_prefix}_{slug(embedder.name)}_{self.dim}"
        self.tuning = tuning or SearchTuning()
        self._token = token
        self._client: MilvusClient | None = None
        self._client_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._ensured = False
        self._is_lite: bool | None = None
        self._lite_buckets = 0
        self._unflushed = 0
        self._pool: ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"VectorIndex({self.uri!r}, {self.collection_name!r})"

    # -- plumbing --

    @property
    def client(self) -> MilvusClient:
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    from pymilvus import MilvusClient

                    self._client = MilvusClient(uri=self.uri, token=self._token, timeout=RPC_TIMEOUT_S)
        return self._client

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None
            if self._pool is not None:
                self._pool.shutdown(wait=False)
                self._pool = None
        self._ensured = False

    def _schema(self) -> Any:
        from pymilvus import DataType, Function, FunctionType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, max_length=MAX_KEY_LEN, is_primary=True)
        schema.add_field("namespace", DataType.VARCHAR, max_length=MAX_KEY_LEN, is_partition_key=True)
        schema.add_field("kind", DataType.VARCHAR, max_length=16)
        schema.add_field("state", DataType.VARCHAR, max_length=16)
        schema.add_field("owner", DataType.VARCHAR, max_length=MAX_KEY_LEN)
        schema.add_field(
            "tags",
            DataType.ARRAY,
            element_type=DataType.VARCHAR,
            max_capacity=MAX_TAGS,
            max_length=MAX_TAG_LEN * 4,  # bytes: room for any 128 characters of UTF-8
        )
        schema.add_field("semantic_type", DataType.VARCHAR, max_length=MAX_SEMANTIC_TYPE_LEN * 4)
        schema.add_field("created_ts", DataType.INT64)
        schema.add_field("valid_from_ts", DataType.INT64)
        schema.add_field("valid_to_ts", DataType.INT64)
        schema.add_field("version", DataType.INT64)
        schema.add_field(
            "lexical",
            DataType.VARCHAR,
            max_length=65_535,
            enable_analyzer=True,
            analyzer_params={"tokenizer": "standard"},
        )
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_field("dense", DataType.FLOAT_VECTOR, dim=self.dim)
        schema.add_function(
            Function(
                name="lexical_bm25",
                function_type=FunctionType.BM25,
                input_field_names=["lexical"],
                output_field_names=["sparse"],
            )
        )
        return schema

    def _index_params(self) -> Any:
        params = self.client.prepare_index_params()
        params.add_index(
            field_name="dense",
            index_name="dense_hnsw",
            index_type="HNSW",
            metric_type="COSINE",
            params={"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION},
        )
        params.add_index(
            field_name="sparse",
            index_name="sparse_bm25",
            index_type="SPARSE_INVERTED_INDEX",
            metric_type="BM25",
            params={"inverted_index_algo": "TAAT_NAIVE", "bm25_k1": BM25_K1, "bm25_b": BM25_B},
        )
        for name in ("namespace", "state", "kind"):
            params.add_index(field_name=name, index_name=f"{name}_inverted", index_type="INVERTED")
        return params

    def ensure_collection(self) -> None:
        """Create the collection with its indexes if missing, check it if present, load it (idempotent).

        Two processes may race to create it; the loser's "already exists" error is ignored.
        """
        if self._ensured:
            return
        client = self.client
        name = self.collection_name
        if not client.has_collection(name):
            try:
                client.create_collection(
                    collection_name=name, schema=self._schema(), index_params=self._index_params()
                )
                logger.info("created Milvus collection %s", name)
            except Exception as exc:
                if "exist" not in str(exc).lower():
                    raise
        self._check_schema(client.describe_collection(name))
        client.load_collection(name)
        self._detect_lite()
        self._ensured = True

    def _check_schema(self, description: dict[str, Any]) -> None:
        fields = {f["name"]: f for f in description.get("fields", [])}
        missing = {"id", "namespace", "tags", "lexical", "sparse", "dense"} - fields.keys()
        dim = fields.get("dense", {}).get("params", {}).get("dim")
        if missing or (dim is not None and int(dim) != self.dim):
            raise RuntimeError(
                f"Milvus collection {self.collection_name} has an incompatible schema (missing "
                f"{sorted(missing)}, dim {dim}); drop it and rebuild the index from the database"
            )

    def _detect_lite(self) -> None:
        """milvus-lite does not prune partition-key buckets from the filter as Milvus does; we name them.

        It hashes the key with md5 into `_pk_<n>` buckets; real Milvus rejects explicit partition names
        on a partition-key collection, so this applies only when the server says it is milvus-lite.
        """
        try:
            version = str(self.client.get_server_version())
        except Exception:
            version = ""
        self._is_lite = version.startswith("milvus_lite")
        self._lite_buckets = 0
        if self._is_lite:
            partitions = self.client.list_partitions(self.collection_name)
            buckets = [p for p in partitions if re.fullmatch(r"_pk_\d+", p)]
            self._lite_buckets = len(buckets)

    def _lite_partitions(self, namespaces: Sequence[str]) -> list[str] | None:
        if not (self.tuning.lite_partition_pruning and self._is_lite and self._lite_buckets):
            return None
        n = self._lite_buckets
        return sorted({f"_pk_{int(hashlib.md5(ns.encode()).hexdigest(), 16) % n}" for ns in namespaces})  # noqa: S324

    # -- writes --

    def upsert(self, docs: list[IndexDoc], vectors: np.ndarray | None = None) -> None:
        """Insert or replace docs by id. Embeds `embedding_text(doc)` when `vectors` is None."""
        docs = list(docs)
        if not docs:
            return
        for doc in docs:
            _check_doc(doc)
        if vectors is not None:
            vectors = np.asarray(vectors, dtype=np.float32)
            if vectors.shape != (len(docs), self.dim):
                raise ValueError(f"vectors has shape {vectors.shape}, expected ({len(docs)}, {self.dim})")
            if not np.isfinite(vectors).all():
                raise ValueError("vectors contain NaN or infinity")
        # A batch naming one id twice keeps the last one, as sequential upserts would.
        last = {doc.id: i for i, doc in enumerate(docs)}
        if len(last) != len(docs):
            keep = sorted(last.values())
            docs = [docs[i] for i in keep]
            vectors = vectors[keep] if vectors is not None else None
        self.ensure_collection()
        for start in range(0, len(docs), WRITE_BATCH):
            chunk = docs[start : start + WRITE_BATCH]
            chunk_vectors = (
                vectors[start : start + WRITE_BATCH]
                if vectors is not None
                else self.embedder.embed([embedding_text(d) for d in chunk])
            )
            rows = [self._row(doc, vec) for doc, vec in zip(chunk, chunk_vectors, strict=True)]
            with self._write_lock:
                self.client.upsert(self.collection_name, rows)
                self._after_write(len(rows))

    def _row(self, doc: IndexDoc, vector: np.ndarray) -> dict[str, Any]:
        return {
            "id": doc.id,
            "namespace": doc.namespace,
            "kind": doc.kind,
            "state": doc.state,
            "owner": doc.owner,
            "tags": list(dict.fromkeys(doc.tags)),
            "semantic_type": doc.semantic_type or "",
            "created_ts": int(doc.created_ts),
            "valid_from_ts": int(doc.valid_from_ts),
            "valid_to_ts": int(doc.valid_to_ts),
            "version": int(doc.version),
            "lexical": lexical_text(doc),
            "dense": vector.tolist(),
        }

    def _after_write(self, rows: int) -> None:
        """Caller holds the write lock."""
        if not self._is_lite:
            return
        self._unflushed += rows
        if self._unflushed >= LITE_FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        """Persist buffered rows (on milvus-lite this also moves them out of the scanned memtable)."""
        self.client.flush(self.collection_name)
        self._unflushed = 0

    def delete(self, ids: list[str]) -> None:
        ids = list(dict.fromkeys(_check_key(i, "id") for i in ids))
        if not ids:
            return
        self.ensure_collection()
        for start in range(0, len(ids), WRITE_BATCH):
            with self._write_lock:
                self.client.delete(self.collection_name, ids=ids[start : start + WRITE_BATCH])
                self._after_write(len(ids[start : start + WRITE_BATCH]))

    # -- reads --

    def search(
        self,
        *,
        query: str,
        filters: IndexFilter,
        top_k: int = 10,
        mode: str = "hybrid",
        query_vector: np.ndarray | None = None,
        dense_weight: float | None = None,
        fusion: str | None = None,
    ) -> list[IndexHit]:
        """Top-k memories for `query` within `filters` (namespaces required); ValueError on bad input."""
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            raise ValueError(f"top_k must be an integer from 1 to {MAX_TOP_K}")
        if not isinstance(query, str):
            raise ValueError("query must be a string")
        fusion = fusion or self.tuning.fusion
        if fusion not in FUSIONS:
            raise ValueError(f"fusion {fusion!r} is not one of {', '.join(FUSIONS)}")
        if dense_weight is None:
            dense_weight = self.tuning.dense_weight
        elif isinstance(dense_weight, bool) or not (
            isinstance(dense_weight, int | float) and math.isfinite(dense_weight) and 0 <= dense_weight <= 1
        ):
            raise ValueError("dense_weight must be a number from 0 to 1")
        expr = build_filter_expr(filters)
        if query_vector is not None:
            query_vector = np.asarray(query_vector, dtype=np.float32).reshape(-1)
            if query_vector.shape != (self.dim,) or not np.isfinite(query_vector).all():
                raise ValueError(f"query_vector must be {self.dim} finite floats")
        lexical = lexical_query(query) if mode != "dense" else ""
        if mode != "sparse" and query_vector is None:
            if not query.strip():
                raise ValueError("query must not be empty")
            query_vector = self.embedder.embed([query])[0]
        self.ensure_collection()
        partitions = self._lite_partitions(filters.namespaces)

        if mode == "dense":
            assert query_vector is not None
            dense = self._route_dense(query_vector, expr, top_k, partitions).scores
            return [IndexHit(i, s, s, None) for i, s in _ranked(dense)[:top_k]]
        if mode == "sparse":
            sparse = self._route_sparse(lexical, expr, top_k, partitions).scores
            return [IndexHit(i, s, None, s) for i, s in _ranked(sparse)[:top_k]]
        assert query_vector is not None
        return self._hybrid(query_vector, lexical, expr, top_k, partitions, fusion, dense_weight)

    def _hybrid(
        self,
        query_vector: np.ndarray,
        lexical: str,
        expr: str,
        top_k: int,
        partitions: list[str] | None,
        fusion: str,
        dense_weight: float,
    ) -> list[IndexHit]:
        limit = min(max(self.tuning.candidates, top_k), MAX_TOP_K)
        if lexical and self.tuning.parallel_routes:
            pool = self._executor()
            sparse_future = pool.submit(self._route_sparse, lexical, expr, limit, partitions, True)
            dense_route = self._route_dense(query_vector, expr, limit, partitions, with_text=True)
            sparse_route = sparse_future.result()
        else:
            dense_route = self._route_dense(query_vector, expr, limit, partitions, with_text=True)
            sparse_route = self._route_sparse(lexical, expr, limit, partitions, True)
        dense, sparse = dict(dense_route.scores), sparse_route.scores
        # Lexical candidates the dense route did not return still get their true cosine, so fusion
        # compares like with like instead of treating "not in the dense top-k" as similarity 0.
        for key, vector in sparse_route.vectors.items():
            if key not in dense:
                dense[key] = float(np.dot(vector, query_vector))
        lexical_scores = sparse
        if sparse and self.tuning.prf_docs > 0:
            texts = {**dense_route.texts, **sparse_route.texts}
            first = fuse(dense, sparse, fusion=fusion, dense_weight=dense_weight, rrf_k=self.tuning.rrf_k)
            lexical_scores = expand_lexical_scores(
                sparse,
                texts,
                feedback=[key for key, _ in first[: self.tuning.prf_docs]],
                query_terms=set(lexical.split()),
                terms=self.tuning.prf_terms,
                weight=self.tuning.prf_weight,
            )
        fused = fuse(dense, lexical_scores, fusion=fusion, dense_weight=dense_weight, rrf_k=self.tuning.rrf_k)
        return [IndexHit(i, s, dense.get(i), sparse.get(i)) for i, s in fused[:top_k]]

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            with self._client_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="vault-index")
        return self._pool

    def _route_dense(
        self,
        vector: np.ndarray,
        expr: str,
        limit: int,
        partitions: list[str] | None,
        *,
        with_text: bool = False,
    ) -> _Route:
        result = self.client.search(
            self.collection_name,
            data=[vector.tolist()],
            anns_field="dense",
            filter=expr,
            limit=limit,
            output_fields=["lexical"] if with_text else _OUTPUT_ID_ONLY,
            search_params={"metric_type": "COSINE", "params": {"ef": max(self.tuning.hnsw_ef, limit)}},
            partition_names=partitions,
        )
        route = _Route()
        for hit in result[0]:
            key = str(hit["id"])
            route.scores[key] = float(hit["distance"])
            if with_text:
                route.texts[key] = str(hit.get("entity", {}).get("lexical") or "")
        return route

    def _route_sparse(
        self, lexical: str, expr: str, limit: int, partitions: list[str] | None, with_extras: bool = False
    ) -> _Route:
        route = _Route()
        if not lexical:
            return route
        result = self.client.search(
            self.collection_name,
            data=[lexical],
            anns_field="sparse",
            filter=expr,
            limit=limit,
            output_fields=(["dense", "lexical"] if self.tuning.fill_dense else ["lexical"])
            if with_extras
            else _OUTPUT_ID_ONLY,
            search_params={"metric_type": "BM25"},
            partition_names=partitions,
        )
        for hit in result[0]:
            # BM25 scores are positive; milvus-lite reports them negated (its internal smaller-is-better).
            score = abs(float(hit["distance"]))
            if score <= 0:
                continue
            key = str(hit["id"])
            route.scores[key] = score
            if with_extras:
                entity = hit.get("entity", {})
                if entity.get("dense") is not None:
                    route.vectors[key] = np.asarray(entity["dense"], dtype=np.float32)
                route.texts[key] = str(entity.get("lexical") or "")
        return route

    def count(self) -> int:
        self.ensure_collection()
        rows = self.client.query(self.collection_name, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def get(self, ids: list[str]) -> list[dict[str, Any]]:
        """Stored scalar fields by id (for checks and rebuild tooling; not a read path for users)."""
        ids = [_check_key(i, "id") for i in ids]
        if not ids:
            return []
        self.ensure_collection()
        fields = ["id", "namespace", "kind", "state", "owner", "tags", "semantic_type", "created_ts"]
        fields += ["valid_from_ts", "valid_to_ts", "version", "lexical"]
        return list(self.client.get(self.collection_name, ids=ids, output_fields=fields))

    def drop(self) -> None:
        with self._write_lock:
            if self.client.has_collection(self.collection_name):
                self.client.drop_collection(self.collection_name)
            self._ensured = False
            self._unflushed = 0


def _ranked(scores: dict[str, float]) -> list[tuple[str, float]]:
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


# ── Process-wide instance ─────────────────────────────────────────────────────────────────────────

_index: VectorIndex | None = None
_index_lock = threading.Lock()


def tuning_from_settings() -> SearchTuning:
    from django.conf import settings

    return SearchTuning(
        fusion=getattr(settings, "VAULT_FUSION", "weighted"),
        dense_weight=float(getattr(settings, "VAULT_DENSE_WEIGHT", DEFAULT_DENSE_WEIGHT)),
        candidates=int(getattr(settings, "VAULT_SEARCH_CANDIDATES", DEFAULT_CANDIDATES)),
        hnsw_ef=int(getattr(settings, "VAULT_HNSW_EF", DEFAULT_HNSW_EF)),
        prf_docs=int(getattr(settings, "VAULT_PRF_DOCS", DEFAULT_PRF_DOCS)),
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
