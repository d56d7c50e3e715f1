from __future__ import annotations

import hashlib

from django.db.models import Q, QuerySet
from django.utils import timezone

from accounts.models import (
    ApiToken,
    Invitation,
    InvitationStatus,
    Membership,
    NamespaceJoin,
    Organization,
    Role,
    User,
)
from core.errors import PermissionDenied


def token_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def api_token_lookup(*, raw: str) -> ApiToken | None:
    now = timezone.now()
    return (
        ApiToken.objects.select_related("user")
        .filter(key_sha256=token_hash(raw), revoked_at__isnull=True)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        .first()
    )


def api_token_list(*, user: User) -> QuerySet[ApiToken]:
    return ApiToken.objects.filter(user=user).order_by("-created_at")


def organization_list(*, user: User) -> QuerySet[Organization]:
    return Organization.objects.filter(memberships__user=user).distinct().order_by("slug")


def invitation_list_received(*, user: User) -> QuerySet[Invitation]:
    """The user's pending invitations (those they can accept or decline)."""
    return (
        Invitation.objects.filter(invitee=user, status=InvitationStatus.PENDING)
        .select_related("organization", "invitee", "invited_by")
        .order_by("-created_at")
    )


def invitation_list_for_org(*, actor: User, organization: Organization) -> QuerySet[Invitation]:
    """Pending invitations of an organization: who is about to join is for its owners and admins."""
    role = (
        Membership.objects.filter(organization=organization, user=actor)
        .values_list("role", flat=True)
        .first()
    )
    if role not in (Role.OWNER, Role.ADMIN):
        raise PermissionDenied("Only the organization's owners and admins see its invitations.")
    return (
        Invitation.objects.filter(organization=organization, status=InvitationStatus.PENDING)
        .select_related("organization", "invitee", "invited_by")
        .order_by("-created_at")
    )


def namespace_join_list(*, user: User) -> QuerySet[NamespaceJoin]:
    return NamespaceJoin.objects.filter(user=user).select_related("namespace").order_by("namespace__key")
