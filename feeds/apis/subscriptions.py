"""Subscriptions API: subscribe, filter, pause and resume, rotate the webhook secret, and follow the
deliveries (dead letters included, and their retry)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import Organization
from core.errors import ApplicationError, NotFound
from core.pagination import page_parameters, paginated, paginated_response
from core.requests import current_user
from core.serializers import StrictCharField, StrictSerializer, validated
from feeds import selectors
from feeds.apis.base import (
    MAX_SEQ,
    FeedsApi,
    PageQuery,
    StrictBooleanField,
    StrictFloatField,
    StrictIntegerField,
    StrictUUIDField,
    actor_of,
    error_responses,
    no_input,
    query_validated,
)
from feeds.apis.serializers import (
    DeliveryDetailOutput,
    DeliveryOutput,
    SecretRotatedOutput,
    SubscriptionOutput,
    SubscriptionWithSecretOutput,
)
from feeds.models import Delivery, DeliveryStatus, EntryKind, Subscription, SubscriptionStatus
from feeds.services import subscriptions as services
from governance.policy import Subject

TAGS = ["feeds"]
MAX_FILTER_TAGS = services.MAX_FILTER_TAGS
MAX_TAG_CHARS = services.MAX_TAG_CHARS
MAX_QUERY_CHARS = services.MAX_QUERY_CHARS
MAX_NAME_CHARS = services.MAX_NAME_CHARS
MAX_URL_CHARS = 2000  # Subscription.webhook_url


# --- inputs -------------------------------------------------------------------------------------------


def _filter_input(name: str, *, partial: bool) -> type[StrictSerializer]:
    """The filter object: an entry passes when it matches every filter that is set."""
    fields = {
        "tags": serializers.ListField(
            child=StrictCharField(max_length=MAX_TAG_CHARS, min_length=1),
            max_length=MAX_FILTER_TAGS,
            required=False,
            help_text=f"Entries carrying any of these tags (at most {MAX_FILTER_TAGS}); [] means any.",
        ),
        "kinds": serializers.ListField(
            child=serializers.ChoiceField(choices=EntryKind.choices),
            max_length=len(EntryKind.choices),
            required=False,
            help_text="Entry kinds to receive; [] means all.",
        ),
        "query": StrictCharField(
            max_length=MAX_QUERY_CHARS,
            required=False,
            allow_blank=True,
            help_text="Semantic filter: a memory entry passes when its similarity to this text is above "
            "`threshold`.",
        ),
        "threshold": StrictFloatField(min_value=0.0, max_value=1.0, required=False),
        "__module__": __name__,
        "__doc__": "Subscription filters" + (" to change (those sent are replaced)." if partial else "."),
    }
    return extend_schema_serializer(component_name=name)(type(name, (StrictSerializer,), fields))


SubscriptionFilterInput = _filter_input("SubscriptionFilterInput", partial=False)
SubscriptionFilterPatchInput = _filter_input("SubscriptionFilterPatchInput", partial=True)


def _filter_fields(raw: dict[str, Any] | None) -> dict[str, Any]:
    """The filter object as the subscription services name its parts."""
    names = {
        "tags": "filter_tags",
        "kinds": "filter_kinds",
        "query": "filter_query",
        "threshold": "filter_threshold",
    }
    return {names[key]: value for key, value in (raw or {}).items()}


def _organization(user: Any, slug: str | None) -> Organization | None:
    """The organization named by slug, among those the caller belongs to. An organization the caller
    is not in is answered like one that does not exist (a 400 on the field), so slugs do not leak."""
    if not slug:
        return None
    org = Organization.objects.filter(slug=slug, members=user).first()
    if org is None:
        raise ApplicationError(
            f"organization: you are not a member of an organization '{slug}'.",
            {"field": "organization"},
            code="invalid",
        )
    return org


def _subscription(
    request: Request, subscription_id: Any, operation: str = ""
) -> tuple[Subject, Subscription]:
    actor = actor_of(request, operation)
    return actor, selectors.subscription_get(actor=actor, subscription_id=subscription_id)


def _delivery(subscription: Subscription, delivery_id: Any) -> Delivery:
    delivery = selectors.deliveries_of(subscription=subscription).filter(pk=delivery_id).first()
    if delivery is None:
        raise NotFound(f"Delivery {delivery_id} not found.")
    return delivery


# --- subscriptions ------------------------------------------------------------------------------------


class SubscriptionListApi(FeedsApi):
    @extend_schema_serializer(component_name="SubscriptionListQuery")
    class ListQuery(PageQuery):
        feed = serializers.UUIDField(required=False)
        status = serializers.ChoiceField(choices=SubscriptionStatus.choices, required=False)

    @extend_schema_serializer(component_name="SubscriptionCreateInput")
    class CreateInput(StrictSerializer):
        feed = StrictUUIDField(help_text="The feed to subscribe to (you must hold a usable licence).")
        organization = StrictCharField(
            required=False,
            allow_null=True,
            allow_blank=True,
            max_length=64,
            help_text="Subscribe for this organization (its owners and admins); omit for yourself.",
        )
        name = StrictCharField(required=False, allow_blank=True, max_length=MAX_NAME_CHARS)
        filter = SubscriptionFilterInput(required=False)
        webhook_url = StrictCharField(
            required=False,
            allow_blank=True,
            max_length=MAX_URL_CHARS,
            help_text="Also deliver every entry to this URL (Standard Webhooks). Private, loopback and "
            "link-local addresses are refused unless the instance allows them.",
        )
        apply_to_vault = StrictBooleanField(
            required=False, help_text="Apply entries to your installation of the pack (default true)."
        )
        since = StrictIntegerField(
            required=False,
            allow_null=True,
            min_value=0,
            max_value=MAX_SEQ,
            help_text="Replay entries after this `seq`; omit to start from now (the feed's newest entry).",
        )

    @extend_schema(
        parameters=[
            OpenApiParameter("feed", str, description="Only subscriptions to this feed (its id)."),
            OpenApiParameter(
                "status", str, enum=[c for c, _ in SubscriptionStatus.choices], description="Only these."
            ),
            *page_parameters(),
        ],
        responses={200: paginated(SubscriptionOutput), **error_responses(400, 403)},
        operation_id="api_v1_subscriptions_list",
        tags=TAGS,
        description="Your subscriptions and those of the organizations you administer, newest first.",
    )
    def get(self, request: Request) -> Response:
        query = query_validated(self.ListQuery, request)
        subs = selectors.subscriptions_of(actor=actor_of(request, "subscription.list"))
        if "feed" in query:
            subs = subs.filter(feed_id=query["feed"])
        if "status" in query:
            subs = subs.filter(status=query["status"])
        subs = subs.select_related("feed__pack__publisher", "owner_user", "organization").order_by(
            "-created_at", "-id"
        )
        return paginated_response(request=request, view=self, items=subs, serializer=SubscriptionOutput)

    @extend_schema(
        request=CreateInput,
        responses={201: SubscriptionWithSecretOutput, **error_responses(400, 402, 403, 404, 409)},
        tags=TAGS,
        description="Subscribes to a feed you may read. 201 with the subscription and, this once, its "
        "`webhook_secret` (with `webhook_url`): keep it to verify deliveries (Standard Webhooks). 402: "
        "no usable licence for the pack; 404: no such feed, or not one you may read.",
    )
    def post(self, request: Request) -> Response:
        data = validated(self.CreateInput, request.data)
        actor = actor_of(request, "subscription.create")
        organization = _organization(current_user(request), data.get("organization"))
        feed = selectors.feed_for_subscribing(actor=actor, feed_id=data["feed"])
        subscription, secret = services.subscription_create(
            actor=actor,
            feed=feed,
            organization=organization,
            name=data.get("name", ""),
            webhook_url=data.get("webhook_url", ""),
            apply_to_vault=data.get("apply_to_vault", True),
            since=data.get("since"),
            **_filter_fields(data.get("filter")),
        )
        return Response(
            SubscriptionWithSecretOutput(subscription, context={"webhook_secret": secret}).data,
            status=status.HTTP_201_CREATED,
        )


class SubscriptionDetailApi(FeedsApi):
    @extend_schema_serializer(component_name="SubscriptionUpdateInput")
    class UpdateInput(StrictSerializer):
        name = StrictCharField(required=False, allow_blank=True, max_length=MAX_NAME_CHARS)
        filter = SubscriptionFilterPatchInput(required=False)
        webhook_url = StrictCharField(
            required=False,
            allow_blank=True,
            max_length=MAX_URL_CHARS,
            help_text='A new webhook URL ("" removes the webhook). A first URL gets a new signing '
            "secret, answered this once as `webhook_secret`.",
        )
        apply_to_vault = StrictBooleanField(required=False)

    @extend_schema(responses={200: SubscriptionOutput, **error_responses(403, 404)}, tags=TAGS)
    def get(self, request: Request, subscription_id: str) -> Response:
        _, subscription = _subscription(request, subscription_id, "subscription.get")
        return Response(SubscriptionOutput(subscription).data)

    @extend_schema(
        request=UpdateInput,
        responses={200: SubscriptionWithSecretOutput, **error_responses(400, 403, 404, 409)},
        tags=TAGS,
        description="Changes the name, filters (each filter sent replaces that filter), webhook URL or "
        "whether entries are applied to your vault. Entries already considered are not reconsidered.",
    )
    def patch(self, request: Request, subscription_id: str) -> Response:
        data = validated(self.UpdateInput, request.data)
        if not data or ("filter" in data and not data["filter"] and len(data) == 1):
            raise ApplicationError("Send at least one field to change.", {"field": "non_field_errors"})
        actor, subscription = _subscription(request, subscription_id, "subscription.update")
        fields = {k: v for k, v in data.items() if k != "filter"}
        fields.update(_filter_fields(data.get("filter")))
        subscription = services.subscription_update(actor=actor, subscription=subscription, **fields)
        # A webhook added to a subscription that had none gets its first secret: shown here, once.
        secret = getattr(subscription, "_new_webhook_secret", None)
        return Response(SubscriptionWithSecretOutput(subscription, context={"webhook_secret": secret}).data)

    @extend_schema(
        responses={200: SubscriptionOutput, **error_responses(403, 404, 409)},
        tags=TAGS,
        description="Cancels: pending deliveries are cancelled and nothing more is sent. 200 with the "
        "cancelled subscription, which stays listed (and its delivery history readable).",
    )
    def delete(self, request: Request, subscription_id: str) -> Response:
        actor, subscription = _subscription(request, subscription_id, "subscription.cancel")
        subscription = services.subscription_cancel(actor=actor, subscription=subscription)
        return Response(SubscriptionOutput(subscription).data)


class SubscriptionPauseApi(FeedsApi):
    @extend_schema(
        request=None,
        responses={200: SubscriptionOutput, **error_responses(403, 404, 409)},
        tags=TAGS,
        description="Pauses: nothing more is enqueued for it until it resumes (deliveries already "
        "enqueued still go out).",
    )
    def post(self, request: Request, subscription_id: str) -> Response:
        no_input(request)
        actor, subscription = _subscription(request, subscription_id, "subscription.pause")
        subscription = services.subscription_pause(actor=actor, subscription=subscription)
        return Response(SubscriptionOutput(subscription).data)


class SubscriptionResumeApi(FeedsApi):
    @extend_schema(
        request=None,
        responses={200: SubscriptionOutput, **error_responses(402, 403, 404, 409)},
        tags=TAGS,
        description="Resumes: every entry written while it was paused is enqueued, in order, then new ones.",
    )
    def post(self, request: Request, subscription_id: str) -> Response:
        no_input(request)
        actor, subscription = _subscription(request, subscription_id, "subscription.resume")
        subscription = services.subscription_resume(actor=actor, subscription=subscription)
        return Response(SubscriptionOutput(subscription).data)


class SubscriptionRotateSecretApi(FeedsApi):
    @extend_schema(
        request=None,
        responses={200: SecretRotatedOutput, **error_responses(400, 403, 404, 409)},
        tags=TAGS,
        description="A new webhook secret, shown this once. Deliveries are signed with both the new and "
        "the previous secret until `previous_secret_valid_until`, so receivers can switch without losing "
        "a delivery. 400 (on `webhook_url`) without a webhook; 409 once cancelled.",
    )
    def post(self, request: Request, subscription_id: str) -> Response:
        no_input(request)
        actor, subscription = _subscription(request, subscription_id, "subscription.rotate_secret")
        subscription, secret = services.subscription_rotate_secret(actor=actor, subscription=subscription)
        body = {
            "subscription": subscription,
            "webhook_secret": secret,
            "previous_secret_valid_until": subscription.webhook_previous_expires_at
            if subscription.webhook_previous_secret
            else None,
        }
        return Response(SecretRotatedOutput(body).data)


# --- deliveries ---------------------------------------------------------------------------------------


def _deliveries_page(
    request: Request, view: Any, subscription: Subscription, status_: str | None
) -> Response:
    # Newest entry first; the vault's and the webhook's delivery of one entry side by side.
    deliveries = selectors.deliveries_of(subscription=subscription, status=status_)
    return paginated_response(request=request, view=view, items=deliveries, serializer=DeliveryOutput)


class DeliveryListApi(FeedsApi):
    @extend_schema_serializer(component_name="DeliveryListQuery")
    class ListQuery(PageQuery):
        status = serializers.ChoiceField(choices=DeliveryStatus.choices, required=False)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "status", str, enum=[c for c, _ in DeliveryStatus.choices], description="Only these."
            ),
            *page_parameters(),
        ],
        responses={200: paginated(DeliveryOutput), **error_responses(400, 403, 404)},
        tags=TAGS,
        operation_id="api_v1_subscriptions_deliveries_list",
        description="The subscription's deliveries (to its vault and its webhook), newest first: "
        "attempts, the last status code and error, and when the next attempt is due.",
    )
    def get(self, request: Request, subscription_id: str) -> Response:
        query = query_validated(self.ListQuery, request)
        _, subscription = _subscription(request, subscription_id, "subscription.deliveries")
        return _deliveries_page(request, self, subscription, query.get("status"))


class DeadLetterListApi(FeedsApi):
    @extend_schema(
        parameters=page_parameters(),
        responses={200: paginated(DeliveryOutput), **error_responses(400, 403, 404)},
        tags=TAGS,
        operation_id="api_v1_subscriptions_dead_letters_list",
        description="Dead letters: deliveries that ran out of attempts or were refused for good. Retry "
        "one with `POST deliveries/{id}/retry`.",
    )
    def get(self, request: Request, subscription_id: str) -> Response:
        query_validated(PageQuery, request)
        _, subscription = _subscription(request, subscription_id, "subscription.dead_letters")
        return _deliveries_page(request, self, subscription, DeliveryStatus.DEAD.value)


class DeliveryDetailApi(FeedsApi):
    @extend_schema(
        responses={200: DeliveryDetailOutput, **error_responses(403, 404)},
        tags=TAGS,
        description="One delivery with every attempt: when, the outcome, the status code, the error, "
        "how long it took and the start of the response.",
    )
    def get(self, request: Request, subscription_id: str, delivery_id: str) -> Response:
        _, subscription = _subscription(request, subscription_id, "subscription.delivery")
        return Response(DeliveryDetailOutput(_delivery(subscription, delivery_id)).data)


class DeliveryRetryApi(FeedsApi):
    @extend_schema(
        request=None,
        responses={200: DeliveryOutput, **error_responses(403, 404, 409)},
        tags=TAGS,
        description="Sends a dead letter again: it is pending, due now, and goes out in its place in "
        "the destination's order. 409 unless it is a dead letter.",
    )
    def post(self, request: Request, subscription_id: str, delivery_id: str) -> Response:
        no_input(request)
        actor, subscription = _subscription(request, subscription_id, "subscription.delivery_retry")
        delivery = services.subscription_delivery_retry(
            actor=actor, subscription=subscription, delivery_id=delivery_id
        )
        return Response(DeliveryOutput(delivery).data)
