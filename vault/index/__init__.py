"""The Milvus index of memories: a derived, rebuildable copy of the relational source of truth.

One idea a module:

- `types`: the contract (`IndexDoc`, `IndexFilter`, `IndexHit`, `IndexValueError`) and field limits;
- `rules`: the checks every value must pass (shared with the API's input validation);
- `analysis`: text analysis for the lexical route;
- `expressions`: the filter compiler (`IndexFilter` -> Milvus boolean expression);
- `fusion`: calibrated score fusion and lexical pseudo-relevance feedback;
- `client`: `VectorIndex`, the Milvus client (the only module that imports pymilvus);
- `instance`: the process-wide index built from settings.

Importing this package does not import pymilvus; `VectorIndex` does on first use.
"""

from vault.index.analysis import STOP_WORDS, embedding_text, lexical_query, lexical_terms, lexical_text
from vault.index.client import SearchTuning, VectorIndex, slug
from vault.index.expressions import build_filter_expr
from vault.index.fusion import (
    DEFAULT_BM25_HALF,
    DEFAULT_DENSE_WEIGHT,
    dense_calibrated,
    expand_lexical_scores,
    fuse,
    sparse_calibrated,
)
from vault.index.instance import get_index, reset_index_cache, tuning_from_settings
from vault.index.rules import check_doc, label_problem, moment_problem
from vault.index.types import (
    FUSIONS,
    KINDS,
    MAX_FILTER_VALUES,
    MAX_KEY_LEN,
    MAX_SEMANTIC_TYPE_LEN,
    MAX_TAG_LEN,
    MAX_TAGS,
    MAX_TOP_K,
    MODES,
    STATES,
    IndexDoc,
    IndexFilter,
    IndexHit,
    IndexValueError,
)

__all__ = [
    "DEFAULT_BM25_HALF",
    "DEFAULT_DENSE_WEIGHT",
    "FUSIONS",
    "KINDS",
    "MAX_FILTER_VALUES",
    "MAX_KEY_LEN",
    "MAX_SEMANTIC_TYPE_LEN",
    "MAX_TAGS",
    "MAX_TAG_LEN",
    "MAX_TOP_K",
    "MODES",
    "STATES",
    "STOP_WORDS",
    "IndexDoc",
    "IndexFilter",
    "IndexHit",
    "IndexValueError",
    "SearchTuning",
    "VectorIndex",
    "build_filter_expr",
    "check_doc",
    "dense_calibrated",
    "embedding_text",
    "expand_lexical_scores",
    "fuse",
    "get_index",
    "label_problem",
    "lexical_query",
    "lexical_terms",
    "lexical_text",
    "moment_problem",
    "reset_index_cache",
    "slug",
    "sparse_calibrated",
    "tuning_from_settings",
]
