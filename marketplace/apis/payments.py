"""Marketplace API: payments (checkout, orders, refunds, earnings, gateway webhooks, test-ledger actions)."""

from __future__ import annotations

from typing import Any

from django.urls import URLPattern, path
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Organization
from core.errors import NotFound
from core.pagination import page_parameters, paginated, paginated_response
from core.serializers import InstantField, StrictSerializer, validated
from core.throttling import throttles
from governance.policy import Subject
from marketplace.apis.base import MarketplaceApi
from marketplace.apis.base import MarketplaceErrorOutput as ErrorOutput
from marketplace.models import Order, Pack, Publisher
from marketplace.payments.webhooks import webhook_receive
from marketplace.selectors.orders import order_get, order_list
from marketplace.services import earnings as earnings_services
from marketplace.services import orders as order_services


def _err(description: str) -> OpenApiResponse:
    return OpenApiResponse(response=ErrorOutput, description=description)


class OrderEventOutput(serializers.Serializer):
    from_status = serializers.CharField()
    to_status = serializers.CharField()
    reason = serializers.CharField()
    gateway_event_id = serializers.CharField()
    amount_cents = serializers.IntegerField()
    created_at = serializers.DateTimeField()


class OrderOutput(serializers.Serializer):
    id = serializers.UUIDField()
    pack = serializers.SerializerMethodField()
    buyer = serializers.CharField(source="buyer.username")
    organization = serializers.SerializerMethodField()
    status = serializers.CharField()
    gateway = serializers.CharField()
    price_model = serializers.CharField()
    seats = serializers.IntegerField()
    amount_cents = serializers.IntegerField()
    currency = serializers.CharField()
    fee_cents = serializers.IntegerField()
    refunded_cents = serializers.IntegerField()
    checkout_session_id = serializers.CharField()
    checkout_url = serializers.CharField()
    licence = serializers.UUIDField(source="licence_id", allow_null=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def get_pack(self, order: Order) -> str:
        return f"{order.pack.publisher.slug}/{order.pack.slug}"

    def get_organization(self, order: Order) -> str | None:
        return order.buyer_org.slug if order.buyer_org is not None else None


class OrderDetailOutput(OrderOutput):
    events = OrderEventOutput(many=True, source="events.all")


def _pack(publisher: str, slug: str) -> Pack:
    pack = (
        Pack.objects.select_related("publisher")
        .filter(publisher__slug=publisher, slug=slug, listed=True)
        .first()
    )
    if pack is None:
        raise NotFound(f"Pack '{publisher}/{slug}' not found.")
    return pack


class CheckoutApi(MarketplaceApi):
    throttle_classes = throttles("checkout")

    class CheckoutInput(StrictSerializer):
        seats = serializers.IntegerField(min_value=1, max_value=order_services.MAX_SEATS_PER_ORDER, default=1)
        organization = serializers.SlugField(required=False, max_length=64, allow_null=True)

    @extend_schema(
        operation_id="marketplace_pack_checkout",
        request=CheckoutInput,
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                str,
                OpenApiParameter.HEADER,
                description="The same key with the same body answers the same order; with another body, 409.",
            )
        ],
        responses={
            201: OrderOutput,
            200: OrderOutput,
            400: _err("Bad input, or a free pack (free_pack): free packs are installed directly."),
            403: _err("Buying for an organization you do not administer, or a missing scope."),
            404: _err("No such listed pack or organization."),
            409: _err("Sold out (sold_out), or the Idempotency-Key was used for another body."),
            502: _err("The payment gateway failed."),
        },
        tags=["marketplace"],
    )
    def post(self, request: Request, publisher: str, slug: str) -> Response:
        data = validated(self.CheckoutInput, request.data)
        pack = _pack(publisher, slug)
        org = None
        if data.get("organization"):
            org = Organization.objects.filter(slug=data["organization"]).first()
            if org is None:
                raise NotFound("Organization not found.")
        order, created = order_services.checkout_start(
            actor=Subject.from_request(request, operation="order.checkout"),
            pack=pack,
            seats=data["seats"],
            organization=org,
            idempotency_key=str(request.headers.get("Idempotency-Key", "") or ""),
        )
        order = order_get(actor=Subject.from_request(request), order_id=order.pk)
        return Response(
            OrderOutput(order).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


class OrderListApi(MarketplaceApi):
    @extend_schema(
        operation_id="marketplace_orders_list",
        parameters=page_parameters(),
        responses=paginated(OrderOutput),
        tags=["marketplace"],
    )
    def get(self, request: Request) -> Response:
        items = order_list(actor=Subject.from_request(request))
        return paginated_response(request=request, view=self, items=items, serializer=OrderOutput)


class OrderDetailApi(MarketplaceApi):
    @extend_schema(
        operation_id="marketplace_order_get",
        responses={200: OrderDetailOutput, 404: _err("No such order of yours.")},
        tags=["marketplace"],
    )
    def get(self, request: Request, order_id: Any) -> Response:
        order = order_get(actor=Subject.from_request(request), order_id=order_id)
        return Response(OrderDetailOutput(order).data)


class OrderRefundApi(MarketplaceApi):
    class RefundInput(StrictSerializer):
        amount_cents = serializers.IntegerField(min_value=1, required=False)

    @extend_schema(
        operation_id="marketplace_order_refund",
        request=RefundInput,
        responses={
            200: OrderDetailOutput,
            400: _err("The amount is more than was paid and not yet refunded (refund_too_large)."),
            403: _err("Only the publisher's owners (and staff) refund."),
            404: _err("No such order."),
            409: _err("The order is not paid (not_refundable)."),
            502: _err("The payment gateway failed."),
        },
        tags=["marketplace"],
    )
    def post(self, request: Request, order_id: Any) -> Response:
        data = validated(self.RefundInput, request.data)
        actor = Subject.from_request(request, operation="order.refund")
        order = order_get(actor=actor, order_id=order_id)
        order_services.order_refund(actor=actor, order=order, amount_cents=data.get("amount_cents"))
        return Response(OrderDetailOutput(order_get(actor=actor, order_id=order_id)).data)


class EarningsPeriodOutput(serializers.Serializer):
    period = serializers.CharField()
    currency = serializers.CharField()
    gross_cents = serializers.IntegerField()
    fees_cents = serializers.IntegerField()
    refunds_cents = serializers.IntegerField()
    disputes_cents = serializers.IntegerField()
    net_cents = serializers.IntegerField()
    orders = serializers.IntegerField()


class EarningsTotalOutput(serializers.Serializer):
    currency = serializers.CharField()
    gross_cents = serializers.IntegerField()
    fees_cents = serializers.IntegerField()
    refunds_cents = serializers.IntegerField()
    disputes_cents = serializers.IntegerField()
    net_cents = serializers.IntegerField()
    orders = serializers.IntegerField()


class EarningsOutput(serializers.Serializer):
    publisher = serializers.CharField()
    period = serializers.CharField()
    periods = EarningsPeriodOutput(many=True)
    totals = EarningsTotalOutput(many=True)


class EarningsApi(MarketplaceApi):
    class QuerySerializer(StrictSerializer):
        # `from` is a keyword in Python: the field is named in __init__.
        to = InstantField(required=False)
        period = serializers.ChoiceField(choices=earnings_services.PERIODS, default="month")

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.fields["from"] = InstantField(required=False)

    @extend_schema(
        operation_id="marketplace_publisher_earnings",
        parameters=[
            OpenApiParameter("from", str, description="ISO-8601 instant (inclusive)."),
            OpenApiParameter("to", str, description="ISO-8601 instant (exclusive)."),
            OpenApiParameter("period", str, enum=list(earnings_services.PERIODS)),
        ],
        responses={
            200: EarningsOutput,
            400: _err("Bad query parameter."),
            403: _err("Only the publisher's owners see its earnings."),
            404: _err("No such publisher."),
        },
        tags=["marketplace"],
    )
    def get(self, request: Request, slug: str) -> Response:
        data = validated(self.QuerySerializer, request.query_params.dict())
        publisher = Publisher.objects.filter(slug=slug).first()
        if publisher is None:
            raise NotFound(f"Publisher '{slug}' not found.")
        report = earnings_services.earnings_report(
            actor=Subject.from_request(request),
            publisher=publisher,
            start=data.get("from"),
            end=data.get("to"),
            period=data["period"],
        )
        return Response(EarningsOutput(report).data)


# --- gateway webhooks (authenticated by their signature, not by a user) -----------------------------------


class WebhookOutput(serializers.Serializer):
    received = serializers.BooleanField()
    event_id = serializers.CharField()
    type = serializers.CharField()
    outcome = serializers.CharField()
    duplicate = serializers.BooleanField()


class _WebhookApi(APIView):
    """No session, no token: the `Stripe-Signature` over the raw body is the credential."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    gateway = ""

    @extend_schema(
        request={"application/json": {"type": "object"}},
        parameters=[OpenApiParameter("Stripe-Signature", str, OpenApiParameter.HEADER, required=True)],
        responses={
            200: WebhookOutput,
            400: _err("Bad signature, a timestamp outside the tolerance, or not an event."),
        },
        tags=["marketplace"],
    )
    def post(self, request: Request) -> Response:
        outcome = webhook_receive(
            gateway=self.gateway,
            payload=request.body,
            signature=str(request.headers.get("Stripe-Signature", "") or ""),
        )
        return Response(
            {
                "received": True,
                "event_id": outcome.event_id,
                "type": outcome.type,
                "outcome": outcome.outcome,
                "duplicate": outcome.duplicate,
            }
        )


class StripeWebhookApi(_WebhookApi):
    gateway = "stripe"


class LedgerWebhookApi(_WebhookApi):
    gateway = "ledger"


# --- the test ledger's buyer-side actions (the embedded default's "card network") --------------------------


class LedgerActionApi(MarketplaceApi):
    class LedgerActionInput(StrictSerializer):
        action = serializers.ChoiceField(choices=order_services.LEDGER_ACTIONS)

    @extend_schema(
        operation_id="marketplace_ledger_action",
        request=LedgerActionInput,
        responses={
            200: OrderDetailOutput,
            400: _err("Unknown action."),
            404: _err("No such order of yours on the test ledger."),
            409: _err("The action does not fit the order's state (e.g. paying an expired session)."),
        },
        tags=["marketplace"],
    )
    def post(self, request: Request, order_id: Any) -> Response:
        data = validated(self.LedgerActionInput, request.data)
        actor = Subject.from_request(request, operation="ledger.action")
        order = order_services.ledger_order_action(actor=actor, order_id=order_id, action=data["action"])
        return Response(OrderDetailOutput(order).data)


urlpatterns: list[URLPattern] = [
    path("packs/<slug:publisher>/<slug:slug>/checkout", CheckoutApi.as_view(), name="payments-checkout"),
    path("orders", OrderListApi.as_view(), name="payments-orders"),
    path("orders/<uuid:order_id>", OrderDetailApi.as_view(), name="payments-order"),
    path("orders/<uuid:order_id>/refund", OrderRefundApi.as_view(), name="payments-order-refund"),
    path("publishers/<slug:slug>/earnings", EarningsApi.as_view(), name="payments-earnings"),
    path("webhooks/stripe", StripeWebhookApi.as_view(), name="payments-webhook-stripe"),
    path("webhooks/ledger", LedgerWebhookApi.as_view(), name="payments-webhook-ledger"),
    path("ledger/orders/<uuid:order_id>/action", LedgerActionApi.as_view(), name="payments-ledger-action"),
]
