"""Writes for tenancy: users, organizations, memberships, API tokens, namespaces."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify

from accounts.models import (
    ALL_SCOPES,
    ApiToken,
    Membership,
    Namespace,
    NamespaceKind,
    Organization,
    Role,
    User,
)
from accounts.selectors import token_hash
from core.errors import ApplicationError, Conflict, NotFound, PermissionDenied

TOKEN_PREFIX = "mh_"  # noqa: S105 - a public marker, not a secret


@transaction.atomic
def user_create(*, username: str, password: str | None = None, email: str = "") -> User:
    if User.objects.filter(username=username).exists():
        raise Conflict(f"Username '{username}' is taken.")
    user = User(username=username, email=email)
    if password:
        user.set_password(password)
    else:
        user.set_unusable_password()
    user.full_clean(exclude=["password"])
    user.save()
    namespace_create(kind=NamespaceKind.USER, slug=username, owner_user=user, title=f"{username} (private)")
    return user


@transaction.atomic
def organization_create(*, owner: User, slug: str, name: str = "") -> Organization:
    if Organization.objects.filter(slug=slug).exists():
        raise Conflict(f"Organization '{slug}' exists.")
    org = Organization(slug=slug, name=name or slug)
    org.full_clean()
    org.save()
    Membership.objects.create(organization=org, user=owner, role=Role.OWNER)
    namespace_create(kind=NamespaceKind.ORG, slug=slug, organization=org, title=org.name)
    return org


def _require_org_admin(*, actor: User, org: Organization) -> None:
    role = Membership.objects.filter(organization=org, user=actor).values_list("role", flat=True).first()
    if role is None:
        raise NotFound("Organization not found.")
    if role not in (Role.OWNER, Role.ADMIN):
        raise PermissionDenied("Only the organization's owners and admins manage members.")


@transaction.atomic
def membership_set(*, actor: User, org: Organization, username: str, role: str) -> Membership:
    _require_org_admin(actor=actor, org=org)
    if role not in Role.values:
        raise ApplicationError(f"Unknown role '{role}'; expected one of {', '.join(Role.values)}.")
    user = User.objects.filter(username=username).first()
    if user is None:
        raise NotFound(f"User '{username}' not found.")
    actor_role = Membership.objects.get(organization=org, user=actor).role
    if role == Role.OWNER and actor_role != Role.OWNER:
        raise PermissionDenied("Only an owner can make another owner.")
    membership, _ = Membership.objects.update_or_create(organization=org, user=user, defaults={"role": role})
    return membership


@transaction.atomic
def membership_remove(*, actor: User, org: Organization, username: str) -> None:
    _require_org_admin(actor=actor, org=org)
    membership = Membership.objects.filter(organization=org, user__username=username).first()
    if membership is None:
        raise NotFound(f"'{username}' is not a member.")
    if membership.role == Role.OWNER and org.memberships.filter(role=Role.OWNER).count() == 1:
        raise Conflict("An organization keeps at least one owner.")
    membership.delete()


def api_token_create(
    *, user: User, name: str, scopes: list[str] | None = None, expires_at: datetime | None = None
) -> tuple[ApiToken, str]:
    """Returns the token row and the clear token, which is never stored and shown only now."""
    scopes = list(dict.fromkeys(scopes or ALL_SCOPES))
    unknown = [s for s in scopes if s not in ALL_SCOPES]
    if unknown:
        raise ApplicationError(f"Unknown scope '{unknown[0]}'; expected some of {', '.join(ALL_SCOPES)}.")
    if expires_at is not None and expires_at <= timezone.now():
        raise ApplicationError("'expires_at' must be in the future.")
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user,
        name=name,
        prefix=raw[:10],
        key_sha256=token_hash(raw),
        scopes=scopes,
        expires_at=expires_at,
    )
    return token, raw


def api_token_revoke(*, user: User, token_id: Any) -> ApiToken:
    token = ApiToken.objects.filter(user=user, pk=token_id).first()
    if token is None:
        raise NotFound("Token not found.")
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    return token


def namespace_create(
    *,
    kind: str,
    slug: str,
    owner_user: User | None = None,
    organization: Organization | None = None,
    title: str = "",
) -> Namespace:
    if kind not in NamespaceKind.values:
        raise ApplicationError(f"Unknown namespace kind '{kind}'.")
    if (owner_user is None) == (organization is None):
        raise ApplicationError("A namespace has exactly one owner: a user or an organization.")
    ns = Namespace(
        key=f"{kind}:{slug}", kind=kind, owner_user=owner_user, organization=organization, title=title or slug
    )
    try:
        with transaction.atomic():
            ns.save()
    except IntegrityError as exc:
        raise Conflict(f"Namespace '{ns.key}' exists.") from exc
    return ns


def namespace_create_for(
    *, actor: User, kind: str, slug: str, organization_slug: str | None = None, title: str = ""
) -> Namespace:
    """API-facing: users create shared or publisher namespaces for themselves or an org they admin."""
    if kind not in (NamespaceKind.SHARED, NamespaceKind.PUBLISHER, NamespaceKind.ORG):
        raise ApplicationError(
            "You can create 'shared', 'publisher' or 'org' namespaces; user and "
            "installation namespaces are made for you."
        )
    if not slug or slugify(slug) != slug:
        raise ApplicationError("Namespace slug may hold lowercase letters, digits, '-' and '_' only.")
    if organization_slug:
        org = Organization.objects.filter(slug=organization_slug).first()
        if org is None:
            raise NotFound(f"Organization '{organization_slug}' not found.")
        _require_org_admin(actor=actor, org=org)
        return namespace_create(kind=kind, slug=slug, organization=org, title=title)
    if kind == NamespaceKind.ORG:
        raise ApplicationError("An 'org' namespace needs 'organization'.")
    return namespace_create(kind=kind, slug=slug, owner_user=actor, title=title)
