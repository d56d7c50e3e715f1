"""Marketplace API: licences, their seats and their usage."""

from __future__ import annotations

from django.urls import path
from drf_spectacular.utils import extend_schema, extend_schema_field, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import User
from core.errors import NotFound
from core.serializers import StrictSerializer, validated
from governance.policy import Subject
from marketplace.apis.base import MarketplaceApi
from marketplace.apis.base import error_responses as _errors
from marketplace.selectors import licences as licence_selectors
from marketplace.services import licences as licence_services
from marketplace.services.metering import period_start, usage_for_period


class UsageOutput(serializers.Serializer):
    period_start = serializers.DateTimeField()
    retrievals = serializers.IntegerField()
    chats = serializers.IntegerField()
    kv_uses = serializers.IntegerField()
    adapter_uses = serializers.IntegerField()
    billed_units = serializers.IntegerField()


class LicenceOutput(serializers.Serializer):
    id = serializers.UUIDField()
    pack = serializers.SerializerMethodField()
    pack_title = serializers.CharField(source="pack.title")
    holder = serializers.SerializerMethodField()
    status = serializers.CharField()
    status_reason = serializers.CharField()
    usable = serializers.SerializerMethodField()
    price_model = serializers.CharField()
    licence = serializers.CharField()
    seats = serializers.IntegerField()
    seats_assigned = serializers.IntegerField()
    quota_per_period = serializers.IntegerField(allow_null=True)
    forms = serializers.ListField(child=serializers.CharField(), help_text="Allowed forms; empty: all.")
    federation_allowed = serializers.BooleanField()
    starts_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    grace_until = serializers.DateTimeField(allow_null=True)
    usage_this_period = serializers.SerializerMethodField()

    def get_pack(self, lic) -> str:  # type: ignore[no-untyped-def]
        return licence_services.pack_label(lic.pack)

    @extend_schema_field(
        inline_serializer(
            name="LicenceHolderOutput",
            fields={"type": serializers.CharField(), "name": serializers.CharField()},
        )
    )
    def get_holder(self, lic) -> dict[str, str]:  # type: ignore[no-untyped-def]
        if lic.holder_org_id:
            return {"type": "organization", "name": lic.holder_org.slug}
        return {"type": "user", "name": lic.holder_user.username}

    def get_usable(self, lic) -> bool:  # type: ignore[no-untyped-def]
        return licence_services.licence_is_usable(lic)

    @extend_schema_field(
        inline_serializer(
            name="LicencePeriodUsageOutput",
            fields={
                k: serializers.IntegerField() for k in ("retrievals", "chats", "kv_uses", "adapter_uses")
            },
        )
    )
    def get_usage_this_period(self, lic) -> dict[str, int]:  # type: ignore[no-untyped-def]
        row = usage_for_period(licence=lic, period=period_start())
        return {
            "retrievals": row.retrievals,
            "chats": row.chats,
            "kv_uses": row.kv_uses,
            "adapter_uses": row.adapter_uses,
        }


class SeatOutput(serializers.Serializer):
    username = serializers.CharField(source="user.username")
    assigned_by = serializers.CharField(source="assigned_by.username", allow_null=True, default=None)
    created_at = serializers.DateTimeField()


class LicenceListApi(MarketplaceApi):
    @extend_schema(
        responses={200: LicenceOutput(many=True), **_errors(403)},
        tags=["marketplace"],
        description="Your licences and your organizations' licences, newest first.",
    )
    def get(self, request: Request) -> Response:
        licences = licence_selectors.licences_visible(actor=Subject.from_request(request))
        return Response(LicenceOutput(licences, many=True).data)


class LicenceDetailApi(MarketplaceApi):
    @extend_schema(responses={200: LicenceOutput, **_errors(403, 404)}, tags=["marketplace"])
    def get(self, request: Request, licence_id: str) -> Response:
        licence = licence_selectors.licence_get(actor=Subject.from_request(request), licence_id=licence_id)
        return Response(LicenceOutput(licence).data)


class LicenceSeatsApi(MarketplaceApi):
    class SeatInput(StrictSerializer):
        username = serializers.CharField(max_length=150)

    @extend_schema(responses={200: SeatOutput(many=True), **_errors(403, 404)}, tags=["marketplace"])
    def get(self, request: Request, licence_id: str) -> Response:
        licence = licence_selectors.licence_get(actor=Subject.from_request(request), licence_id=licence_id)
        return Response(SeatOutput(licence_selectors.seat_list(licence=licence), many=True).data)

    @extend_schema(
        request=SeatInput,
        responses={201: SeatOutput, **_errors(400, 403, 404, 409)},
        tags=["marketplace"],
        description="Assign one of an organization licence's seats to a member (owners and admins). "
        "All seats taken: 409. Not a member: 400.",
    )
    def post(self, request: Request, licence_id: str) -> Response:
        data = validated(self.SeatInput, request.data)
        actor = Subject.from_request(request, operation="licence.seat_assign")
        licence = licence_selectors.licence_get(actor=actor, licence_id=licence_id)
        user = User.objects.filter(username=data["username"]).first()
        if user is None:
            raise NotFound(f"User '{data['username']}' not found.")
        seat = licence_services.seat_assign(actor=actor, licence=licence, user=user)
        return Response(SeatOutput(seat).data, status=status.HTTP_201_CREATED)


class LicenceSeatDetailApi(MarketplaceApi):
    @extend_schema(responses={204: None, **_errors(400, 403, 404)}, tags=["marketplace"])
    def delete(self, request: Request, licence_id: str, username: str) -> Response:
        actor = Subject.from_request(request, operation="licence.seat_unassign")
        licence = licence_selectors.licence_get(actor=actor, licence_id=licence_id)
        user = User.objects.filter(username=username).first()
        if user is None:
            raise NotFound(f"User '{username}' not found.")
        licence_services.seat_unassign(actor=actor, licence=licence, user=user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class LicenceUsageApi(MarketplaceApi):
    @extend_schema(
        responses={200: UsageOutput(many=True), **_errors(403, 404)},
        tags=["marketplace"],
        description="Use per period (calendar month, UTC), newest first; the current period is listed "
        "even when nothing was used yet.",
    )
    def get(self, request: Request, licence_id: str) -> Response:
        licence = licence_selectors.licence_get(actor=Subject.from_request(request), licence_id=licence_id)
        return Response(UsageOutput(licence_selectors.usage_list(licence=licence), many=True).data)


urlpatterns = [
    path("licences", LicenceListApi.as_view(), name="licences-list"),
    path("licences/<uuid:licence_id>", LicenceDetailApi.as_view(), name="licences-detail"),
    path("licences/<uuid:licence_id>/seats", LicenceSeatsApi.as_view(), name="licences-seats"),
    path(
        "licences/<uuid:licence_id>/seats/<str:username>",
        LicenceSeatDetailApi.as_view(),
        name="licences-seat",
    ),
    path("licences/<uuid:licence_id>/usage", LicenceUsageApi.as_view(), name="licences-usage"),
]
