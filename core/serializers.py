from __future__ import annotations

import json
from typing import Any

from rest_framework import serializers


class StrictSerializer(serializers.Serializer):
    """Refuses keys it does not know, so a misspelt field is an error rather than silently ignored."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError(
                    {
                        unknown[0]: [
                            f"Unknown field '{unknown[0]}'. Allowed: {', '.join(sorted(self.fields))}."
                        ]
                    }
                )
        return super().to_internal_value(data)


class BoundedJSONField(serializers.JSONField):
    """A JSON object whose encoded size is bounded."""

    def __init__(self, *args: Any, max_bytes: int = 65536, **kwargs: Any) -> None:
        self.max_bytes = max_bytes
        super().__init__(*args, **kwargs)

    def to_internal_value(self, data: Any) -> Any:
        value = super().to_internal_value(data)
        if not isinstance(value, dict):
            raise serializers.ValidationError("Must be a JSON object.")
        if len(json.dumps(value)) > self.max_bytes:
            raise serializers.ValidationError(f"Must encode to at most {self.max_bytes} bytes.")
        return value


class StrictCharField(serializers.CharField):
    """A string, and only a string: DRF's CharField would quietly turn 42 into "42"."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            raise serializers.ValidationError("Must be a string.")
        return str(super().to_internal_value(data))


def validated(serializer_cls: type[serializers.Serializer], data: Any, **kwargs: Any) -> dict[str, Any]:
    """Validate `data` with `serializer_cls` (a 400 in the house error shape if invalid) and return it."""
    s = serializer_cls(data=data, **kwargs)
    s.is_valid(raise_exception=True)
    return dict(s.validated_data)


class InstantField(serializers.DateTimeField):
    """An ISO-8601 date-time input. DRF's field lets an instant that exists in its own offset but not in
    UTC (0001-01-01T00:00:00+05:00) escape as an OverflowError, a 500; here it is a 400 on the field."""

    def to_internal_value(self, value: Any) -> Any:
        try:
            return super().to_internal_value(value)
        except OverflowError:
            raise serializers.ValidationError(
                "Date-time out of range: it must fall between years 1 and 9999 in UTC."
            ) from None
