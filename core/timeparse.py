"""Parsing date-times that callers send in query strings and filters, in one place."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.utils.dateparse import parse_datetime

MAX_CHARS = 64


def parse_instant(value: Any) -> datetime | None:
    """An ISO-8601 date-time as an aware UTC datetime; None for anything that is not one: malformed
    text, an impossible date (30 February), or an instant outside what a UTC datetime can hold
    (0001-01-01T00:00:00+05:00). Naive values are taken as UTC."""
    if not isinstance(value, str) or len(value) > MAX_CHARS:
        return None
    try:
        parsed = parse_datetime(value)
        if parsed is None:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
