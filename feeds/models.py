"""Feeds (a signed, ordered log per pack), subscriptions with cursors, and the delivery outbox.

`Feed.last_seq` hands out `seq` under the feed row's lock, so on every database an entry with a higher
`seq` commits after every lower one: a reader that follows `seq > cursor` never skips an entry.
`Destination` and `Delivery` are the delivery engine's outbox (`feeds.delivery`): one destination per
place an entry goes (a subscriber's vault, its webhook, an MIP peer), one delivery per entry and
destination, written in the transaction that wrote the entry, and every attempt in `DeliveryAttempt`.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class Feed(models.Model):
    """A pack's feed: its log of entries. Created with the pack's first entry."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    pack = models.OneToOneField("marketplace.Pack", on_delete=models.PROTECT, related_name="feed")
    last_seq = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"feed {self.id} (pack {self.pack_id})"


class EntryKind(models.TextChoices):
    RELEASE_PUBLISHED = "release.published", "Release published"
    MEMORY_UPSERTED = "memory.upserted", "Memory upserted"
    MEMORY_RETRACTED = "memory.retracted", "Memory retracted"
    TERMS_CHANGED = "terms.changed", "Licence terms changed"
    PACK_WITHDRAWN = "pack.withdrawn", "Pack withdrawn"


class FeedEntry(models.Model):
    """One signed entry. `body` is the document that is signed (canonical JSON, RFC 8785) and relayed
    unchanged (MIP); `body_sha256` is its hash, `signature` the instance key's Ed25519 over the canonical
    bytes. Never updated after it is written."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    feed = models.ForeignKey(Feed, on_delete=models.PROTECT, related_name="entries")
    seq = models.PositiveBigIntegerField()
    kind = models.CharField(max_length=32, choices=EntryKind.choices)
    provenance_id = models.UUIDField(null=True, blank=True)  # the memory, for memory entries
    tags = models.JSONField(default=list, blank=True)  # what tag filters match
    text = models.TextField(blank=True)  # what semantic filters match (the memory's text; else "")
    body = models.JSONField()
    body_sha256 = models.CharField(max_length=64)
    signature = models.CharField(max_length=200, blank=True)
    signing_key_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["feed", "seq"], name="uniq_feed_entry_seq")]
        ordering = ["feed", "seq"]

    def __str__(self) -> str:
        return f"{self.feed_id}#{self.seq} {self.kind}"


class SubscriptionStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    PAUSED = "paused", "Paused"
    STOPPED = "stopped", "Stopped (its endpoint is gone or its licence ended)"
    CANCELLED = "cancelled", "Cancelled"


class Subscription(models.Model):
    """A user's or an organization's subscription to a feed they are licensed for.

    `enqueued_seq`: entries up to it have been considered (deliveries written, or filtered out); a paused
    subscription stops there and catches up, in order, when it resumes. `cursor`: the last entry its
    vault destination has applied (or passed over), which is what the subscriber sees as progress."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    feed = models.ForeignKey(Feed, on_delete=models.PROTECT, related_name="subscriptions")
    owner_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="feed_subscriptions"
    )
    organization = models.ForeignKey(
        "accounts.Organization",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="feed_subscriptions",
    )
    name = models.CharField(max_length=120, blank=True)
    status = models.CharField(
        max_length=16, choices=SubscriptionStatus.choices, default=SubscriptionStatus.ACTIVE
    )
    status_reason = models.CharField(max_length=300, blank=True)
    # Filters: an entry passes when it matches every filter that is set.
    filter_tags = models.JSONField(default=list, blank=True)  # any of these tags
    filter_query = models.TextField(blank=True)  # semantic: similarity of the memory to this text
    filter_vector = models.JSONField(null=True, blank=True)  # the query's embedding, computed once
    filter_threshold = models.FloatField(default=0.35)
    filter_kinds = models.JSONField(default=list, blank=True)  # entry kinds; [] means all
    apply_to_vault = models.BooleanField(default=True)
    enqueued_seq = models.PositiveBigIntegerField(default=0)
    cursor = models.PositiveBigIntegerField(default=0)
    # Standard Webhooks: `whsec_` + base64 secret; during a rotation the previous one stays valid.
    webhook_url = models.CharField(max_length=2000, blank=True)
    webhook_secret = models.CharField(max_length=120, blank=True)
    webhook_previous_secret = models.CharField(max_length=120, blank=True)
    webhook_previous_expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"subscription {self.id} to {self.feed_id} ({self.status})"


class AppliedCursor(models.Model):
    """How far a subscriber's installation has applied a feed: applying an entry and moving this cursor
    happen in one transaction, so an entry delivered twice changes nothing the second time."""

    installation = models.OneToOneField(
        "marketplace.Installation", on_delete=models.CASCADE, related_name="feed_cursor"
    )
    feed = models.ForeignKey(Feed, on_delete=models.CASCADE, related_name="applied_cursors")
    seq = models.PositiveBigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.installation_id} at {self.feed_id}#{self.seq}"


class DestinationKind(models.TextChoices):
    VAULT = "vault", "Subscriber's vault"
    WEBHOOK = "webhook", "Webhook"
    MIP = "mip", "MIP peer inbox"


class CircuitState(models.TextChoices):
    CLOSED = "closed", "Closed"
    OPEN = "open", "Open"
    HALF_OPEN = "half_open", "Half open (probing)"


class Destination(models.Model):
    """Where deliveries go, with its circuit breaker and the lease a worker holds while it drains it
    (one worker per destination at a time keeps its deliveries in order)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=16, choices=DestinationKind.choices)
    subscription = models.ForeignKey(
        Subscription, null=True, blank=True, on_delete=models.CASCADE, related_name="destinations"
    )
    url = models.CharField(max_length=2000, blank=True)
    active = models.BooleanField(default=True)
    # Circuit breaker
    circuit_state = models.CharField(max_length=16, choices=CircuitState.choices, default=CircuitState.CLOSED)
    consecutive_failures = models.PositiveIntegerField(default=0)
    circuit_opens = models.PositiveIntegerField(default=0)  # times opened in a row (the wait grows)
    circuit_retry_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_failure_at = models.DateTimeField(null=True, blank=True)
    # Lease: the worker draining this destination now
    lease_owner = models.CharField(max_length=64, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    meta = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "kind"],
                condition=Q(subscription__isnull=False),
                name="uniq_destination_per_subscription_kind",
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} destination {self.id}"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    DELIVERED = "delivered", "Delivered"
    DEAD = "dead", "Dead letter"
    CANCELLED = "cancelled", "Cancelled"


class Delivery(models.Model):
    """One entry (or message) to one destination. `seq` orders a destination's deliveries: the engine
    never sends a later one before an earlier one that is still pending."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    destination = models.ForeignKey(Destination, on_delete=models.CASCADE, related_name="deliveries")
    entry = models.ForeignKey(
        FeedEntry, null=True, blank=True, on_delete=models.PROTECT, related_name="deliveries"
    )
    event_type = models.CharField(max_length=64)
    payload = models.JSONField(null=True, blank=True)  # messages that are not feed entries (MIP)
    seq = models.PositiveBigIntegerField()
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    dead_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["destination", "entry"],
                condition=Q(entry__isnull=False),
                name="uniq_delivery_per_destination_entry",
            )
        ]
        indexes = [
            models.Index(fields=["destination", "status", "seq"], name="delivery_dest_status_seq"),
            models.Index(fields=["status", "next_attempt_at"], name="delivery_status_due"),
        ]

    def __str__(self) -> str:
        return f"delivery {self.id} ({self.status})"


class DeliveryAttempt(models.Model):
    """Every attempt: when, what came back, how long it took."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveIntegerField()
    at = models.DateTimeField()
    outcome = models.CharField(max_length=16)  # delivered | retry | dead | gone | circuit_open
    status_code = models.PositiveIntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)
    duration_ms = models.FloatField(default=0.0)
    response_excerpt = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["delivery", "number"]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.delivery_id}: {self.outcome}"
