"""The MemStore: publishers, listings, pack content, immutable releases, licences, orders, installs.

A pack's content is explicit (`PackItem` rows pointing at MemCubes in the publisher's namespace), never a
tag. A release freezes the exact MemCube versions it ships into a canonical (RFC 8785) manifest signed
with the instance key; `release_id` is the SHA-256 of that manifest. A licence, granted only from a
verified payment event (or for free packs, on request), is what lets a user or an organization install
and use a pack; its terms (seats, expiry, quota, forms, federation) are enforced where memory is used.
An installation copies the release into the holder's own read-only `installation:` namespace with a
per-installation watermark.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class PublisherRole(models.TextChoices):
    OWNER = "owner", "Owner"  # manages the profile and its members, publishes
    PUBLISHER = "publisher", "Publisher"  # authors content and publishes releases


class Publisher(models.Model):
    """A publisher profile, for a user or an organization. Its memories live in `publisher:<slug>`."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    slug = models.SlugField(max_length=64, unique=True)
    display_name = models.CharField(max_length=200)
    bio = models.TextField(blank=True)
    website = models.URLField(blank=True)
    organization = models.OneToOneField(
        "accounts.Organization", null=True, blank=True, on_delete=models.PROTECT, related_name="publisher"
    )
    owner_user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="publishers_owned",
    )
    namespace = models.OneToOneField("accounts.Namespace", on_delete=models.PROTECT, related_name="publisher")
    # Payouts: the Stripe Connect account that receives destination charges (empty: platform keeps all).
    payout_account_id = models.CharField(max_length=64, blank=True)
    fee_basis_points = models.PositiveIntegerField(null=True, blank=True)  # None: the platform default
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(
                    Q(owner_user__isnull=False, organization__isnull=True)
                    | Q(owner_user__isnull=True, organization__isnull=False)
                ),
                name="publisher_has_one_owner",
            )
        ]

    def __str__(self) -> str:
        return self.slug


class PublisherMember(models.Model):
    """Who may publish for a publisher (besides a user publisher's owner and an org's owners/admins)."""

    publisher = models.ForeignKey(Publisher, on_delete=models.CASCADE, related_name="members")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="publishing")
    role = models.CharField(max_length=16, choices=PublisherRole.choices, default=PublisherRole.PUBLISHER)
    added_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["publisher", "user"], name="uniq_publisher_member")]

    def __str__(self) -> str:
        return f"{self.user_id} publishes for {self.publisher_id} ({self.role})"


class PriceModel(models.TextChoices):
    FREE = "free", "Free"
    ONE_TIME = "one_time", "One-time"
    SUBSCRIPTION = "subscription", "Monthly subscription"
    METERED = "metered", "Metered (per 1,000 retrievals)"


class Form(models.TextChoices):
    """How a pack may be put into a model."""

    PLAINTEXT = "plaintext", "Plaintext (retrieved into the prompt)"
    KV = "kv", "KV cache"
    LORA = "lora", "LoRA adapter"


ALL_FORMS = [f.value for f in Form]


class Pack(models.Model):
    """A listing and its terms. The content is `items`; what buyers get is a `PackRelease`."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    publisher = models.ForeignKey(Publisher, on_delete=models.PROTECT, related_name="packs")
    slug = models.SlugField(max_length=80)
    # Listing
    title = models.CharField(max_length=200)
    summary = models.CharField(max_length=300, blank=True)
    description = models.TextField(blank=True)  # kept for older clients: the summary's long form
    readme = models.TextField(blank=True)  # Markdown, rendered safely on the pack page
    category = models.SlugField(max_length=64, blank=True)
    tags = models.JSONField(default=list, blank=True)
    cover_image = models.CharField(max_length=500, blank=True)  # storage path of a checked image upload
    base_models = models.JSONField(default=list, blank=True)  # base models its KV and LoRA parts support
    listed = models.BooleanField(default=True)
    # Price
    price_model = models.CharField(max_length=16, choices=PriceModel.choices, default=PriceModel.FREE)
    price_cents = models.PositiveIntegerField(default=0)  # one-time, per month, or per 1,000 retrievals
    currency = models.CharField(max_length=3, default="usd")
    # Licence terms every licence of this pack is granted with
    licence = models.CharField(max_length=64, default="memhub-standard-1.0")
    seats = models.PositiveIntegerField(default=1)  # seats per licence (an organization assigns them)
    seat_limit = models.PositiveIntegerField(null=True, blank=True)  # seats on sale in total (None: no cap)
    seats_sold = models.PositiveIntegerField(default=0)
    licence_days = models.PositiveIntegerField(null=True, blank=True)  # None: no expiry (or: the period)
    quota_per_period = models.PositiveIntegerField(null=True, blank=True)  # retrievals; None: unlimited
    forms = models.JSONField(default=list, blank=True)  # allowed forms; [] means all
    federation_allowed = models.BooleanField(default=False)
    # Gateway objects kept for this price (Stripe product/price ids)
    gateway_product_id = models.CharField(max_length=64, blank=True)
    gateway_price_id = models.CharField(max_length=64, blank=True)
    # Aggregates kept for browsing (sorting by rating and installs without a scan)
    rating_avg = models.FloatField(default=0.0)
    rating_count = models.PositiveIntegerField(default=0)
    install_count = models.PositiveIntegerField(default=0)
    catalog_cube_id = models.UUIDField(null=True, blank=True)  # the listing's entry in the search index
    meta = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["publisher", "slug"], name="uniq_pack_slug"),
            models.CheckConstraint(
                condition=Q(seat_limit__isnull=True) | Q(seats_sold__lte=models.F("seat_limit")),
                name="pack_seats_sold_within_limit",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.publisher.slug}/{self.slug}"

    @property
    def price_display(self) -> str:
        """The price as a buyer reads it: 'free', or the amount in major units with the currency."""
        if self.price_model == PriceModel.FREE or not self.price_cents:
            return "free"
        amount = f"{self.price_cents / 100:.2f} {self.currency.upper()}"
        suffix = {PriceModel.SUBSCRIPTION: " / month", PriceModel.METERED: " / 1,000 retrievals"}
        return amount + suffix.get(self.price_model, "")  # type: ignore[call-overload]

    @property
    def is_free(self) -> bool:
        return self.price_model == PriceModel.FREE or not self.price_cents


class UploadKind(models.TextChoices):
    JSONL = "jsonl", "JSONL of memories"
    DOCUMENT = "document", "Document (Markdown, text, PDF, HTML)"
    ADAPTER = "adapter", "LoRA adapter"
    COVER = "cover", "Cover image"


class UploadStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    PROCESSING = "processing", "Processing"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class PackUpload(models.Model):
    """A file a publisher sent for a pack, and what became of it (memories created, or why not)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    pack = models.ForeignKey(Pack, on_delete=models.CASCADE, related_name="uploads")
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    kind = models.CharField(max_length=16, choices=UploadKind.choices)
    filename = models.CharField(max_length=255)
    content_type = models.CharField(max_length=100, blank=True)
    size_bytes = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64)
    path = models.CharField(max_length=500, blank=True)  # where the checked file is stored
    status = models.CharField(max_length=16, choices=UploadStatus.choices, default=UploadStatus.PENDING)
    error = models.TextField(blank=True)
    result = models.JSONField(default=dict, blank=True)  # chunks, memories created, adapter config, ...
    options = models.JSONField(default=dict, blank=True)  # chunking budget, base model, tags, ...
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.kind} upload {self.filename} ({self.status})"


class PackItem(models.Model):
    """One MemCube that is part of a pack's content (plaintext, KV or LoRA)."""

    pack = models.ForeignKey(Pack, on_delete=models.CASCADE, related_name="items")
    cube = models.ForeignKey("vault.MemCube", on_delete=models.CASCADE, related_name="pack_items")
    upload = models.ForeignKey(
        PackUpload, null=True, blank=True, on_delete=models.SET_NULL, related_name="items"
    )
    position = models.PositiveIntegerField(default=0)
    added_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["pack", "cube"], name="uniq_pack_item")]
        ordering = ["position", "id"]

    def __str__(self) -> str:
        return f"item {self.cube_id} of {self.pack_id}"


class EvaluationQuestion(models.Model):
    """A question the publisher says the pack answers, with the memories that answer it (provenance ids):
    the pack card reports recall@10 on these through the vault's own search."""

    pack = models.ForeignKey(Pack, on_delete=models.CASCADE, related_name="evaluation_questions")
    question = models.TextField()
    answer_provenance_ids = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.question[:60]


class PackRelease(models.Model):
    """Immutable once created: the canonical manifest lists every item and its content hash."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    pack = models.ForeignKey(Pack, on_delete=models.PROTECT, related_name="releases")
    version = models.CharField(max_length=40)  # semver
    notes = models.TextField(blank=True)  # the changelog, Markdown
    manifest = models.JSONField()
    manifest_sha256 = models.CharField(max_length=64)  # the release id: SHA-256 of the canonical manifest
    signature = models.CharField(max_length=200, blank=True)  # Ed25519 over the canonical bytes, base64url
    signing_key_id = models.CharField(max_length=64, blank=True)
    card = models.JSONField(default=dict, blank=True)  # computed by the platform, never typed
    memory_versions = models.ManyToManyField("vault.MemCubeVersion", related_name="releases")
    yanked = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["pack", "version"], name="uniq_release_version")]

    def __str__(self) -> str:
        return f"{self.pack_id}@{self.version}"

    @property
    def release_id(self) -> str:
        return self.manifest_sha256


class LicenceStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    PAST_DUE = "past_due", "Past due (grace period)"
    SUSPENDED = "suspended", "Suspended (payment failed)"
    EXPIRED = "expired", "Expired"
    CANCELLED = "cancelled", "Cancelled"
    REFUNDED = "refunded", "Refunded"
    REVOKED = "revoked", "Revoked"


USABLE_LICENCE_STATES = (LicenceStatus.ACTIVE, LicenceStatus.PAST_DUE)


class Licence(models.Model):
    """The right to install and use a pack, held by a user or an organization, on the pack's terms."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    pack = models.ForeignKey(Pack, on_delete=models.PROTECT, related_name="licences")
    holder_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="licences"
    )
    holder_org = models.ForeignKey(
        "accounts.Organization", null=True, blank=True, on_delete=models.CASCADE, related_name="licences"
    )
    status = models.CharField(max_length=16, choices=LicenceStatus.choices, default=LicenceStatus.ACTIVE)
    price_model = models.CharField(max_length=16, choices=PriceModel.choices)
    licence = models.CharField(max_length=64)  # the terms' name at grant time
    seats = models.PositiveIntegerField(default=1)
    quota_per_period = models.PositiveIntegerField(null=True, blank=True)
    forms = models.JSONField(default=list, blank=True)  # [] means all
    federation_allowed = models.BooleanField(default=False)
    starts_at = models.DateTimeField()
    expires_at = models.DateTimeField(null=True, blank=True)
    grace_until = models.DateTimeField(null=True, blank=True)
    gateway_subscription_id = models.CharField(max_length=64, blank=True)
    status_reason = models.CharField(max_length=300, blank=True)
    meta = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(
                    Q(holder_user__isnull=False, holder_org__isnull=True)
                    | Q(holder_user__isnull=True, holder_org__isnull=False)
                ),
                name="licence_has_one_holder",
            ),
        ]

    def __str__(self) -> str:
        return f"licence {self.id} ({self.status})"


class SeatAssignment(models.Model):
    """An organization licence's seat, given by an org admin to a member."""

    licence = models.ForeignKey(Licence, on_delete=models.CASCADE, related_name="seat_assignments")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="seats")
    assigned_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["licence", "user"], name="uniq_seat_per_user")]

    def __str__(self) -> str:
        return f"seat of {self.licence_id} for {self.user_id}"


class LicenceUsage(models.Model):
    """Metered use of a licence in one period (retrievals drive quota and metered billing)."""

    licence = models.ForeignKey(Licence, on_delete=models.CASCADE, related_name="usage")
    period_start = models.DateTimeField()
    retrievals = models.PositiveBigIntegerField(default=0)
    chats = models.PositiveBigIntegerField(default=0)
    kv_uses = models.PositiveBigIntegerField(default=0)
    adapter_uses = models.PositiveBigIntegerField(default=0)
    billed_units = models.PositiveBigIntegerField(default=0)  # metered: thousands already invoiced
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["licence", "period_start"], name="uniq_usage_period")]

    def __str__(self) -> str:
        return f"usage of {self.licence_id} from {self.period_start:%Y-%m-%d}"


class OrderStatus(models.TextChoices):
    CREATED = "created", "Created"
    PENDING = "pending", "Awaiting payment"
    PAID = "paid", "Paid"
    FAILED = "failed", "Payment failed"
    CANCELLED = "cancelled", "Cancelled"
    REFUNDED = "refunded", "Refunded"
    DISPUTED = "disputed", "Disputed"
    REJECTED = "rejected", "Rejected (sold out)"


class Order(models.Model):
    """A purchase; its full state history is `events`. Created by our endpoint (Idempotency-Key)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    pack = models.ForeignKey(Pack, on_delete=models.PROTECT, related_name="orders")
    buyer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="orders")
    buyer_org = models.ForeignKey(
        "accounts.Organization", null=True, blank=True, on_delete=models.PROTECT, related_name="orders"
    )
    status = models.CharField(max_length=16, choices=OrderStatus.choices, default=OrderStatus.CREATED)
    gateway = models.CharField(max_length=16)  # stripe | ledger
    price_model = models.CharField(max_length=16, choices=PriceModel.choices)
    seats = models.PositiveIntegerField(default=1)
    amount_cents = models.PositiveIntegerField()
    currency = models.CharField(max_length=3)
    fee_cents = models.PositiveIntegerField(default=0)  # the platform's application fee
    refunded_cents = models.PositiveIntegerField(default=0)
    checkout_session_id = models.CharField(max_length=100, blank=True, db_index=True)
    checkout_url = models.URLField(max_length=1000, blank=True)
    payment_intent_id = models.CharField(max_length=100, blank=True, db_index=True)
    subscription_id = models.CharField(max_length=100, blank=True, db_index=True)
    idempotency_key = models.CharField(max_length=255, blank=True)
    request_sha256 = models.CharField(max_length=64, blank=True)
    licence = models.ForeignKey(
        Licence, null=True, blank=True, on_delete=models.SET_NULL, related_name="orders"
    )
    meta = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["buyer", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="uniq_order_idempotency_key",
            )
        ]

    def __str__(self) -> str:
        return f"order {self.id} ({self.status})"

    @property
    def amount_display(self) -> str:
        return f"{self.amount_cents / 100:.2f} {self.currency.upper()}"


class OrderEvent(models.Model):
    """One state change of an order, with what caused it (a gateway event id, a user, a sweep)."""

    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="events")
    from_status = models.CharField(max_length=16, blank=True)
    to_status = models.CharField(max_length=16)
    reason = models.CharField(max_length=300, blank=True)
    gateway_event_id = models.CharField(max_length=100, blank=True)
    amount_cents = models.IntegerField(default=0)  # money moved by this step (a refund is negative)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.order_id}: {self.from_status} -> {self.to_status}"


class PaymentEvent(models.Model):
    """A verified gateway webhook event, recorded in the same transaction as the work it caused: a
    duplicate delivery finds its id here and does nothing."""

    gateway = models.CharField(max_length=16)
    event_id = models.CharField(max_length=100)
    type = models.CharField(max_length=100)
    object_id = models.CharField(max_length=100, blank=True)
    outcome = models.CharField(max_length=300, blank=True)
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["gateway", "event_id"], name="uniq_payment_event")]

    def __str__(self) -> str:
        return f"{self.gateway} {self.type} {self.event_id}"


class LedgerObject(models.Model):
    """The built-in test ledger's own store: checkout sessions, payments, subscriptions, refunds, as a
    gateway would keep them (so the same webhook path re-reads the object behind each event)."""

    id = models.CharField(primary_key=True, max_length=64)  # cs_..., pi_..., sub_..., re_...
    kind = models.CharField(max_length=32)
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.kind} {self.id}"


class Review(models.Model):
    """A rating with a review, by a licence holder: one per licence, editable."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    pack = models.ForeignKey(Pack, on_delete=models.CASCADE, related_name="reviews")
    licence = models.OneToOneField(Licence, on_delete=models.CASCADE, related_name="review")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="reviews")
    rating = models.PositiveSmallIntegerField()
    title = models.CharField(max_length=200, blank=True)
    body = models.TextField(blank=True)
    hidden = models.BooleanField(default=False)  # hidden by moderation after reports
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(rating__gte=1, rating__lte=5), name="review_rating_1_to_5")
        ]

    def __str__(self) -> str:
        return f"review {self.id} ({self.rating}/5)"


class ReviewReport(models.Model):
    review = models.ForeignKey(Review, on_delete=models.CASCADE, related_name="reports")
    reporter = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    reason = models.CharField(max_length=500)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["review", "reporter"], name="uniq_review_report")]

    def __str__(self) -> str:
        return f"report on {self.review_id}"


class InstallationStatus(models.TextChoices):
    PENDING = "pending", "Queued"
    INSTALLING = "installing", "Installing"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"
    REMOVED = "removed", "Removed"


class Installation(models.Model):
    """A licensed release installed into a user's (or one of their agents') workspace."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    pack = models.ForeignKey(Pack, null=True, on_delete=models.PROTECT, related_name="installations")
    release = models.ForeignKey(PackRelease, on_delete=models.PROTECT, related_name="installations")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="installations")
    workspace = models.CharField(max_length=64, default="", blank=True)  # "" is the user's; else an agent
    licence = models.ForeignKey(
        Licence, null=True, blank=True, on_delete=models.SET_NULL, related_name="installations"
    )
    namespace = models.OneToOneField(
        "accounts.Namespace", on_delete=models.PROTECT, related_name="installation"
    )
    watermark_id = models.CharField(max_length=64)
    status = models.CharField(
        max_length=16, choices=InstallationStatus.choices, default=InstallationStatus.READY
    )
    progress = models.JSONField(default=dict, blank=True)  # {"step": ..., "done": n, "total": n}
    error = models.TextField(blank=True)
    previous_release = models.ForeignKey(
        PackRelease, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_diff = models.JSONField(default=dict, blank=True)  # what the last upgrade added/changed/removed
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    removed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["pack", "user", "workspace"],
                condition=Q(removed_at__isnull=True),
                name="uniq_live_install_per_workspace",
            )
        ]

    def __str__(self) -> str:
        return f"installation {self.id}"


class Annotation(models.Model):
    """A user's own note on an installed memory, keyed by provenance so it survives upgrades."""

    installation = models.ForeignKey(Installation, on_delete=models.CASCADE, related_name="annotations")
    provenance_id = models.UUIDField()
    note = models.TextField(blank=True)
    tags = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["installation", "provenance_id"], name="uniq_annotation")
        ]

    def __str__(self) -> str:
        return f"note on {self.provenance_id}"
