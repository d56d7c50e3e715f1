"""Marketplace API: the publisher studio (profiles, members, listings, content, uploads, previews)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.urls import path
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import Organization
from core.errors import ApplicationError, NotFound
from core.pagination import page_parameters, paginated, paginated_response
from core.serializers import StrictCharField, StrictSerializer, validated
from core.throttling import throttles
from governance.policy import Subject
from marketplace.apis.base import MarketplaceApi
from marketplace.ingest.chunking import MAX_BUDGET, MIN_BUDGET
from marketplace.ingest.jsonl import JsonlMemoryInput
from marketplace.ingest.safety import CappedUploadHandler, upload_max_bytes
from marketplace.models import ALL_FORMS, PriceModel, PublisherRole, UploadKind, UploadStatus
from marketplace.selectors import studio as selectors
from marketplace.services import studio as services
from marketplace.services.common import publisher_role

ERRORS = {
    400: OpenApiResponse(description="Bad input: the error names the field (nothing was written)."),
    403: OpenApiResponse(description="Missing scope, or no role for this publisher."),
    404: OpenApiResponse(description="Not found (or not visible to the caller)."),
}
CONFLICT = {409: OpenApiResponse(description="The slug is taken.")}
UPLOAD_ERRORS = {
    **ERRORS,
    413: OpenApiResponse(description="The upload exceeds MEMHUB_PACK_UPLOAD_MAX_BYTES."),
    429: OpenApiResponse(description="Too many uploads; retry after the Retry-After seconds."),
}


def _actor(request: Request, operation: str = "") -> Subject:
    return Subject.from_request(request, operation=operation)


def _pack(request: Request, publisher: str, slug: str) -> Any:
    return selectors.studio_pack_get(actor=_actor(request), publisher_slug=publisher, slug=slug)


# --- outputs -------------------------------------------------------------------------------------------


class StudioPublisherOutput(serializers.Serializer):
    slug = serializers.CharField()
    display_name = serializers.CharField()
    bio = serializers.CharField()
    website = serializers.CharField()
    organization = serializers.CharField(source="organization.slug", allow_null=True, default=None)
    owner = serializers.CharField(source="owner_user.username", allow_null=True, default=None)
    namespace = serializers.CharField(source="namespace.key")
    role = serializers.SerializerMethodField(help_text="The caller's role for this publisher, if any.")
    created_at = serializers.DateTimeField()

    def get_role(self, publisher: Any) -> str | None:
        subject = self.context.get("subject")
        return publisher_role(actor=subject, publisher=publisher) if subject else None


class StudioMemberOutput(serializers.Serializer):
    username = serializers.CharField(source="user.username")
    role = serializers.CharField()
    added_by = serializers.CharField(source="added_by.username", allow_null=True, default=None)
    created_at = serializers.DateTimeField()


class StudioPackOutput(serializers.Serializer):
    id = serializers.UUIDField()
    publisher = serializers.CharField(source="publisher.slug")
    slug = serializers.CharField()
    title = serializers.CharField()
    summary = serializers.CharField()
    description = serializers.CharField()
    readme = serializers.CharField()
    category = serializers.CharField()
    tags = serializers.ListField(child=serializers.CharField())
    cover_image = serializers.CharField()
    base_models = serializers.ListField(child=serializers.CharField())
    listed = serializers.BooleanField()
    price_model = serializers.CharField()
    price_cents = serializers.IntegerField()
    currency = serializers.CharField()
    price_display = serializers.CharField()
    licence = serializers.CharField()
    seats = serializers.IntegerField()
    seat_limit = serializers.IntegerField(allow_null=True)
    seats_sold = serializers.IntegerField()
    licence_days = serializers.IntegerField(allow_null=True)
    quota_per_period = serializers.IntegerField(allow_null=True)
    forms = serializers.ListField(child=serializers.CharField())
    federation_allowed = serializers.BooleanField()
    items = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def get_items(self, pack: Any) -> int:
        return int(selectors.pack_items(pack).count())


class StudioItemOutput(serializers.Serializer):
    id = serializers.UUIDField()
    provenance_id = serializers.UUIDField()
    version = serializers.IntegerField()
    kind = serializers.CharField()
    state = serializers.CharField()
    title = serializers.CharField()
    text = serializers.CharField()
    tags = serializers.ListField(child=serializers.CharField())
    metadata = serializers.JSONField()
    source = serializers.JSONField()  # type: ignore[assignment]
    semantic_type = serializers.CharField()
    language = serializers.CharField()
    licence = serializers.CharField()
    content_sha256 = serializers.CharField()
    blob_sha256 = serializers.CharField()
    model_fingerprint = serializers.CharField()
    blob_meta = serializers.JSONField()
    owner = serializers.CharField(source="owner.username")
    created_at = serializers.DateTimeField()


class StudioUploadOutput(serializers.Serializer):
    id = serializers.UUIDField()
    kind = serializers.CharField()
    filename = serializers.CharField()
    content_type = serializers.CharField()
    size_bytes = serializers.IntegerField()
    sha256 = serializers.CharField()
    status = serializers.CharField()
    error = serializers.CharField()
    result = serializers.JSONField()
    options = serializers.SerializerMethodField()
    uploaded_by = serializers.CharField(source="uploaded_by.username", allow_null=True, default=None)
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)

    def get_options(self, upload: Any) -> dict[str, Any]:
        return {k: v for k, v in (upload.options or {}).items() if k != "scopes"}


class StudioPreviewOutput(serializers.Serializer):
    id = serializers.UUIDField()
    provenance_id = serializers.UUIDField()
    version = serializers.IntegerField()
    kind = serializers.CharField()
    title = serializers.CharField()
    text = serializers.CharField(help_text="The text a buyer's installation holds (watermarked).")
    original_text = serializers.CharField(help_text="The pack's current text, before the watermark.")
    watermarked = serializers.BooleanField()
    watermark_id = serializers.CharField()
    tags = serializers.ListField(child=serializers.CharField())
    metadata = serializers.JSONField()
    source = serializers.JSONField()  # type: ignore[assignment]
    semantic_type = serializers.CharField()
    language = serializers.CharField()
    entities = serializers.ListField(child=serializers.CharField())
    valid_from = serializers.DateTimeField(allow_null=True)
    valid_to = serializers.DateTimeField(allow_null=True)
    licence = serializers.CharField()
    content_sha256 = serializers.CharField()
    blob_sha256 = serializers.CharField()
    model_fingerprint = serializers.CharField()


# --- publishers ----------------------------------------------------------------------------------------


class PublisherListCreateApi(MarketplaceApi):
    class StudioPublisherCreateInput(StrictSerializer):
        slug = serializers.SlugField(max_length=64)
        display_name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
        organization = serializers.SlugField(
            max_length=64,
            required=False,
            help_text="An organization you own or administer; omit for a personal publisher.",
        )
        bio = serializers.CharField(max_length=5000, required=False, allow_blank=True, default="")
        website = serializers.URLField(max_length=200, required=False, allow_blank=True, default="")

    @extend_schema(
        responses={200: StudioPublisherOutput(many=True), **ERRORS},
        tags=["marketplace"],
        description="The publishers you publish for.",
    )
    def get(self, request: Request) -> Response:
        actor = _actor(request)
        qs = selectors.publisher_list_for(actor=actor)
        return Response(StudioPublisherOutput(qs, many=True, context={"subject": actor}).data)

    @extend_schema(
        request=StudioPublisherCreateInput,
        responses={201: StudioPublisherOutput, **ERRORS, **CONFLICT},
        tags=["marketplace"],
        description="Create a personal publisher (no `organization`), or one for an organization you own or "
        "administer. Its memories live in the namespace `publisher:<slug>`.",
    )
    def post(self, request: Request) -> Response:
        data = validated(self.StudioPublisherCreateInput, request.data)
        actor = _actor(request, "publisher.create")
        org = None
        if data.get("organization"):
            org = Organization.objects.filter(slug=data.pop("organization")).first()
            if org is None:
                raise NotFound("Organization not found.")
        publisher = services.publisher_create(actor=actor, organization=org, **data)
        return Response(
            StudioPublisherOutput(publisher, context={"subject": actor}).data, status=status.HTTP_201_CREATED
        )


class PublisherDetailApi(MarketplaceApi):
    class StudioPublisherUpdateInput(StrictSerializer):
        display_name = serializers.CharField(max_length=200, required=False)
        bio = serializers.CharField(max_length=5000, required=False, allow_blank=True)
        website = serializers.URLField(max_length=200, required=False, allow_blank=True)

    @extend_schema(responses={200: StudioPublisherOutput, **ERRORS}, tags=["marketplace"])
    def get(self, request: Request, slug: str) -> Response:
        actor = _actor(request)
        return Response(
            StudioPublisherOutput(selectors.publisher_get(slug=slug), context={"subject": actor}).data
        )

    @extend_schema(
        request=StudioPublisherUpdateInput,
        responses={200: StudioPublisherOutput, **ERRORS},
        tags=["marketplace"],
        description="Owners edit the profile.",
    )
    def patch(self, request: Request, slug: str) -> Response:
        data = validated(self.StudioPublisherUpdateInput, request.data)
        actor = _actor(request, "publisher.update")
        publisher = services.publisher_update(
            actor=actor, publisher=selectors.publisher_get(slug=slug), **data
        )
        return Response(StudioPublisherOutput(publisher, context={"subject": actor}).data)


class PublisherMemberListApi(MarketplaceApi):
    class StudioMemberSetInput(StrictSerializer):
        username = serializers.CharField(max_length=150)
        role = serializers.ChoiceField(
            choices=PublisherRole.choices, required=False, default=PublisherRole.PUBLISHER
        )

    @extend_schema(
        responses={200: StudioMemberOutput(many=True), **ERRORS},
        tags=["marketplace"],
        description="Members who may publish (besides the owner, or the organization's owners and admins).",
    )
    def get(self, request: Request, slug: str) -> Response:
        publisher = selectors.publisher_get(slug=slug)
        return Response(
            StudioMemberOutput(
                selectors.studio_members(actor=_actor(request), publisher=publisher), many=True
            ).data
        )

    @extend_schema(
        request=StudioMemberSetInput,
        responses={200: StudioMemberOutput, 201: StudioMemberOutput, **ERRORS},
        tags=["marketplace"],
        description="Owners add a member (201) or change a member's role (200).",
    )
    def post(self, request: Request, slug: str) -> Response:
        data = validated(self.StudioMemberSetInput, request.data)
        publisher = selectors.publisher_get(slug=slug)
        member, created = services.publisher_member_set(
            actor=_actor(request, "publisher.member.set"), publisher=publisher, **data
        )
        return Response(
            StudioMemberOutput(member).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


class PublisherMemberDeleteApi(MarketplaceApi):
    @extend_schema(
        responses={204: None, **ERRORS},
        tags=["marketplace"],
        description="Owners remove members; a member may remove themselves.",
    )
    def delete(self, request: Request, slug: str, username: str) -> Response:
        publisher = selectors.publisher_get(slug=slug)
        services.publisher_member_remove(
            actor=_actor(request, "publisher.member.remove"), publisher=publisher, username=username
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- packs ---------------------------------------------------------------------------------------------


class StudioPackFieldsInput(StrictSerializer):
    title = StrictCharField(max_length=200)
    summary = StrictCharField(max_length=300, required=False, allow_blank=True)
    description = StrictCharField(max_length=20_000, required=False, allow_blank=True)
    readme = StrictCharField(
        max_length=services.MAX_README_CHARS, required=False, allow_blank=True, help_text="Markdown."
    )
    category = serializers.SlugField(max_length=64, required=False, allow_blank=True)
    tags = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, max_length=services.MAX_LIST
    )
    base_models = serializers.ListField(
        child=serializers.CharField(max_length=200), required=False, max_length=services.MAX_LIST
    )
    listed = serializers.BooleanField(required=False)
    price_model = serializers.ChoiceField(choices=PriceModel.choices, required=False)
    price_cents = serializers.IntegerField(
        required=False, help_text="One-time price, per month, or per 1,000 retrievals."
    )
    currency = serializers.RegexField(r"^[a-z]{3}$", required=False)
    licence = serializers.CharField(max_length=64, required=False)
    seats = serializers.IntegerField(required=False, help_text="Seats per licence (at least 1).")
    seat_limit = serializers.IntegerField(
        required=False, allow_null=True, help_text="Seats on sale in total."
    )
    licence_days = serializers.IntegerField(required=False, allow_null=True)
    quota_per_period = serializers.IntegerField(required=False, allow_null=True)
    forms = serializers.ListField(
        child=serializers.ChoiceField(choices=ALL_FORMS), required=False, max_length=3
    )
    federation_allowed = serializers.BooleanField(required=False)


class StudioPackCreateInput(StudioPackFieldsInput):
    slug = serializers.SlugField(max_length=80)


class StudioPackUpdateInput(StudioPackFieldsInput):
    title = StrictCharField(max_length=200, required=False)


class PublisherPackListCreateApi(MarketplaceApi):
    @extend_schema(
        responses={200: StudioPackOutput(many=True), **ERRORS},
        tags=["marketplace"],
        description="The publisher's packs (unlisted ones too, for those who publish for it).",
    )
    def get(self, request: Request, slug: str) -> Response:
        packs = selectors.publisher_packs(actor=_actor(request), publisher=selectors.publisher_get(slug=slug))
        return Response(StudioPackOutput(packs, many=True).data)

    @extend_schema(
        request=StudioPackCreateInput,
        responses={201: StudioPackOutput, **ERRORS, **CONFLICT},
        tags=["marketplace"],
    )
    def post(self, request: Request, slug: str) -> Response:
        data = validated(StudioPackCreateInput, request.data)
        pack = services.pack_create(
            actor=_actor(request, "pack.create"), publisher=selectors.publisher_get(slug=slug), **data
        )
        return Response(StudioPackOutput(pack).data, status=status.HTTP_201_CREATED)


class PackListingApi(MarketplaceApi):
    @extend_schema(
        responses={200: StudioPackOutput, **ERRORS},
        tags=["marketplace"],
        description="The listing, price and terms as the publisher edits them.",
    )
    def get(self, request: Request, publisher: str, slug: str) -> Response:
        actor = _actor(request)
        return Response(
            StudioPackOutput(selectors.studio_pack(actor=actor, pack=_pack(request, publisher, slug))).data
        )

    @extend_schema(
        request=StudioPackUpdateInput,
        responses={200: StudioPackOutput, **ERRORS},
        tags=["marketplace"],
        description="Change the listing, price or terms; every rule is checked on the result.",
    )
    def patch(self, request: Request, publisher: str, slug: str) -> Response:
        data = validated(StudioPackUpdateInput, request.data)
        pack = services.pack_update(
            actor=_actor(request, "pack.update"), pack=_pack(request, publisher, slug), **data
        )
        return Response(StudioPackOutput(pack).data)


class PackItemListCreateApi(MarketplaceApi):
    class StudioItemsInput(StrictSerializer):
        memories = serializers.ListField(
            child=serializers.DictField(),
            allow_empty=False,
            help_text="Memories as the Memory API creates them (plaintext; no namespace or provenance_id).",
        )

    @extend_schema(
        parameters=page_parameters(),
        responses={200: paginated(StudioItemOutput), **ERRORS},
        tags=["marketplace"],
    )
    def get(self, request: Request, publisher: str, slug: str) -> Response:
        items = selectors.studio_items(actor=_actor(request), pack=_pack(request, publisher, slug))
        return paginated_response(request=request, view=self, items=items, serializer=StudioItemOutput)

    @extend_schema(
        request=StudioItemsInput, responses={201: StudioItemOutput(many=True), **ERRORS}, tags=["marketplace"]
    )
    def post(self, request: Request, publisher: str, slug: str) -> Response:
        data = validated(self.StudioItemsInput, request.data)
        if len(data["memories"]) > settings.VAULT_MAX_BATCH:
            raise ApplicationError(
                f"At most {settings.VAULT_MAX_BATCH} memories per request; upload JSONL for more.",
                {"field": "memories"},
                code="too_large",
            )
        items = []
        for i, raw in enumerate(data["memories"]):
            s = JsonlMemoryInput(data=raw)
            if not s.is_valid():
                raise serializers.ValidationError({"memories": {str(i): s.errors}})
            items.append(dict(s.validated_data))
        cubes = services.pack_add_memories(
            actor=_actor(request, "pack.items.add"), pack=_pack(request, publisher, slug), items=items
        )
        return Response(StudioItemOutput(cubes, many=True).data, status=status.HTTP_201_CREATED)


class PackItemDeleteApi(MarketplaceApi):
    @extend_schema(
        responses={204: None, **ERRORS},
        tags=["marketplace"],
        description="Take a memory out of the pack (releases already published keep it).",
    )
    def delete(self, request: Request, publisher: str, slug: str, cube_id: str) -> Response:
        services.pack_item_remove(
            actor=_actor(request, "pack.items.remove"), pack=_pack(request, publisher, slug), cube_id=cube_id
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class PackItemPreviewApi(MarketplaceApi):
    @extend_schema(
        responses={200: StudioPreviewOutput, **ERRORS},
        tags=["marketplace"],
        description="A memory exactly as a buyer's installation will hold it (publisher members only).",
    )
    def get(self, request: Request, publisher: str, slug: str, cube_id: str) -> Response:
        preview = services.pack_item_preview(
            actor=_actor(request, "pack.preview"), pack=_pack(request, publisher, slug), cube_id=cube_id
        )
        return Response(StudioPreviewOutput(preview).data)


# --- uploads -------------------------------------------------------------------------------------------


class _CappedUploads:
    """Before anything reads the body: file parts go straight to disk, and stop at the cap."""

    def initialize_request(self, request: Any, *args: Any, **kwargs: Any) -> Request:
        request.upload_handlers = [CappedUploadHandler(request, limit=upload_max_bytes())]
        return super().initialize_request(request, *args, **kwargs)  # type: ignore[misc]

    def get_throttles(self) -> list[Any]:
        # The upload bucket counts uploads; listing them is not an upload.
        request = getattr(self, "request", None)
        if request is not None and request.method == "GET":
            return []
        return super().get_throttles()  # type: ignore[misc,no-any-return]


class PackUploadListCreateApi(_CappedUploads, MarketplaceApi):
    parser_classes = [MultiPartParser, FormParser]
    throttle_classes = throttles("pack_upload")

    class StudioUploadInput(StrictSerializer):
        kind = serializers.ChoiceField(choices=[UploadKind.JSONL, UploadKind.DOCUMENT, UploadKind.ADAPTER])
        file = serializers.FileField(required=False, help_text="JSONL, a document, or an adapter zip.")
        adapter_config = serializers.FileField(
            required=False, help_text="adapter_config.json (with adapter_model)."
        )
        adapter_model = serializers.FileField(required=False, help_text="adapter_model.safetensors.")
        tags = serializers.ListField(
            child=serializers.CharField(max_length=64), required=False, max_length=20
        )
        name = serializers.CharField(max_length=200, required=False)
        chunk_tokens = serializers.IntegerField(required=False, min_value=MIN_BUDGET, max_value=MAX_BUDGET)
        base_model_fingerprint = serializers.RegexField(r"^[0-9a-f]{64}$", required=False)
        processing = serializers.ChoiceField(
            choices=["auto", "inline", "background"],
            required=False,
            default="auto",
            help_text="auto: small uploads now, large ones by the worker.",
        )

    @extend_schema(
        operation_id="marketplace_studio_uploads_list",
        parameters=page_parameters(),
        responses={200: paginated(StudioUploadOutput), **ERRORS},
        tags=["marketplace"],
    )
    def get(self, request: Request, publisher: str, slug: str) -> Response:
        uploads = selectors.studio_uploads(actor=_actor(request), pack=_pack(request, publisher, slug))
        return paginated_response(request=request, view=self, items=uploads, serializer=StudioUploadOutput)

    @extend_schema(
        request={"multipart/form-data": StudioUploadInput},
        responses={201: StudioUploadOutput, 202: StudioUploadOutput, **UPLOAD_ERRORS},
        tags=["marketplace"],
        description="Upload pack content: `jsonl` (one memory per line), `document` (Markdown, text, "
        "HTML, PDF; chunked), or `adapter` (a LoRA adapter: a zip, or adapter_config + adapter_model). "
        "201: processed now (status done); 202: queued (status pending; poll the upload).",
    )
    def post(self, request: Request, publisher: str, slug: str) -> Response:
        data = validated(self.StudioUploadInput, request.data)
        pack = _pack(request, publisher, slug)
        files = {
            k: data.pop(k) for k in ("file", "adapter_config", "adapter_model") if data.get(k) is not None
        }
        kind = data.pop("kind")
        mode = data.pop("processing", "auto")
        upload = services.pack_upload_create(
            actor=_actor(request, "pack.upload"),
            pack=pack,
            kind=kind,
            files=files,
            options=data,
            inline={"auto": None, "inline": True, "background": False}[mode],
        )
        code = status.HTTP_201_CREATED if upload.status == UploadStatus.DONE else status.HTTP_202_ACCEPTED
        return Response(StudioUploadOutput(upload).data, status=code)


class PackUploadDetailApi(MarketplaceApi):
    @extend_schema(responses={200: StudioUploadOutput, **ERRORS}, tags=["marketplace"])
    def get(self, request: Request, publisher: str, slug: str, upload_id: str) -> Response:
        upload = selectors.studio_upload_get(
            actor=_actor(request), pack=_pack(request, publisher, slug), upload_id=upload_id
        )
        return Response(StudioUploadOutput(upload).data)


class PackCoverApi(_CappedUploads, MarketplaceApi):
    parser_classes = [MultiPartParser, FormParser]
    throttle_classes = throttles("pack_upload")

    class StudioCoverInput(StrictSerializer):
        file = serializers.FileField(help_text="PNG, JPEG or WebP.")

    @extend_schema(
        request={"multipart/form-data": StudioCoverInput},
        responses={200: StudioPackOutput, **UPLOAD_ERRORS},
        tags=["marketplace"],
        description="Set the cover image (checked by content and size).",
    )
    def put(self, request: Request, publisher: str, slug: str) -> Response:
        data = validated(self.StudioCoverInput, request.data)
        pack = services.pack_cover_set(
            actor=_actor(request, "pack.cover"), pack=_pack(request, publisher, slug), file=data["file"]
        )
        return Response(StudioPackOutput(pack).data)


P = "packs/<slug:publisher>/<slug:slug>"
urlpatterns = [
    path("publishers", PublisherListCreateApi.as_view(), name="studio-publishers"),
    path("publishers/<slug:slug>", PublisherDetailApi.as_view(), name="studio-publisher"),
    path("publishers/<slug:slug>/members", PublisherMemberListApi.as_view(), name="studio-publisher-members"),
    path(
        "publishers/<slug:slug>/members/<str:username>",
        PublisherMemberDeleteApi.as_view(),
        name="studio-publisher-member",
    ),
    path("publishers/<slug:slug>/packs", PublisherPackListCreateApi.as_view(), name="studio-publisher-packs"),
    path(f"{P}/listing", PackListingApi.as_view(), name="studio-pack-listing"),
    path(f"{P}/items", PackItemListCreateApi.as_view(), name="studio-pack-items"),
    path(f"{P}/items/<uuid:cube_id>", PackItemDeleteApi.as_view(), name="studio-pack-item"),
    path(f"{P}/items/<uuid:cube_id>/preview", PackItemPreviewApi.as_view(), name="studio-pack-item-preview"),
    path(f"{P}/uploads", PackUploadListCreateApi.as_view(), name="studio-pack-uploads"),
    path(f"{P}/uploads/<uuid:upload_id>", PackUploadDetailApi.as_view(), name="studio-pack-upload"),
    path(f"{P}/cover", PackCoverApi.as_view(), name="studio-pack-cover"),
]
