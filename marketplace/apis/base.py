"""What every marketplace endpoint shares."""

from __future__ import annotations

from drf_spectacular.utils import inline_serializer
from rest_framework import serializers
from rest_framework.views import APIView

from accounts.models import TokenScope
from accounts.scopes import SCOPED_PERMISSIONS


class MarketplaceApi(APIView):
    """Every marketplace endpoint needs the `marketplace` scope (services check it again)."""

    permission_classes = SCOPED_PERMISSIONS
    required_scope = TokenScope.MARKETPLACE.value


class MarketplaceErrorOutput(serializers.Serializer):
    """The one error shape (`core.exceptions`), as the schema documents it for marketplace operations."""

    error = inline_serializer(
        name="MarketplaceErrorBody",
        fields={
            "code": serializers.CharField(),
            "message": serializers.CharField(),
            "fields": serializers.JSONField(required=False),
            "extra": serializers.JSONField(required=False),
        },
    )


def error_responses(*statuses: int) -> dict[int, type[MarketplaceErrorOutput]]:
    """The error responses an operation documents, each in the one error shape."""
    return dict.fromkeys(statuses, MarketplaceErrorOutput)
