"""JSONL of memories: one JSON object per line, each with the fields the Memory API's create takes.

Every line is checked before anything is written (the same serializer as `POST /api/v1/memories`, plus
the vault's own content rules), and the first bad line is a 400 naming its number. Two fields of the
Memory API do not apply: `namespace` (pack content lives in the publisher's namespace) and
`provenance_id` (assigned by the server). Pack content from JSONL is plaintext; adapters come as
adapter uploads.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from rest_framework import serializers
from rest_framework.exceptions import ParseError

from core.errors import ApplicationError
from core.parsers import check_json
from vault.apis import MemoryFieldsInput
from vault.models import MemoryKind

MAX_LINE_BYTES = 1024 * 1024


class JsonlMemoryInput(MemoryFieldsInput):
    """A memory as the Memory API creates it, less `namespace` and `provenance_id`."""

    kind = serializers.ChoiceField(choices=[MemoryKind.PLAINTEXT], required=False)


def _first_error(errors: Any) -> tuple[str, str]:
    """(field, message) of the first serializer error."""
    if isinstance(errors, dict):
        for name, value in errors.items():
            inner_field, message = _first_error(value)
            return (name if inner_field in ("", "non_field_errors") else f"{name}.{inner_field}"), message
    if isinstance(errors, list) and errors:
        return _first_error(errors[0])
    return "", str(errors)


def _line_error(line: int, message: str, *, field: str = "") -> ApplicationError:
    where = f"Line {line}" + (f", field '{field}'" if field else "")
    return ApplicationError(
        f"{where}: {message}", {"line": line, **({"field": field} if field else {})}, code="invalid_line"
    )


def validate_memory(raw: Any, *, line: int) -> dict[str, Any]:
    """One line's object, validated; the error names the line (and the field)."""
    if not isinstance(raw, dict):
        raise _line_error(line, f"expected a JSON object, got {type(raw).__name__}.")
    try:
        check_json(raw)
    except ParseError as exc:
        raise _line_error(line, str(exc.detail)) from None
    s = JsonlMemoryInput(data=raw)
    if not s.is_valid():
        name, message = _first_error(s.errors)
        raise _line_error(line, message, field=name)
    data = dict(s.validated_data)
    text = data.get("text", "")
    if not text.strip():
        raise _line_error(line, "a memory needs non-empty 'text'.", field="text")
    if len(text) > settings.VAULT_MAX_TEXT_CHARS:
        raise _line_error(
            line,
            f"text is {len(text)} characters; the limit is {settings.VAULT_MAX_TEXT_CHARS}.",
            field="text",
        )
    vf, vt = data.get("valid_from"), data.get("valid_to")
    if vf is not None and vt is not None and vt <= vf:
        raise _line_error(line, "'valid_to' must be later than 'valid_from'.", field="valid_to")
    return data


def parse_jsonl(data: bytes, *, max_items: int) -> list[tuple[int, dict[str, Any]]]:
    """(line number, memory) for every memory of a JSONL file, or the 400 of its first bad line. Blank
    lines are skipped."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _line_error(data[: exc.start].count(b"\n") + 1, "not UTF-8 text.") from None
    items: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        if len(line) > MAX_LINE_BYTES:
            raise _line_error(number, f"the line is longer than {MAX_LINE_BYTES} characters.")
        try:
            raw = json.loads(line)
        except RecursionError:
            raise _line_error(number, "JSON nested too deeply.") from None
        except ValueError as exc:
            raise _line_error(number, f"not valid JSON ({exc}).") from None
        items.append((number, validate_memory(raw, line=number)))
        if len(items) > max_items:
            raise _line_error(number, f"the file holds more than {max_items} memories.")
    if not items:
        raise ApplicationError("The JSONL file holds no memories.", {"field": "file"}, code="invalid_line")
    return items
