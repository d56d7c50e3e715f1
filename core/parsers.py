"""The API's JSON parser: standard JSON, minus what would fail later, far from the request.

- Lone surrogates (`"\\ud800"`) are valid JSON escapes but not Unicode: Python accepts them, the database
  driver, the index and the response encoder do not. A stored one would break every later read of the
  row, so they are refused here.
- Deeply nested documents exhaust the decoder's recursion (a 500) and nothing in the API needs them.
"""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

MAX_DEPTH = 32


def check_json(data: Any, *, max_depth: int = MAX_DEPTH) -> None:
    """Raise ParseError for a lone surrogate in any string or key, or nesting deeper than `max_depth`."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            _check_text(value)
        elif isinstance(value, dict | list):
            if depth > max_depth:
                raise ParseError(f"JSON is nested more than {max_depth} levels deep.")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    _check_text(key)
                stack.append((item, depth + 1))


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        raise ParseError(
            f"JSON strings must be valid Unicode: the lone surrogate \\u{ord(bad):04x} is not allowed."
        ) from None


class SafeJSONParser(JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(f"JSON is nested more than {MAX_DEPTH} levels deep.") from None
        check_json(data)
        return data
