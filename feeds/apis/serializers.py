"""The shapes the feeds and subscriptions API answers with (inputs live with their views)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field, extend_schema_serializer, inline_serializer
from rest_framework import serializers

from feeds.models import Delivery, Feed, Subscription


def pack_label_of(feed: Feed) -> str:
    return f"{feed.pack.publisher.slug}/{feed.pack.slug}"


@extend_schema_serializer(component_name="FeedEntryDocument")
class EntryDocumentOutput(serializers.Serializer):
    """An entry as subscribers receive it (`feeds.render.entry_document`). Signed entries carry the
    instance key's Ed25519 `signature` over the canonical body; an entry rendered for one reader has its
    memory text watermarked, so it says `signed: false` and carries no signature."""

    id = serializers.UUIDField()
    feed = serializers.UUIDField()
    pack = serializers.CharField(help_text="`<publisher>/<slug>`.")
    seq = serializers.IntegerField()
    kind = serializers.CharField(
        help_text="release.published, memory.upserted, memory.retracted, terms.changed or pack.withdrawn."
    )
    at = serializers.CharField(help_text="When the entry was written (ISO 8601).")
    data = serializers.JSONField()  # type: ignore[assignment]
    entry_sha256 = serializers.CharField()
    signed = serializers.BooleanField(required=False)
    signature = serializers.CharField(required=False, allow_blank=True)
    signing_key_id = serializers.CharField(required=False, allow_blank=True)


@extend_schema_serializer(component_name="FeedSummaryOutput")
class FeedOutput(serializers.Serializer):
    id = serializers.UUIDField()
    pack = serializers.SerializerMethodField()
    pack_title = serializers.CharField(source="pack.title")
    last_seq = serializers.IntegerField(help_text="The newest entry's `seq` (0: no entry yet).")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def get_pack(self, feed: Feed) -> str:
        return pack_label_of(feed)


@extend_schema_serializer(component_name="SubscriptionFilterOutput")
class SubscriptionFilterOutput(serializers.Serializer):
    tags = serializers.ListField(child=serializers.CharField(), source="filter_tags")
    kinds = serializers.ListField(child=serializers.CharField(), source="filter_kinds")
    query = serializers.CharField(source="filter_query")
    threshold = serializers.FloatField(source="filter_threshold")


@extend_schema_serializer(component_name="SubscriptionOutput")
class SubscriptionOutput(serializers.Serializer):
    """A subscription. Its webhook secret is never shown here: only once, when it is created or rotated."""

    id = serializers.UUIDField()
    feed = serializers.UUIDField(source="feed_id")
    pack = serializers.SerializerMethodField()
    owner = serializers.CharField(source="owner_user.username")
    organization = serializers.CharField(source="organization.slug", allow_null=True, default=None)
    name = serializers.CharField()
    status = serializers.CharField(help_text="active, paused, stopped or cancelled.")
    status_reason = serializers.CharField()
    filter = serializers.SerializerMethodField()
    apply_to_vault = serializers.BooleanField()
    webhook_url = serializers.CharField()
    webhook_previous_secret_expires_at = serializers.SerializerMethodField(
        help_text="While a rotated-out secret is still accepted: until when (null otherwise)."
    )
    enqueued_seq = serializers.IntegerField(help_text="Entries up to this `seq` have been considered.")
    cursor = serializers.IntegerField(help_text="The last entry its vault has applied (or passed over).")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def get_pack(self, sub: Subscription) -> str:
        return pack_label_of(sub.feed)

    @extend_schema_field(SubscriptionFilterOutput)
    def get_filter(self, sub: Subscription) -> dict[str, Any]:
        return dict(SubscriptionFilterOutput(sub).data)

    @extend_schema_field(serializers.DateTimeField(allow_null=True))
    def get_webhook_previous_secret_expires_at(self, sub: Subscription) -> Any:
        if not sub.webhook_previous_secret or sub.webhook_previous_expires_at is None:
            return None
        return serializers.DateTimeField().to_representation(sub.webhook_previous_expires_at)


@extend_schema_serializer(component_name="SubscriptionWithSecretOutput")
class SubscriptionWithSecretOutput(SubscriptionOutput):
    """What creating a subscription (or giving one its first webhook) answers: the subscription and,
    this once, the webhook's signing secret."""

    webhook_secret = serializers.SerializerMethodField(
        help_text="The webhook's new signing secret (`whsec_...`), shown this once; null when none was made."
    )

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_webhook_secret(self, sub: Subscription) -> str | None:
        return self.context.get("webhook_secret")


@extend_schema_serializer(component_name="SubscriptionSecretRotatedOutput")
class SecretRotatedOutput(serializers.Serializer):
    subscription = SubscriptionOutput()
    webhook_secret = serializers.CharField(help_text="The new secret, shown this once.")
    previous_secret_valid_until = serializers.DateTimeField(
        allow_null=True, help_text="Until then the previous secret still signs deliveries, next to the new."
    )


@extend_schema_serializer(component_name="FeedSubscriptionSummaryOutput")
class FeedSubscriptionOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    organization = serializers.CharField(source="organization.slug", allow_null=True, default=None)
    status = serializers.CharField()
    cursor = serializers.IntegerField()


@extend_schema_serializer(component_name="FeedDetailOutput")
class FeedDetailOutput(FeedOutput):
    """`context`: `publishing` (bool) and `subscriptions` (the caller's, to this feed)."""

    publishing = serializers.SerializerMethodField(
        help_text="Whether you publish this feed (you have a role for its publisher)."
    )
    subscriptions = serializers.SerializerMethodField(
        help_text="Your subscriptions to it (and those of organizations you administer)."
    )

    def get_publishing(self, feed: Feed) -> bool:
        return bool(self.context.get("publishing"))

    @extend_schema_field(FeedSubscriptionOutput(many=True))
    def get_subscriptions(self, feed: Feed) -> list[Any]:
        return list(FeedSubscriptionOutput(self.context.get("subscriptions", []), many=True).data)


@extend_schema_serializer(component_name="FeedEntryPageOutput")
class EntryPageOutput(serializers.Serializer):
    feed = serializers.UUIDField()
    last_seq = serializers.IntegerField()
    next_since = serializers.IntegerField(help_text="Pass as `since` for the next page.")
    entries = EntryDocumentOutput(many=True)


DestinationOutput = inline_serializer(
    name="DeliveryDestinationOutput",
    fields={
        "id": serializers.UUIDField(),
        "kind": serializers.CharField(help_text="vault or webhook."),
        "url": serializers.CharField(),
        "circuit_state": serializers.CharField(help_text="closed, open or half_open."),
    },
)


@extend_schema_serializer(component_name="DeliveryOutput")
class DeliveryOutput(serializers.Serializer):
    id = serializers.UUIDField()
    destination = serializers.SerializerMethodField()
    entry = serializers.UUIDField(source="entry_id", allow_null=True)
    seq = serializers.IntegerField()
    event_type = serializers.CharField()
    status = serializers.CharField(help_text="pending, delivered, dead (a dead letter) or cancelled.")
    attempts = serializers.IntegerField()
    last_status_code = serializers.IntegerField(allow_null=True)
    last_error = serializers.CharField()
    next_attempt_at = serializers.DateTimeField(allow_null=True)
    delivered_at = serializers.DateTimeField(allow_null=True)
    dead_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    @extend_schema_field(DestinationOutput)
    def get_destination(self, d: Delivery) -> dict[str, Any]:
        dest = d.destination
        return {"id": str(dest.id), "kind": dest.kind, "url": dest.url, "circuit_state": dest.circuit_state}


@extend_schema_serializer(component_name="DeliveryAttemptOutput")
class AttemptOutput(serializers.Serializer):
    number = serializers.IntegerField()
    at = serializers.DateTimeField()
    outcome = serializers.CharField(help_text="delivered, retry, dead, gone or circuit_open.")
    status_code = serializers.IntegerField(allow_null=True)
    error = serializers.CharField()
    duration_ms = serializers.FloatField()
    response_excerpt = serializers.CharField()


@extend_schema_serializer(component_name="DeliveryDetailOutput")
class DeliveryDetailOutput(DeliveryOutput):
    attempt_log = AttemptOutput(many=True, source="attempt_log.all")
