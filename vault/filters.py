"""The memory filter language shared by list, search and the index.

    {"tags": ["a", "b"] | {"any": [...], "all": [...]},
     "kind": "plaintext" | [...], "state": ..., "semantic_type": ..., "owner": "username" | [...],
     "created_after": ISO-8601, "created_before": ISO-8601, "valid_at": ISO-8601}

Anything else is refused with a 400 that names the offending key, so a typo never silently widens a query.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from core.errors import ApplicationError
from core.timeparse import parse_instant
from vault.models import MemoryKind, MemoryState

KNOWN_FILTERS = (
    "tags",
    "kind",
    "state",
    "semantic_type",
    "owner",
    "created_after",
    "created_before",
    "valid_at",
)
MAX_FILTER_VALUES = 100
MAX_FILTER_VALUE_LEN = 128


@dataclass
class MemoryFilter:
    tags_any: list[str] = field(default_factory=list)
    tags_all: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    states: list[str] = field(default_factory=list)
    semantic_types: list[str] = field(default_factory=list)
    owners: list[str] = field(default_factory=list)  # usernames
    created_after: datetime | None = None
    created_before: datetime | None = None
    valid_at: datetime | None = None


def _bad(message: str) -> ApplicationError:
    return ApplicationError(message, code="invalid_filter")


def _str_list(name: str, value: Any) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise _bad(f"Filter '{name}' must be a string or a list of strings.")
    if len(values) > MAX_FILTER_VALUES:
        raise _bad(f"Filter '{name}' takes at most {MAX_FILTER_VALUES} values.")
    for v in values:
        if not v or len(v) > MAX_FILTER_VALUE_LEN:
            raise _bad(f"Filter '{name}' values must be 1-{MAX_FILTER_VALUE_LEN} characters.")
    return values


def _choice_list(name: str, value: Any, choices: list[str]) -> list[str]:
    values = _str_list(name, value)
    unknown = [v for v in values if v not in choices]
    if unknown:
        raise _bad(f"Filter '{name}' has unknown value '{unknown[0]}'; expected one of {', '.join(choices)}.")
    return values


def _when(name: str, value: Any) -> datetime:
    parsed = parse_instant(value)
    if parsed is None:
        raise _bad(f"Filter '{name}' must be an ISO-8601 date-time, e.g. 2024-05-01T00:00:00Z.")
    return parsed


def parse_filters(raw: Any) -> MemoryFilter:
    if raw is None:
        return MemoryFilter()
    if not isinstance(raw, dict):
        raise _bad("'filters' must be an object.")
    unknown = sorted(set(raw) - set(KNOWN_FILTERS))
    if unknown:
        raise _bad(f"Unknown filter '{unknown[0]}'; known filters: {', '.join(KNOWN_FILTERS)}.")
    f = MemoryFilter()
    if "tags" in raw:
        tags = raw["tags"]
        if isinstance(tags, dict):
            extra = sorted(set(tags) - {"any", "all"})
            if extra:
                raise _bad(f"Filter 'tags' takes 'any' and 'all', not '{extra[0]}'.")
            f.tags_any = _str_list("tags.any", tags.get("any", []))
            f.tags_all = _str_list("tags.all", tags.get("all", []))
        else:
            f.tags_any = _str_list("tags", tags)
    if "kind" in raw:
        f.kinds = _choice_list("kind", raw["kind"], list(MemoryKind.values))
    if "state" in raw:
        f.states = _choice_list("state", raw["state"], list(MemoryState.values))
    if "semantic_type" in raw:
        f.semantic_types = _str_list("semantic_type", raw["semantic_type"])
    if "owner" in raw:
        f.owners = _str_list("owner", raw["owner"])
    for name in ("created_after", "created_before", "valid_at"):
        if raw.get(name) is not None:
            setattr(f, name, _when(name, raw[name]))
    if f.created_after and f.created_before and f.created_after >= f.created_before:
        raise _bad("'created_after' must be earlier than 'created_before'.")
    return f
