"""The filter compiler: a validated `IndexFilter` becomes one Milvus boolean expression.

Every expression starts with the namespace clause, so a search never spans a tenant it did not name.
"""

from __future__ import annotations

from collections.abc import Sequence

from vault.index.rules import check_choice, check_key, check_label, check_list, check_ts
from vault.index.types import KINDS, MAX_SEMANTIC_TYPE_LEN, MAX_TAG_LEN, STATES, IndexFilter, IndexValueError


def quote(value: str) -> str:
    """A Milvus string literal. Values are validated first (no control characters), then the two
    characters with meaning inside a double-quoted literal are escaped, so no value can end the
    literal and inject an expression."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _str_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(quote(v) for v in values) + "]"


def build_filter_expr(filters: IndexFilter) -> str:
    """Validate `filters` and turn them into a Milvus boolean expression (raises IndexValueError)."""
    if not isinstance(filters, IndexFilter):
        raise IndexValueError("filters must be an IndexFilter", field="filters")
    namespaces = [
        check_key(v, "namespace") for v in check_list(filters.namespaces, "namespaces", required=True) or []
    ]
    clauses = [
        f"namespace == {quote(namespaces[0])}"
        if len(namespaces) == 1
        else f"namespace in {_str_list(namespaces)}"
    ]
    if (kinds := check_list(filters.kinds, "kinds")) is not None:
        clauses.append(f"kind in {_str_list([check_choice(k, 'kind', KINDS) for k in kinds])}")
    if (states := check_list(filters.states, "states")) is not None:
        checked = [check_choice(s, "state", STATES) for s in states]
        clauses.append(f"state in {_str_list(checked)}")
    if (owners := check_list(filters.owners, "owners")) is not None:
        clauses.append(f"owner in {_str_list([check_key(o, 'owner') for o in owners])}")
    if (tags_any := check_list(filters.tags_any, "tags_any")) is not None:
        checked = [check_label(t, "tag", MAX_TAG_LEN) for t in tags_any]
        clauses.append(f"array_contains_any(tags, {_str_list(checked)})")
    if (tags_all := check_list(filters.tags_all, "tags_all")) is not None:
        checked = [check_label(t, "tag", MAX_TAG_LEN) for t in tags_all]
        clauses.append(f"array_contains_all(tags, {_str_list(checked)})")
    if (types := check_list(filters.semantic_types, "semantic_types")) is not None:
        checked = [check_label(t, "semantic_type", MAX_SEMANTIC_TYPE_LEN) for t in types]
        clauses.append(f"semantic_type in {_str_list(checked)}")
    lo = hi = None
    if filters.created_from_ts is not None:
        lo = check_ts(filters.created_from_ts, "created_from_ts")
        clauses.append(f"created_ts >= {lo}")
    if filters.created_to_ts is not None:
        hi = check_ts(filters.created_to_ts, "created_to_ts")
        clauses.append(f"created_ts <= {hi}")
    if lo is not None and hi is not None and lo > hi:
        raise IndexValueError("created_from_ts is after created_to_ts", field="created_from_ts")
    if filters.valid_at_ts is not None:
        t = check_ts(filters.valid_at_ts, "valid_at_ts")
        clauses.append(f"valid_from_ts <= {t} and (valid_to_ts == 0 or valid_to_ts > {t})")
    return " and ".join(f"({c})" for c in clauses)
