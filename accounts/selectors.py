from __future__ import annotations

import hashlib

from django.db.models import Q, QuerySet
from django.utils import timezone

from accounts.models import ApiToken, Membership, Namespace, Organization, User


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


def membership_role(*, user: User, organization_id) -> str | None:  # type: ignore[no-untyped-def]
    m = Membership.objects.filter(user=user, organization_id=organization_id).only("role").first()
    return m.role if m else None


def organization_list(*, user: User) -> QuerySet[Organization]:
    return Organization.objects.filter(memberships__user=user).distinct().order_by("slug")


def namespace_get_by_key(*, key: str) -> Namespace | None:
    return Namespace.objects.select_related("organization", "owner_user").filter(key=key).first()
