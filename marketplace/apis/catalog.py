"""Marketplace API: browsing the catalog (search, facets, sorting), pack pages, ratings and reviews."""

from __future__ import annotations

from typing import Any

from django.urls import path
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from core.pagination import CursorlessPagination, page_parameters, paginated, paginated_response
from core.serializers import StrictCharField, StrictSerializer, validated
from governance.policy import Subject
from marketplace import selectors
from marketplace.apis.base import MarketplaceApi
from marketplace.models import ALL_FORMS, PriceModel
from marketplace.selectors.catalog import FACETS, MAX_QUERY_CHARS, SORTS
from marketplace.services import reviews as review_services

ERRORS = {
    400: OpenApiResponse(description="Bad input: the error names the parameter or field."),
    404: OpenApiResponse(description="No such listed pack (or review)."),
}


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer, and only that: DRF's field would take "5", 5.0 or true."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise serializers.ValidationError("Must be a whole number.")
        return int(super().to_internal_value(data))


# --- output shapes --------------------------------------------------------------------------------------


class ReleaseOutput(serializers.Serializer):
    version = serializers.CharField()
    notes = serializers.CharField()
    release_id = serializers.CharField(source="manifest_sha256")
    manifest_sha256 = serializers.CharField()
    memories = serializers.IntegerField(source="memory_count", help_text="Memories the release ships.")
    yanked = serializers.BooleanField()
    created_at = serializers.DateTimeField()


class LatestReleaseOutput(serializers.Serializer):
    version = serializers.CharField()
    release_id = serializers.CharField(source="manifest_sha256")
    memories = serializers.IntegerField(source="memory_count")
    created_at = serializers.DateTimeField()


class PackListOutput(serializers.Serializer):
    publisher = serializers.CharField(source="publisher.slug")
    publisher_name = serializers.CharField(source="publisher.display_name")
    slug = serializers.CharField()
    title = serializers.CharField()
    summary = serializers.CharField()
    description = serializers.CharField()
    category = serializers.CharField()
    tags = serializers.ListField(child=serializers.CharField())
    cover_image = serializers.CharField()
    base_models = serializers.ListField(child=serializers.CharField())
    price_model = serializers.CharField()
    price_cents = serializers.IntegerField()
    currency = serializers.CharField()
    price_display = serializers.CharField()
    is_free = serializers.BooleanField()
    licence = serializers.CharField()
    forms_offered = serializers.ListField(child=serializers.ChoiceField(choices=ALL_FORMS))
    rating_avg = serializers.FloatField()
    rating_count = serializers.IntegerField()
    install_count = serializers.IntegerField()
    latest_release = LatestReleaseOutput(allow_null=True)
    score = serializers.FloatField(allow_null=True, help_text="Search relevance in [0, 1]; null without 'q'.")


class FacetValueOutput(serializers.Serializer):
    value = serializers.CharField(help_text="Pass as the facet's filter parameter.")
    label = serializers.CharField()  # type: ignore[assignment]
    count = serializers.IntegerField(help_text="Packs matching the query and every other facet's filter.")


class FacetsOutput(serializers.Serializer):
    category = FacetValueOutput(many=True)
    price_model = FacetValueOutput(many=True)
    form = FacetValueOutput(many=True)
    base_model = FacetValueOutput(many=True)
    publisher = FacetValueOutput(many=True)
    rating = FacetValueOutput(many=True, help_text="'4': an average of 4 stars or more, and so on.")


class CatalogPageOutput(serializers.Serializer):
    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = PackListOutput(many=True)
    facets = FacetsOutput()
    sort = serializers.ChoiceField(choices=SORTS)
    query = serializers.CharField()


class ReviewSummaryOutput(serializers.Serializer):
    count = serializers.IntegerField()
    average = serializers.FloatField()
    histogram = serializers.DictField(child=serializers.IntegerField(), help_text="Stars '1'-'5' -> reviews.")


class PackOutput(PackListOutput):
    """A pack's page."""

    readme = serializers.CharField()
    seats = serializers.IntegerField()
    seat_limit = serializers.IntegerField(allow_null=True)
    licence_days = serializers.IntegerField(allow_null=True)
    quota_per_period = serializers.IntegerField(allow_null=True)
    forms = serializers.ListField(
        child=serializers.CharField(), help_text="Forms the terms allow; [] is all."
    )
    federation_allowed = serializers.BooleanField()
    releases = ReleaseOutput(many=True, source="release_list")
    card = serializers.SerializerMethodField(help_text="The latest release's pack card ({} before one).")
    review_summary = ReviewSummaryOutput()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def get_card(self, pack) -> dict[str, Any]:  # type: ignore[no-untyped-def]
        return dict(pack.latest_release.card or {}) if pack.latest_release else {}


class ReviewOutput(serializers.Serializer):
    id = serializers.UUIDField()
    pack = serializers.SerializerMethodField()
    author = serializers.CharField(source="author.username")
    rating = serializers.IntegerField()
    title = serializers.CharField()
    body = serializers.CharField()
    licence_holder = serializers.SerializerMethodField(
        help_text="user (own licence) or organization (a seat)."
    )
    hidden = serializers.BooleanField(help_text="Hidden by moderation: shown to its author and staff only.")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def get_pack(self, review) -> str:  # type: ignore[no-untyped-def]
        return f"{review.pack.publisher.slug}/{review.pack.slug}"

    def get_licence_holder(self, review) -> str:  # type: ignore[no-untyped-def]
        return "user" if review.licence.holder_user_id else "organization"


class ReportOutput(serializers.Serializer):
    review = serializers.UUIDField(source="review_id")
    reason = serializers.CharField()
    review_hidden = serializers.BooleanField(source="review.hidden")
    created_at = serializers.DateTimeField()


# --- browse ---------------------------------------------------------------------------------------------


@extend_schema_serializer(component_name="CatalogFilterInput")
class CatalogFilterInput(StrictSerializer):
    q = serializers.CharField(required=False, allow_blank=True, max_length=MAX_QUERY_CHARS)
    sort = serializers.ChoiceField(choices=SORTS, required=False)
    category = serializers.ListField(child=serializers.CharField(max_length=100), required=False)
    price_model = serializers.ListField(
        child=serializers.ChoiceField(choices=PriceModel.values), required=False
    )
    form = serializers.ListField(child=serializers.ChoiceField(choices=ALL_FORMS), required=False)
    base_model = serializers.ListField(child=serializers.CharField(max_length=100), required=False)
    publisher = serializers.ListField(child=serializers.CharField(max_length=100), required=False)
    rating = serializers.IntegerField(required=False, min_value=1, max_value=5)
    tag = serializers.ListField(child=serializers.CharField(max_length=100), required=False)
    limit = serializers.IntegerField(required=False, min_value=1)
    offset = serializers.IntegerField(required=False, min_value=0)


MULTI = ("category", "price_model", "form", "base_model", "publisher", "tag")


class PackCatalogApi(MarketplaceApi):
    @extend_schema(
        operation_id="marketplace_packs_browse",
        parameters=[
            OpenApiParameter("q", str, description="Full-text and semantic search over listings."),
            OpenApiParameter(
                "sort", str, enum=list(SORTS), description="relevance (needs q), newest, rating, installs."
            ),
            OpenApiParameter("category", str, many=True),
            OpenApiParameter("price_model", str, many=True, enum=list(PriceModel.values)),
            OpenApiParameter("form", str, many=True, enum=ALL_FORMS, description="Forms offered."),
            OpenApiParameter("base_model", str, many=True),
            OpenApiParameter("publisher", str, many=True, description="Publisher slug."),
            OpenApiParameter("rating", int, description="At least this average rating (1-5)."),
            OpenApiParameter("tag", str, many=True, description="Packs carrying every tag given."),
            *page_parameters(),
        ],
        responses={
            200: CatalogPageOutput,
            400: ERRORS[400],
            503: OpenApiResponse(description="The search index is unavailable (only with 'q')."),
        },
        tags=["marketplace"],
        description="Browse the catalog: listed packs with a release. Facets: " + ", ".join(FACETS) + ". "
        "Several values of one filter are alternatives; different filters must all hold.",
    )
    def get(self, request: Request) -> Response:
        raw = {
            k: (request.query_params.getlist(k) if k in MULTI else v) for k, v in request.query_params.items()
        }
        d = validated(CatalogFilterInput, raw)
        result = selectors.catalog_browse(
            query=d.get("q", ""),
            sort=d.get("sort", ""),
            filters={k: d[k] for k in (*MULTI, "rating") if k in d},
        )
        paginator = CursorlessPagination()
        page = paginator.paginate_queryset(result.packs, request, view=self)  # type: ignore[arg-type]
        response = paginator.get_paginated_response(PackListOutput(page, many=True).data)
        response.data["facets"] = {
            name: [{"value": v.value, "label": v.label, "count": v.count} for v in values]
            for name, values in result.facets.items()
        }
        response.data["sort"] = result.sort
        response.data["query"] = result.query
        return response


class PackDetailApi(MarketplaceApi):
    @extend_schema(responses={200: PackOutput, 404: ERRORS[404]}, tags=["marketplace"])
    def get(self, request: Request, publisher: str, slug: str) -> Response:
        return Response(PackOutput(selectors.pack_detail(publisher_slug=publisher, slug=slug)).data)


# --- reviews --------------------------------------------------------------------------------------------


@extend_schema_serializer(component_name="ReviewCreateInput")
class ReviewCreateInput(StrictSerializer):
    rating = StrictIntegerField(min_value=1, max_value=5, help_text="1 to 5 stars.")
    title = StrictCharField(
        required=False, allow_blank=True, max_length=review_services.TITLE_MAX, default=""
    )
    body = StrictCharField(required=False, allow_blank=True, max_length=review_services.BODY_MAX, default="")


@extend_schema_serializer(component_name="ReviewUpdateInput")
class ReviewUpdateInput(StrictSerializer):
    rating = StrictIntegerField(required=False, min_value=1, max_value=5)
    title = StrictCharField(required=False, allow_blank=True, max_length=review_services.TITLE_MAX)
    body = StrictCharField(required=False, allow_blank=True, max_length=review_services.BODY_MAX)
    hidden = serializers.BooleanField(required=False, help_text="Staff only: hide or unhide (moderation).")


@extend_schema_serializer(component_name="ReviewReportInput")
class ReviewReportInput(StrictSerializer):
    reason = StrictCharField(max_length=review_services.REPORT_REASON_MAX)


class ReviewListCreateApi(MarketplaceApi):
    @extend_schema_serializer(component_name="ReviewListInput")
    class ListInput(StrictSerializer):
        limit = serializers.IntegerField(required=False, min_value=1)
        offset = serializers.IntegerField(required=False, min_value=0)

    @extend_schema(
        operation_id="marketplace_pack_reviews_list",
        parameters=page_parameters(),
        responses={200: paginated(ReviewOutput), 400: ERRORS[400], 404: ERRORS[404]},
        tags=["marketplace"],
    )
    def get(self, request: Request, publisher: str, slug: str) -> Response:
        validated(self.ListInput, dict(request.query_params.items()))
        pack = selectors.pack_get(publisher_slug=publisher, slug=slug)
        reviews = selectors.review_list(actor=Subject.from_request(request), pack=pack)
        return paginated_response(request=request, view=self, items=reviews, serializer=ReviewOutput)

    @extend_schema(
        operation_id="marketplace_pack_reviews_create",
        request=ReviewCreateInput,
        responses={
            201: ReviewOutput,
            400: ERRORS[400],
            403: OpenApiResponse(description="No licence of the pack that gives a say (licence_required)."),
            404: ERRORS[404],
            409: OpenApiResponse(description="This licence already has a review (already_reviewed)."),
        },
        tags=["marketplace"],
        description="Rate (1-5) and review a pack: licence holders only, one review per licence.",
    )
    def post(self, request: Request, publisher: str, slug: str) -> Response:
        d = validated(ReviewCreateInput, request.data)
        pack = selectors.pack_get(publisher_slug=publisher, slug=slug)
        review = review_services.review_create(actor=Subject.from_request(request), pack=pack, **d)
        return Response(ReviewOutput(review).data, status=status.HTTP_201_CREATED)


class ReviewDetailApi(MarketplaceApi):
    @extend_schema(
        operation_id="marketplace_pack_review_update",
        request=ReviewUpdateInput,
        responses={
            200: ReviewOutput,
            400: ERRORS[400],
            403: OpenApiResponse(description="Not its author (or, for 'hidden', not staff)."),
            404: ERRORS[404],
        },
        tags=["marketplace"],
    )
    def patch(self, request: Request, publisher: str, slug: str, review_id: Any) -> Response:
        d = validated(ReviewUpdateInput, request.data)
        actor = Subject.from_request(request)
        pack = selectors.pack_get(publisher_slug=publisher, slug=slug)
        review = selectors.review_get(actor=actor, pack=pack, review_id=review_id)
        review = review_services.review_update(actor=actor, review=review, **d)
        return Response(ReviewOutput(review).data)

    @extend_schema(
        operation_id="marketplace_pack_review_delete",
        responses={
            204: None,
            403: OpenApiResponse(description="Not its author or staff."),
            404: ERRORS[404],
        },
        tags=["marketplace"],
    )
    def delete(self, request: Request, publisher: str, slug: str, review_id: Any) -> Response:
        actor = Subject.from_request(request)
        pack = selectors.pack_get(publisher_slug=publisher, slug=slug)
        review = selectors.review_get(actor=actor, pack=pack, review_id=review_id)
        review_services.review_delete(actor=actor, review=review)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ReviewReportApi(MarketplaceApi):
    @extend_schema(
        operation_id="marketplace_pack_review_report",
        request=ReviewReportInput,
        responses={
            201: ReportOutput,
            400: ERRORS[400],
            403: OpenApiResponse(description="Your own review."),
            404: ERRORS[404],
            409: OpenApiResponse(description="You already reported it (already_reported)."),
        },
        tags=["marketplace"],
        description="Report a review. After MARKETPLACE_REVIEW_REPORTS_TO_HIDE reports (default 3) it is "
        "hidden pending moderation.",
    )
    def post(self, request: Request, publisher: str, slug: str, review_id: Any) -> Response:
        d = validated(ReviewReportInput, request.data)
        actor = Subject.from_request(request)
        pack = selectors.pack_get(publisher_slug=publisher, slug=slug)
        review = selectors.review_get(actor=actor, pack=pack, review_id=review_id)
        report = review_services.review_report(actor=actor, review=review, reason=d["reason"])
        return Response(ReportOutput(report).data, status=status.HTTP_201_CREATED)


urlpatterns = [
    path("packs", PackCatalogApi.as_view(), name="packs"),
    path("packs/<slug:publisher>/<slug:slug>", PackDetailApi.as_view(), name="pack"),
    path("packs/<slug:publisher>/<slug:slug>/reviews", ReviewListCreateApi.as_view(), name="catalog-reviews"),
    path(
        "packs/<slug:publisher>/<slug:slug>/reviews/<uuid:review_id>",
        ReviewDetailApi.as_view(),
        name="catalog-review",
    ),
    path(
        "packs/<slug:publisher>/<slug:slug>/reviews/<uuid:review_id>/report",
        ReviewReportApi.as_view(),
        name="catalog-review-report",
    ),
]
