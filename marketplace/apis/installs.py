"""Marketplace API: installations."""

from __future__ import annotations

from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from core.requests import current_user
from core.serializers import StrictSerializer
from governance.policy import Subject
from marketplace import selectors, services
from marketplace.apis.base import MarketplaceApi


class InstallationOutput(serializers.Serializer):
    id = serializers.UUIDField()
    pack = serializers.SerializerMethodField()
    version = serializers.CharField(source="release.version")
    namespace = serializers.CharField(source="namespace.key")
    created_at = serializers.DateTimeField()

    def get_pack(self, i) -> str:  # type: ignore[no-untyped-def]
        return f"{i.release.pack.publisher.slug}/{i.release.pack.slug}"


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


urlpatterns = [
    path("packs/<slug:publisher>/<slug:slug>/install", PackInstallApi.as_view(), name="pack-install"),
    path("installations", InstallationListApi.as_view(), name="installations"),
]
