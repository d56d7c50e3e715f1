"""Limit/offset pagination for list endpoints, and its OpenAPI description."""

from __future__ import annotations

from functools import cache
from typing import Any

from rest_framework import serializers
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response


class CursorlessPagination(LimitOffsetPagination):
    """`?limit=&offset=` with a bounded page size; answers {count, next, previous, results}."""

    default_limit = 50
    max_limit = 200


def paginated_response(
    *, request: Request, view: Any, items: Any, serializer: type[serializers.BaseSerializer]
) -> Response:
    """One page of `items` (a queryset or list) rendered with `serializer`, in the paginated envelope."""
    paginator = CursorlessPagination()
    page: list[Any] | None = paginator.paginate_queryset(items, request, view=view)
    return paginator.get_paginated_response(serializer(page, many=True).data)


def page_parameters() -> list[Any]:
    """The `limit` / `offset` query parameters, for `extend_schema(parameters=...)`."""
    from drf_spectacular.utils import OpenApiParameter

    return [
        OpenApiParameter("limit", int, description=f"Page size (at most {CursorlessPagination.max_limit})."),
        OpenApiParameter("offset", int, description="Items to skip."),
    ]


@cache
def paginated(serializer: type[serializers.BaseSerializer]) -> type[serializers.Serializer]:
    """The schema of a paginated list of `serializer` items, for `extend_schema(responses=...)`."""
    name = serializer.__name__.removesuffix("Serializer")
    return type(
        f"Paginated{name}List",
        (serializers.Serializer,),
        {
            "count": serializers.IntegerField(),
            "next": serializers.URLField(allow_null=True),
            "previous": serializers.URLField(allow_null=True),
            "results": serializer(many=True),
            "__module__": serializer.__module__,
        },
    )
