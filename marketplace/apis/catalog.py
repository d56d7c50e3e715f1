"""Marketplace API: browsing the catalog."""

from __future__ import annotations

from django.urls import path
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from marketplace import selectors
from marketplace.apis.base import MarketplaceApi


class ReleaseOutput(serializers.Serializer):
    version = serializers.CharField()
    notes = serializers.CharField()
    manifest_sha256 = serializers.CharField()
    memories = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()

    def get_memories(self, r) -> int:  # type: ignore[no-untyped-def]
        return len(r.manifest.get("memories", []))


class PackOutput(serializers.Serializer):
    publisher = serializers.CharField(source="publisher.slug")
    slug = serializers.CharField()
    title = serializers.CharField()
    description = serializers.CharField()
    tags = serializers.ListField(child=serializers.CharField())
    price_cents = serializers.IntegerField()
    currency = serializers.CharField()
    licence = serializers.CharField()
    releases = ReleaseOutput(many=True, source="releases.all")


class PackCatalogApi(MarketplaceApi):
    @extend_schema(
        parameters=[OpenApiParameter("q", str), OpenApiParameter("tag", str)],
        responses=PackOutput(many=True),
        tags=["marketplace"],
    )
    def get(self, request: Request) -> Response:
        packs = selectors.pack_catalog(
            query=request.query_params.get("q", "")[:200], tag=request.query_params.get("tag", "")[:64]
        )
        return Response(PackOutput(packs, many=True).data)


class PackDetailApi(MarketplaceApi):
    @extend_schema(responses=PackOutput, tags=["marketplace"])
    def get(self, request: Request, publisher: str, slug: str) -> Response:
        return Response(PackOutput(selectors.pack_get(publisher_slug=publisher, slug=slug)).data)


urlpatterns = [
    path("packs", PackCatalogApi.as_view(), name="packs"),
    path("packs/<slug:publisher>/<slug:slug>", PackDetailApi.as_view(), name="pack"),
]
