"""The rules every value must meet before it reaches Milvus, shared with the API's validation.

Each check raises `IndexValueError` naming the field. The API runs the same checks on input
(`vault.apis`), so a value the index would refuse is answered with a 400 instead of being accepted
and then failing in the outbox.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import numpy as np

from vault.index.types import (
    KINDS,
    MAX_FILTER_VALUES,
    MAX_KEY_LEN,
    MAX_SEMANTIC_TYPE_LEN,
    MAX_TAG_LEN,
    MAX_TAGS,
    MAX_TS,
    MIN_TS,
    STATES,
    IndexDoc,
    IndexValueError,
)

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
# C0 controls (tab and newline included) and DEL: a label is one line of printable text.
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def check_key(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise IndexValueError(f"{what} must be a non-empty string", field=what)
    if len(value) > MAX_KEY_LEN or not _KEY_RE.match(value):
        raise IndexValueError(
            f"{what} {value[:80]!r} is not a valid identifier (letters, digits, '_.:-', <= 64)", field=what
        )
    return value


def label_problem(value: str, max_len: int) -> str | None:
    """Why `value` cannot be a label (tag, semantic type, ...), or None when it can."""
    if len(value) > max_len:
        return f"is longer than {max_len} characters"
    if CONTROL_RE.search(value):
        return "contains control characters (tab, newline, ...)"
    return None


def check_label(value: Any, what: str, max_len: int) -> str:
    if not isinstance(value, str) or not value:
        raise IndexValueError(f"{what} must be a non-empty string", field=what)
    problem = label_problem(value, max_len)
    if problem:
        raise IndexValueError(f"{what} {value[:40]!r} {problem}", field=what)
    return value


def check_choice(value: Any, what: str, allowed: frozenset[str]) -> str:
    if value not in allowed:
        raise IndexValueError(f"{what} {value!r} is not one of {', '.join(sorted(allowed))}", field=what)
    return str(value)


def check_ts(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise IndexValueError(f"{what} must be an integer number of epoch seconds", field=what)
    if not MIN_TS <= int(value) < MAX_TS:
        raise IndexValueError(f"{what} {value} is out of range (1970 onwards)", field=what)
    return int(value)


def moment_problem(value: datetime) -> str | None:
    """Why the index cannot hold this moment, or None when it can (it stores epoch seconds >= 0)."""
    if not MIN_TS <= int(value.timestamp()) < MAX_TS:
        return "must be 1970-01-01T00:00:00Z or later"
    return None


def check_list(values: Any, what: str, *, required: bool = False) -> list[Any] | None:
    if values is None:
        if required:
            raise IndexValueError(f"{what} is required", field=what)
        return None
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise IndexValueError(f"{what} must be a list", field=what)
    values = list(values)
    if not values:
        if required:
            raise IndexValueError(
                f"{what} must not be empty: a search never spans unnamed namespaces", field=what
            )
        raise IndexValueError(f"{what} must not be empty (leave it out to not filter)", field=what)
    if len(values) > MAX_FILTER_VALUES:
        raise IndexValueError(f"{what} has {len(values)} values; at most {MAX_FILTER_VALUES}", field=what)
    return list(dict.fromkeys(values))


def check_doc(doc: IndexDoc) -> None:
    """Everything the collection's schema requires of a document (raises IndexValueError)."""
    if not isinstance(doc, IndexDoc):
        raise IndexValueError("upsert takes IndexDoc values", field="doc")
    check_key(doc.id, "id")
    check_key(doc.namespace, "namespace")
    check_key(doc.owner, "owner")
    check_choice(doc.kind, "kind", KINDS)
    check_choice(doc.state, "state", STATES)
    if not isinstance(doc.text, str):
        raise IndexValueError(f"doc {doc.id}: text must be a string", field="text")
    if doc.semantic_type:
        check_label(doc.semantic_type, "semantic_type", MAX_SEMANTIC_TYPE_LEN)
    if len(doc.tags) > MAX_TAGS:
        raise IndexValueError(
            f"doc {doc.id}: {len(doc.tags)} tags; the index holds at most {MAX_TAGS}", field="tags"
        )
    for tag in doc.tags:
        check_label(tag, "tag", MAX_TAG_LEN)
    for name in ("created_ts", "valid_from_ts", "valid_to_ts"):
        check_ts(getattr(doc, name), name)
    if isinstance(doc.version, bool) or not isinstance(doc.version, int | np.integer):
        raise IndexValueError(f"doc {doc.id}: version must be an integer", field="version")
