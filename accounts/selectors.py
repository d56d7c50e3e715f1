from __future__ import annotations

import hashlib

from django.db.models import Q, QuerySet
from django.utils import timezone

from accounts.models import ApiToken, Organization, User


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
