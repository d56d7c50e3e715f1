"""What every feeds and subscriptions endpoint shares: the scope, the error shape, strict input fields."""

from __future__ import annotations

import math
from typing import Any

from drf_spectacular.utils import inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.views import APIView

from accounts.models import TokenScope
from accounts.scopes import SCOPED_PERMISSIONS
from core.errors import ApplicationError
from core.pagination import CursorlessPagination
from core.serializers import StrictSerializer, validated
from governance.policy import Subject

MAX_SEQ = 2**63 - 1  # what a `seq` column holds: a larger cursor would be a database error, not a 400


class FeedsApi(APIView):
    """Reading feeds and managing subscriptions needs the `feeds` scope; publishing into a feed is a
    publisher action and needs `marketplace` instead (`PublisherFeedApi`)."""

    permission_classes = SCOPED_PERMISSIONS
    required_scope = TokenScope.FEEDS.value


class PublisherFeedApi(APIView):
    """Writing a feed entry is what a publisher does, so it takes the publisher's scope (`marketplace`;
    the publish services also want `memories:write`, as for authoring pack items)."""

    permission_classes = SCOPED_PERMISSIONS
    required_scope = TokenScope.MARKETPLACE.value


class FeedsErrorOutput(serializers.Serializer):
    """The one error shape (`core.exceptions`), as the schema documents it for feeds operations."""

    error = inline_serializer(
        name="FeedsErrorBody",
        fields={
            "code": serializers.CharField(),
            "message": serializers.CharField(),
            "fields": serializers.JSONField(required=False),
            "extra": serializers.JSONField(required=False),
        },
    )


def error_responses(*statuses: int) -> dict[int, type[FeedsErrorOutput]]:
    """The error responses an operation documents, each in the one error shape."""
    return dict.fromkeys(statuses, FeedsErrorOutput)


def actor_of(request: Request, operation: str = "") -> Subject:
    return Subject.from_request(request, operation=operation)


def query_validated(serializer_cls: type[serializers.Serializer], request: Request) -> dict[str, Any]:
    """Validate the query string like a body: unknown parameters and bad values are a 400 naming them."""
    return validated(serializer_cls, request.query_params)


# --- strict JSON fields: DRF's own would quietly turn "yes" into True and "5" into 5 -----------------


class StrictBooleanField(serializers.BooleanField):
    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            raise serializers.ValidationError("Must be true or false.")
        return data


class StrictUUIDField(serializers.UUIDField):
    """A UUID written as a string: DRF's own also takes the integer 12 as UUID(int=12)."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, str):
            raise serializers.ValidationError("Must be a UUID string.")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise serializers.ValidationError("Must be an integer.")
        return int(super().to_internal_value(data))


class StrictFloatField(serializers.FloatField):
    """A JSON number (not a string, not a boolean), finite: Python's JSON reader accepts NaN, which
    every range check would let through."""

    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, bool) or not isinstance(data, int | float):
            raise serializers.ValidationError("Must be a number.")
        if not math.isfinite(data):
            raise serializers.ValidationError("Must be a finite number.")
        return float(super().to_internal_value(data))


class PageQuery(StrictSerializer):
    """`limit` / `offset` of a paginated list, refused when out of range rather than quietly clamped."""

    limit = serializers.IntegerField(required=False, min_value=1, max_value=CursorlessPagination.max_limit)
    offset = serializers.IntegerField(required=False, min_value=0)


class EmptyInput(StrictSerializer):
    """An action that takes no input still refuses a body with fields in it: a client sending options
    we do not have should hear so rather than believe they were applied."""


def no_input(request: Request) -> None:
    """400 unless the body is empty (or `{}`)."""
    if not isinstance(request.data, dict):
        raise ApplicationError("This action takes no input: send no body, or {}.", {"field": "body"})
    validated(EmptyInput, request.data)
