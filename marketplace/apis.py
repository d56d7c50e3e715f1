"""Catalog and installs (`/api/v1/marketplace/...`)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import TokenScope
from accounts.scopes import SCOPED_PERMISSIONS
from core.requests import current_user
from core.serializers import StrictSerializer
from governance.policy import Subject
from marketplace import selectors, services


class MarketplaceApi(APIView):
    """Every marketplace endpoint needs the `marketplace` scope (services check it again)."""

    permission_classes = SCOPED_PERMISSIONS
    required_scope = TokenScope.MARKETPLACE.value


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


class InstallationOutput(serializers.Serializer):
    id = serializers.UUIDField()
    pack = serializers.SerializerMethodField()
    version = serializers.CharField(source="release.version")
    namespace = serializers.CharField(source="namespace.key")
    created_at = serializers.DateTimeField()

    def get_pack(self, i) -> str:  # type: ignore[no-untyped-def]
        return f"{i.release.pack.publisher.slug}/{i.release.pack.slug}"


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


class PackInstallApi(MarketplaceApi):
    class PackInstallInput(StrictSerializer):
        version = serializers.CharField(max_length=40, required=False)

    @extend_schema(
        request=PackInstallInput,
        responses={201: InstallationOutput},
        tags=["marketplace"],
        description="Installs a free release (latest unless `version`) into a read-only namespace.",
    )
    def post(self, request: Request, publisher: str, slug: str) -> Response:
        s = self.PackInstallInput(data=request.data)
        s.is_valid(raise_exception=True)
        pack = selectors.pack_get(publisher_slug=publisher, slug=slug)
        release = selectors.release_get(pack=pack, version=s.validated_data.get("version"))
        installation = services.pack_install(
            actor=Subject.from_request(request, operation="pack.install"), release=release
        )
        return Response(InstallationOutput(installation).data, status=status.HTTP_201_CREATED)


class InstallationListApi(MarketplaceApi):
    @extend_schema(responses=InstallationOutput(many=True), tags=["marketplace"])
    def get(self, request: Request) -> Response:
        return Response(
            InstallationOutput(selectors.installation_list(user=current_user(request)), many=True).data
        )
