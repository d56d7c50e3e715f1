"""Marketplace API: installations (install, status and progress, uninstall, upgrade, diff, annotations)."""

from __future__ import annotations

from typing import Any

from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from core.requests import current_user
from core.serializers import StrictCharField, StrictSerializer, validated
from governance.policy import Subject
from marketplace import selectors
from marketplace.apis.base import MarketplaceApi
from marketplace.apis.base import MarketplaceErrorOutput as InstallErrorOutput
from marketplace.selectors import installs as install_selectors
from marketplace.services import installs as install_services

ERRORS = {
    400: InstallErrorOutput,
    402: InstallErrorOutput,
    403: InstallErrorOutput,
    404: InstallErrorOutput,
    409: InstallErrorOutput,
}


class InstallationOutput(serializers.Serializer):
    id = serializers.UUIDField()
    pack = serializers.SerializerMethodField()
    version = serializers.CharField(source="release.version")
    release_id = serializers.CharField(source="release.manifest_sha256")
    namespace = serializers.CharField(source="namespace.key")
    workspace = serializers.CharField()
    status = serializers.CharField()
    progress = serializers.JSONField()
    error = serializers.CharField()
    licence = serializers.UUIDField(source="licence_id", allow_null=True)
    previous_version = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    removed_at = serializers.DateTimeField(allow_null=True)

    def get_pack(self, i: Any) -> str:
        return f"{i.release.pack.publisher.slug}/{i.release.pack.slug}"

    def get_previous_version(self, i: Any) -> str | None:
        return i.previous_release.version if i.previous_release_id else None


class InstallationDiffOutput(serializers.Serializer):
    # "from"/"to" are Python keywords; the schema names them through `source`.
    from_version = serializers.CharField(source="from", allow_null=True)
    to_version = serializers.CharField(source="to")
    added = serializers.ListField(child=serializers.CharField())
    changed = serializers.ListField(child=serializers.CharField())
    removed = serializers.ListField(child=serializers.CharField())
    unchanged = serializers.ListField(child=serializers.CharField())
    counts = serializers.DictField(child=serializers.IntegerField())
    at = serializers.CharField(allow_null=True)


class InstallationAnnotationOutput(serializers.Serializer):
    provenance_id = serializers.UUIDField()
    note = serializers.CharField()
    tags = serializers.ListField(child=serializers.CharField())
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


def _installation(request: Request, installation_id: Any) -> Any:
    return install_selectors.installation_get(user=current_user(request), installation_id=installation_id)


class PackInstallApi(MarketplaceApi):
    class PackInstallInput(StrictSerializer):
        version = StrictCharField(max_length=40, required=False)
        workspace = StrictCharField(max_length=64, required=False, allow_blank=True)

    @extend_schema(
        request=PackInstallInput,
        responses={200: InstallationOutput, 201: InstallationOutput, **ERRORS},
        tags=["marketplace"],
        description="Installs a licensed release (latest unless `version`) into a read-only namespace of "
        'your workspace (`workspace`: "" yours, or `agent:<API token id>`). A free pack gets a free '
        "licence on first install; a paid one needs a usable licence (402 otherwise). 201 with the new "
        "installation (`status` ready, or pending for a large pack copied in the background: follow "
        "`GET installations/{id}`); 200 when it was installed already.",
    )
    def post(self, request: Request, publisher: str, slug: str) -> Response:
        data = validated(self.PackInstallInput, request.data)
        pack = selectors.pack_get(publisher_slug=publisher, slug=slug)
        release = selectors.release_get(pack=pack, version=data.get("version"))
        before = set(
            install_selectors.installation_list(user=current_user(request)).values_list("id", flat=True)
        )
        installation = install_services.pack_install(
            actor=Subject.from_request(request, operation="pack.install"),
            release=release,
            workspace=data.get("workspace", ""),
        )
        code = status.HTTP_200_OK if installation.pk in before else status.HTTP_201_CREATED
        return Response(InstallationOutput(installation).data, status=code)


class InstallationListApi(MarketplaceApi):
    @extend_schema(
        responses=InstallationOutput(many=True),
        tags=["marketplace"],
        description="Your live installations, newest first.",
    )
    def get(self, request: Request) -> Response:
        return Response(
            InstallationOutput(
                install_selectors.installation_list(user=current_user(request)), many=True
            ).data
        )


class InstallationDetailApi(MarketplaceApi):
    @extend_schema(
        responses={200: InstallationOutput, 404: InstallErrorOutput},
        tags=["marketplace"],
        description="One of your installations: status (pending, installing, ready, failed, removed) and "
        "progress (`step`, `done`, `total`).",
    )
    def get(self, request: Request, installation_id: str) -> Response:
        return Response(InstallationOutput(_installation(request, installation_id)).data)

    @extend_schema(
        responses={200: InstallationOutput, 403: InstallErrorOutput, 404: InstallErrorOutput},
        tags=["marketplace"],
        description="Uninstalls: the memories are deleted, the namespace suspended (gone from search and "
        "chat), adapters and KV prefixes dropped. The licence stays; installing again works.",
    )
    def delete(self, request: Request, installation_id: str) -> Response:
        installation = install_services.installation_remove(
            actor=Subject.from_request(request, operation="pack.uninstall"),
            installation=_installation(request, installation_id),
        )
        return Response(InstallationOutput(installation).data)


class InstallationUpgradeApi(MarketplaceApi):
    class UpgradeInput(StrictSerializer):
        version = StrictCharField(max_length=40)

    @extend_schema(
        request=UpgradeInput,
        responses={200: InstallationOutput, **ERRORS},
        tags=["marketplace"],
        description="Upgrades in place to a newer release of the same pack: unchanged memories are kept, "
        "changed ones get a new version, removed ones are deleted, added ones created (all watermarked "
        "for this installation). Your annotations stay. The diff: `GET installations/{id}/diff`.",
    )
    def post(self, request: Request, installation_id: str) -> Response:
        data = validated(self.UpgradeInput, request.data)
        installation = install_services.installation_upgrade(
            actor=Subject.from_request(request, operation="pack.upgrade"),
            installation=_installation(request, installation_id),
            version=data["version"],
        )
        return Response(InstallationOutput(installation).data)


class InstallationDiffApi(MarketplaceApi):
    @extend_schema(
        responses={200: InstallationDiffOutput, 404: InstallErrorOutput},
        tags=["marketplace"],
        description="What the last upgrade added, changed and removed (provenance ids); before any "
        "upgrade, the installed release against nothing.",
    )
    def get(self, request: Request, installation_id: str) -> Response:
        diff = install_selectors.installation_diff(installation=_installation(request, installation_id))
        return Response(InstallationDiffOutput(diff).data)


class AnnotationListApi(MarketplaceApi):
    @extend_schema(
        responses={200: InstallationAnnotationOutput(many=True), 404: InstallErrorOutput},
        tags=["marketplace"],
    )
    def get(self, request: Request, installation_id: str) -> Response:
        installation = _installation(request, installation_id)
        return Response(
            InstallationAnnotationOutput(
                install_selectors.annotation_list(installation=installation), many=True
            ).data
        )


class AnnotationDetailApi(MarketplaceApi):
    class AnnotationInput(StrictSerializer):
        note = StrictCharField(max_length=install_services.MAX_NOTE_CHARS, required=False, allow_blank=True)
        tags = serializers.ListField(
            child=StrictCharField(max_length=install_services.MAX_TAG_CHARS),
            max_length=install_services.MAX_ANNOTATION_TAGS,
            required=False,
        )

    @extend_schema(
        request=AnnotationInput,
        responses={200: InstallationAnnotationOutput, **ERRORS},
        tags=["marketplace"],
        description="Sets your note and tags on one installed memory (by provenance id: kept across "
        "upgrades).",
    )
    def put(self, request: Request, installation_id: str, provenance_id: str) -> Response:
        data = validated(self.AnnotationInput, request.data)
        annotation = install_services.annotation_put(
            actor=Subject.from_request(request, operation="pack.annotate"),
            installation=_installation(request, installation_id),
            provenance_id=provenance_id,
            note=data.get("note", ""),
            tags=data.get("tags", []),
        )
        return Response(InstallationAnnotationOutput(annotation).data)

    @extend_schema(
        responses={204: None, 403: InstallErrorOutput, 404: InstallErrorOutput}, tags=["marketplace"]
    )
    def delete(self, request: Request, installation_id: str, provenance_id: str) -> Response:
        install_services.annotation_delete(
            actor=Subject.from_request(request, operation="pack.annotate"),
            installation=_installation(request, installation_id),
            provenance_id=provenance_id,
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


urlpatterns = [
    path("packs/<slug:publisher>/<slug:slug>/install", PackInstallApi.as_view(), name="pack-install"),
    path("installations", InstallationListApi.as_view(), name="installations"),
    path("installations/<uuid:installation_id>", InstallationDetailApi.as_view(), name="installs-detail"),
    path(
        "installations/<uuid:installation_id>/upgrade",
        InstallationUpgradeApi.as_view(),
        name="installs-upgrade",
    ),
    path("installations/<uuid:installation_id>/diff", InstallationDiffApi.as_view(), name="installs-diff"),
    path(
        "installations/<uuid:installation_id>/annotations",
        AnnotationListApi.as_view(),
        name="installs-annotations",
    ),
    path(
        "installations/<uuid:installation_id>/annotations/<uuid:provenance_id>",
        AnnotationDetailApi.as_view(),
        name="installs-annotation",
    ),
]
