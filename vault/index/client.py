"""The Milvus client: one collection per embedding model, writes, and the two retrieval routes.

This is the only module that imports pymilvus. One collection per embedding model
(`{prefix}_{slug(model)}_{dim}`) holds every tenant's memories; the namespace field is the partition
key, and every search carries a namespace filter, so a search never spans tenants it did not name.

Retrieval is hybrid: a dense route (HNSW, cosine, all-MiniLM-L6-v2 vectors of the memory text) and a
lexical route (BM25 computed by Milvus from a field we analyse ourselves, `vault.index.analysis`).
Both routes are fused here (`vault.index.fusion`) rather than by Milvus' hybrid_search, because callers
need each route's own score (provenance shows why a memory matched) and a calibrated fused score.

milvus-lite serves reads concurrently but its writes are not meant to interleave, so writes from this
process are serialised by a lock.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from vault.index.analysis import embedding_text, lexical_query, lexical_text
from vault.index.expressions import build_filter_expr
from vault.index.fusion import (
    BM25_B,
    BM25_K1,
    DEFAULT_BM25_HALF,
    DEFAULT_DENSE_WEIGHT,
    DEFAULT_PRF_DOCS,
    DEFAULT_PRF_TERMS,
    DEFAULT_PRF_WEIGHT,
    DEFAULT_RRF_K,
    dense_calibrated,
    expand_lexical_scores,
    fuse,
    ranked_items,
    sparse_calibrated,
)
from vault.index.rules import check_doc, check_key
from vault.index.types import (
    FUSIONS,
    MAX_KEY_LEN,
    MAX_SEMANTIC_TYPE_LEN,
    MAX_TAG_LEN,
    MAX_TAGS,
    MAX_TOP_K,
    MODES,
    IndexDoc,
    IndexFilter,
    IndexHit,
    IndexValueError,
)

if TYPE_CHECKING:
    from pymilvus import MilvusClient

    from vault.embedding import Embedder

logger = logging.getLogger(__name__)

DEFAULT_CANDIDATES = 50
DEFAULT_HNSW_EF = 96
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 200
WRITE_BATCH = 1_000
# milvus-lite keeps unflushed rows in a memtable that every search scans in Python; flushing after
# this many written rows keeps searches fast. Real Milvus flushes on its own, so this is lite-only.
LITE_FLUSH_EVERY = 2_000
RPC_TIMEOUT_S = 60.0
# pymilvus pings every 10 s, even on an idle channel; gRPC servers by default accept a ping without data
# only every 5 minutes and may answer with GOAWAY "too_many_pings" (seen once from milvus-lite in the
# suite, failing the next search with 503). Ping no more often than servers accept, and only during calls.
GRPC_OPTIONS = {"grpc.keepalive_time_ms": 360_000, "grpc.keepalive_permit_without_calls": False}
SETTLE_LOAD_ATTEMPTS = 12

_PREFIX_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Ask for the primary key only: an empty list makes milvus-lite return every field, vectors included.
_OUTPUT_ID_ONLY = ["id"]


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


@dataclass
class _Route:
    """One retrieval route's candidates: scores, and on request their analysed text and vectors."""

    scores: dict[str, float] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class SearchTuning:
    """Search knobs; the defaults are the measured ones (docs/vault-index.md)."""

    fusion: str = "weighted"
    dense_weight: float = DEFAULT_DENSE_WEIGHT
    rrf_k: int = DEFAULT_RRF_K
    bm25_half: float = DEFAULT_BM25_HALF  # BM25 score that calibrates to 0.5
    candidates: int = DEFAULT_CANDIDATES  # per route, before fusion (at least top_k)
    hnsw_ef: int = DEFAULT_HNSW_EF
    prf_docs: int = DEFAULT_PRF_DOCS  # feedback documents for lexical expansion (0: off)
    prf_terms: int = DEFAULT_PRF_TERMS
    prf_weight: float = DEFAULT_PRF_WEIGHT
    fill_dense: bool = True  # give lexical-only candidates their true cosine (costs their vectors)
    lite_partition_pruning: bool = True
    # Rows written between flushes on milvus-lite (0: never flush on our own; call `flush()`).
    lite_flush_every: int = LITE_FLUSH_EVERY
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

                    self._client = MilvusClient(
                        uri=self.uri, token=self._token, timeout=RPC_TIMEOUT_S, grpc_options=GRPC_OPTIONS
                    )
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
            check_doc(doc)
        if vectors is not None:
            vectors = np.asarray(vectors, dtype=np.float32)
            if vectors.shape != (len(docs), self.dim):
                raise IndexValueError(
                    f"vectors has shape {vectors.shape}, expected ({len(docs)}, {self.dim})", field="vectors"
                )
            if not np.isfinite(vectors).all():
                raise IndexValueError("vectors contain NaN or infinity", field="vectors")
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
        if self.tuning.lite_flush_every and self._unflushed >= self.tuning.lite_flush_every:
            self.flush()

    def flush(self) -> None:
        """Persist buffered rows (on milvus-lite this also moves them out of the scanned memtable)."""
        self.client.flush(self.collection_name)
        self._unflushed = 0

    def settle(self) -> None:
        """Flush, and on milvus-lite reload the collection so every segment's indexes are built now.

        milvus-lite builds a flushed segment's indexes in a background thread and searches it exactly
        until then, so results right after a bulk write depend on timing. A reload builds them
        synchronously. For bulk loads and benchmarks; ordinary writes need not call it.
        """
        self.ensure_collection()
        with self._write_lock:
            self.flush()
            if not self._is_lite:
                return
            self.client.release_collection(self.collection_name)
            # The background builder may still be writing a segment's index file, which the load then
            # finds incomplete and refuses; once the builder is done, the load succeeds.
            for attempt in range(1, SETTLE_LOAD_ATTEMPTS + 1):
                try:
                    self.client.load_collection(self.collection_name)
                    return
                except Exception:
                    if attempt == SETTLE_LOAD_ATTEMPTS:
                        raise
                    logger.info("collection load raced the index builder; retrying (%d)", attempt)
                    time.sleep(0.5 * attempt)

    def delete(self, ids: list[str]) -> None:
        ids = list(dict.fromkeys(check_key(i, "id") for i in ids))
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
            raise IndexValueError(f"mode {mode!r} is not one of {', '.join(MODES)}", field="mode")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            raise IndexValueError(f"top_k must be an integer from 1 to {MAX_TOP_K}", field="top_k")
        if not isinstance(query, str):
            raise IndexValueError("query must be a string", field="query")
        fusion = fusion or self.tuning.fusion
        if fusion not in FUSIONS:
            raise IndexValueError(f"fusion {fusion!r} is not one of {', '.join(FUSIONS)}", field="fusion")
        if dense_weight is None:
            dense_weight = self.tuning.dense_weight
        elif isinstance(dense_weight, bool) or not (
            isinstance(dense_weight, int | float) and math.isfinite(dense_weight) and 0 <= dense_weight <= 1
        ):
            raise IndexValueError("dense_weight must be a number from 0 to 1", field="dense_weight")
        expr = build_filter_expr(filters)
        if query_vector is not None:
            query_vector = np.asarray(query_vector, dtype=np.float32).reshape(-1)
            if query_vector.shape != (self.dim,) or not np.isfinite(query_vector).all():
                raise IndexValueError(f"query_vector must be {self.dim} finite floats", field="query_vector")
        lexical = lexical_query(query) if mode != "dense" else ""
        if mode != "sparse" and query_vector is None:
            if not query.strip():
                raise IndexValueError("query must not be empty", field="query")
            query_vector = self.embedder.embed([query])[0]
        self.ensure_collection()
        partitions = self._lite_partitions(filters.namespaces)

        if mode == "dense":
            assert query_vector is not None
            dense = self._route_dense(query_vector, expr, top_k, partitions).scores
            return [IndexHit(i, dense_calibrated(s), s, None) for i, s in ranked_items(dense)[:top_k]]
        if mode == "sparse":
            sparse = self._route_sparse(lexical, expr, top_k, partitions).scores
            half = self.tuning.bm25_half
            return [IndexHit(i, sparse_calibrated(s, half), None, s) for i, s in ranked_items(sparse)[:top_k]]
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
            first = self._fuse(dense, sparse, fusion, dense_weight)
            lexical_scores = expand_lexical_scores(
                sparse,
                texts,
                feedback=[key for key, _ in first[: self.tuning.prf_docs]],
                query_terms=set(lexical.split()),
                terms=self.tuning.prf_terms,
                weight=self.tuning.prf_weight,
            )
        fused = self._fuse(dense, lexical_scores, fusion, dense_weight)
        return [IndexHit(i, s, dense.get(i), sparse.get(i)) for i, s in fused[:top_k]]

    def _fuse(
        self, dense: dict[str, float], sparse: dict[str, float], fusion: str, dense_weight: float
    ) -> list[tuple[str, float]]:
        return fuse(
            dense,
            sparse,
            fusion=fusion,
            dense_weight=dense_weight,
            rrf_k=self.tuning.rrf_k,
            bm25_half=self.tuning.bm25_half,
        )

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
        ids = [check_key(i, "id") for i in ids]
        if not ids:
            return []
        self.ensure_collection()
        fields = ["id", "namespace", "kind", "state", "owner", "tags", "semantic_type", "created_ts"]
        fields += ["valid_from_ts", "valid_to_ts", "version", "lexical"]
        return list(self.client.get(self.collection_name, ids=ids, output_fields=fields))

    def vectors(self, ids: list[str]) -> dict[str, tuple[int, np.ndarray]]:
        """Stored dense vectors by id, with the memory version each was computed for: `{id: (version,
        vector)}`; ids not in the index are absent. For reusing a vector whose text did not change in
        meaning (an installed copy of a pack memory), never for answering users."""
        ids = list(dict.fromkeys(check_key(i, "id") for i in ids))
        if not ids:
            return {}
        self.ensure_collection()
        out: dict[str, tuple[int, np.ndarray]] = {}
        for start in range(0, len(ids), WRITE_BATCH):
            rows = self.client.get(
                self.collection_name,
                ids=ids[start : start + WRITE_BATCH],
                output_fields=["id", "version", "dense"],
            )
            for row in rows:
                vector = np.asarray(row["dense"], dtype=np.float32)
                if vector.shape == (self.dim,) and np.isfinite(vector).all():
                    out[str(row["id"])] = (int(row["version"]), vector)
        return out

    def drop(self) -> None:
        with self._write_lock:
            if self.client.has_collection(self.collection_name):
                self.client.drop_collection(self.collection_name)
            self._ensured = False
            self._unflushed = 0
