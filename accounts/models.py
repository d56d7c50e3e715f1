"""Tenancy: users, organizations with roles, API tokens and the namespaces memory lives in."""

from __future__ import annotations

import uuid

from django.contrib.auth.models import AbstractUser
from django.db import models
from django.db.models import Q


class User(AbstractUser):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    email = models.EmailField(blank=True)


class Organization(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    members = models.ManyToManyField(User, through="Membership", related_name="organizations")

    def __str__(self) -> str:
        return self.slug


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"
    VIEWER = "viewer", "Viewer"


class Membership(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "user"], name="uniq_membership")]

    def __str__(self) -> str:
        return f"{self.user_id}@{self.organization_id}:{self.role}"


class TokenScope(models.TextChoices):
    MEMORIES_READ = "memories:read", "Read memories"
    MEMORIES_WRITE = "memories:write", "Write memories"
    GOVERNANCE = "governance", "Governance (audit, lifecycle)"
    MARKETPLACE = "marketplace", "Marketplace (buy, install, publish)"
    INFERENCE = "inference", "Inference (chat completions)"
    FEEDS = "feeds", "Feeds (subscribe, follow updates, deliveries)"
    ACCOUNT = "account", "Account (tokens, organizations, members, invitations, namespaces)"


ALL_SCOPES = [s.value for s in TokenScope]


class ApiToken(models.Model):
    """An API token. Only its SHA-256 is stored; the clear token is shown once, at creation."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, db_index=True)
    key_sha256 = models.CharField(max_length=64, unique=True)
    scopes = models.JSONField(default=list)  # empty: no scopes at all
    # The token that minted this one (None: made in a browser session or on the command line). A minted
    # token holds a subset of its parent's scopes, expires no later than it and is revoked with it.
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class InvitationStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    ACCEPTED = "accepted", "Accepted"
    DECLINED = "declined", "Declined"
    REVOKED = "revoked", "Revoked"


class Invitation(models.Model):
    """An organization's offer of membership. Membership widens what the invitee's searches and chats
    read and puts their reads into the organization's audit log, so it starts only when they accept."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="invitations")
    invitee = models.ForeignKey(User, on_delete=models.CASCADE, related_name="invitations")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    invited_by = models.ForeignKey(User, null=True, on_delete=models.SET_NULL, related_name="+")
    status = models.CharField(
        max_length=16, choices=InvitationStatus.choices, default=InvitationStatus.PENDING
    )
    created_at = models.DateTimeField(auto_now_add=True)
    responded_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "invitee"],
                condition=Q(status="pending"),
                name="uniq_pending_invitation",
            )
        ]

    def __str__(self) -> str:
        return f"invitation {self.invitee_id}@{self.organization_id}:{self.role} ({self.status})"


class NamespaceKind(models.TextChoices):
    USER = "user", "User-private"
    ORG = "org", "Organization"
    PUBLISHER = "publisher", "Publisher"
    INSTALLATION = "installation", "Installation"
    SHARED = "shared", "Shared"
    CATALOG = "catalog", "Marketplace catalog (listings in the search index; never a memory source)"


class Namespace(models.Model):
    """Where memories live. The key (`kind:slug`) is what API callers name; the id is the index partition."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    key = models.CharField(max_length=160, unique=True)
    kind = models.CharField(max_length=16, choices=NamespaceKind.choices)
    title = models.CharField(max_length=200, blank=True)
    owner_user = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.CASCADE, related_name="namespaces"
    )
    organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.CASCADE, related_name="namespaces"
    )
    # Non-empty: nobody reads this namespace until it is cleared (an installation whose licence expired,
    # was refunded or revoked, or that was uninstalled). The reason is what a refused caller is told.
    suspended_reason = models.CharField(max_length=300, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(
                    Q(owner_user__isnull=False, organization__isnull=True)
                    | Q(owner_user__isnull=True, organization__isnull=False)
                ),
                name="namespace_has_one_owner",
            ),
        ]

    def __str__(self) -> str:
        return self.key


class NamespaceJoin(models.Model):
    """A user's explicit choice to read a `shared:` namespace someone else owns. Without it the namespace
    is in none of the user's searches, lists, chats or pages: anyone can create a shared namespace, so
    reading every one of them by default would let anyone place text in everyone's prompts."""

    namespace = models.ForeignKey(Namespace, on_delete=models.CASCADE, related_name="joins")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="namespace_joins")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["namespace", "user"], name="uniq_namespace_join")]

    def __str__(self) -> str:
        return f"{self.user_id} joined {self.namespace_id}"
