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
    Invitation,
    InvitationStatus,
    Membership,
    Namespace,
    NamespaceJoin,
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
    if (
        Organization.objects.filter(slug=slug).exists()
        or Namespace.objects.filter(key=f"org:{slug}").exists()
    ):
        raise Conflict(f"Organization '{slug}' exists.", extra={"field": "slug"})
    org = Organization(slug=slug, name=name or slug)
    org.full_clean()
    org.save()
    Membership.objects.create(organization=org, user=owner, role=Role.OWNER)
    namespace_create(kind=NamespaceKind.ORG, slug=slug, organization=org, title=org.name)
    return org


def _role_of(*, user: User, org: Organization) -> str | None:
    return Membership.objects.filter(organization=org, user=user).values_list("role", flat=True).first()


def _require_org_admin(*, actor: User, org: Organization) -> str:
    role = _role_of(user=actor, org=org)
    if role is None:
        raise NotFound("Organization not found.")
    if role not in (Role.OWNER, Role.ADMIN):
        raise PermissionDenied("Only the organization's owners and admins manage members.")
    return role


def _keep_an_owner(*, org: Organization, membership: Membership) -> None:
    """Refuse a change that would leave the organization without an owner."""
    if membership.role != Role.OWNER:
        return
    # Lock the owners' rows: two owners stepping down at once must not both succeed.
    owners = Membership.objects.select_for_update().filter(organization=org, role=Role.OWNER)
    if len(owners.values_list("pk", flat=True)) <= 1:
        raise Conflict("An organization keeps at least one owner: make another member owner first.")


@transaction.atomic
def membership_set(*, actor: User, org: Organization, username: str, role: str) -> Membership:
    """Change an existing member's role. People join only by accepting an invitation."""
    actor_role = _require_org_admin(actor=actor, org=org)
    if role not in Role.values:
        raise ApplicationError(
            f"Unknown role '{role}'; expected one of {', '.join(Role.values)}.", extra={"field": "role"}
        )
    membership = (
        Membership.objects.select_for_update()
        .select_related("user")
        .filter(organization=org, user__username=username)
        .first()
    )
    if membership is None:
        raise NotFound(
            f"'{username}' is not a member of '{org.slug}'; invite them with "
            f"POST /api/v1/orgs/{org.slug}/invitations."
        )
    if Role.OWNER in (role, membership.role) and actor_role != Role.OWNER:
        raise PermissionDenied("Only an owner can make an owner or change an owner's role.")
    if membership.role == role:
        return membership
    _keep_an_owner(org=org, membership=membership)
    membership.role = role
    membership.save(update_fields=["role"])
    return membership


@transaction.atomic
def membership_remove(*, actor: User, org: Organization, username: str) -> None:
    """Admins remove members (owners only remove owners); any member may leave."""
    leaving = username == actor.username
    if leaving:
        if _role_of(user=actor, org=org) is None:
            raise NotFound("Organization not found.")
        actor_role = ""
    else:
        actor_role = _require_org_admin(actor=actor, org=org)
    membership = (
        Membership.objects.select_for_update().filter(organization=org, user__username=username).first()
    )
    if membership is None:
        raise NotFound(f"'{username}' is not a member.")
    if not leaving and membership.role == Role.OWNER and actor_role != Role.OWNER:
        raise PermissionDenied("Only an owner can remove an owner.")
    _keep_an_owner(org=org, membership=membership)
    membership.delete()


@transaction.atomic
def invitation_create(*, actor: User, org: Organization, username: str, role: str) -> Invitation:
    """Invite a user. Nothing changes for them until they accept; inviting again updates the role."""
    actor_role = _require_org_admin(actor=actor, org=org)
    if role not in Role.values:
        raise ApplicationError(
            f"Unknown role '{role}'; expected one of {', '.join(Role.values)}.", extra={"field": "role"}
        )
    if role == Role.OWNER and actor_role != Role.OWNER:
        raise PermissionDenied("Only an owner can invite an owner.")
    invitee = User.objects.filter(username=username, is_active=True).first()
    if invitee is None:
        raise NotFound(f"User '{username}' not found.", extra={"field": "username"})
    if Membership.objects.filter(organization=org, user=invitee).exists():
        raise Conflict(f"'{username}' is already a member of '{org.slug}'.", extra={"field": "username"})
    invitation = (
        Invitation.objects.select_for_update()
        .filter(organization=org, invitee=invitee, status=InvitationStatus.PENDING)
        .first()
    )
    if invitation is None:
        invitation = Invitation(organization=org, invitee=invitee, role=role, invited_by=actor)
    invitation.role = role
    invitation.invited_by = actor
    invitation.full_clean()
    invitation.save()
    return invitation


def _pending_invitation(*, invitation_id: Any, **filters: Any) -> Invitation:
    invitation = (
        Invitation.objects.select_for_update()
        .select_related("organization", "invitee")
        .filter(pk=invitation_id, **filters)
        .first()
    )
    if invitation is None:
        raise NotFound("Invitation not found.")
    if invitation.status != InvitationStatus.PENDING:
        raise Conflict(f"The invitation was already {invitation.status}.")
    return invitation


def _invitation_close(invitation: Invitation, status: str) -> None:
    invitation.status = status
    invitation.responded_at = timezone.now()
    invitation.save(update_fields=["status", "responded_at"])


@transaction.atomic
def invitation_revoke(*, actor: User, org: Organization, invitation_id: Any) -> Invitation:
    _require_org_admin(actor=actor, org=org)
    invitation = _pending_invitation(invitation_id=invitation_id, organization=org)
    _invitation_close(invitation, InvitationStatus.REVOKED)
    return invitation


@transaction.atomic
def invitation_accept(*, user: User, invitation_id: Any) -> Membership:
    invitation = _pending_invitation(invitation_id=invitation_id, invitee=user)
    membership, _ = Membership.objects.get_or_create(
        organization=invitation.organization, user=user, defaults={"role": invitation.role}
    )
    _invitation_close(invitation, InvitationStatus.ACCEPTED)
    return membership


@transaction.atomic
def invitation_decline(*, user: User, invitation_id: Any) -> Invitation:
    invitation = _pending_invitation(invitation_id=invitation_id, invitee=user)
    _invitation_close(invitation, InvitationStatus.DECLINED)
    return invitation


@transaction.atomic
def api_token_create(
    *,
    user: User,
    name: str,
    scopes: list[str] | None = None,
    expires_at: datetime | None = None,
    parent: ApiToken | None = None,
) -> tuple[ApiToken, str]:
    """Returns the token row and the clear token, which is never stored and shown only now.

    Without `parent` (a browser session, the command line) the token may hold any scopes, all by default.
    A token minted by another token (`parent`) holds only scopes its parent holds (its parent's by
    default) and expires no later than its parent."""
    if parent is not None and parent.user_id != user.pk:
        raise PermissionDenied("A token mints tokens only for its own user.")
    held = list(parent.scopes or []) if parent is not None else ALL_SCOPES
    scopes = list(dict.fromkeys(held if scopes is None else scopes))
    if not scopes:
        raise ApplicationError("A token needs at least one scope.", extra={"field": "scopes"})
    unknown = [s for s in scopes if s not in ALL_SCOPES]
    if unknown:
        raise ApplicationError(
            f"Unknown scope '{unknown[0]}'; expected some of {', '.join(ALL_SCOPES)}.",
            extra={"field": "scopes"},
        )
    beyond = [s for s in scopes if s not in held]
    if beyond:
        raise PermissionDenied(
            f"This API token lacks the '{beyond[0]}' scope, so it cannot grant it to a new token.",
            extra={"field": "scopes", "scope": beyond[0]},
        )
    now = timezone.now()
    if expires_at is not None and expires_at <= now:
        raise ApplicationError("'expires_at' must be in the future.", extra={"field": "expires_at"})
    if parent is not None and parent.expires_at is not None:
        if expires_at is None:
            expires_at = parent.expires_at
        elif expires_at > parent.expires_at:
            raise ApplicationError(
                f"'expires_at' may not be later than this API token's own expiry "
                f"({parent.expires_at.isoformat()}).",
                extra={"field": "expires_at"},
            )
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        user=user,
        name=name,
        prefix=raw[:10],
        key_sha256=token_hash(raw),
        scopes=scopes,
        expires_at=expires_at,
        parent=parent,
    )
    token.full_clean()
    token.save()
    return token, raw


@transaction.atomic
def api_token_revoke(*, user: User, token_id: Any) -> ApiToken:
    """Revoke a token and every token minted from it, directly or further down."""
    token = ApiToken.objects.filter(user=user, pk=token_id).first()
    if token is None:
        raise NotFound("Token not found.")
    now = timezone.now()
    ids, frontier = [token.pk], [token.pk]
    while frontier:
        frontier = list(ApiToken.objects.filter(parent_id__in=frontier).values_list("pk", flat=True))
        ids += frontier
    ApiToken.objects.filter(pk__in=ids, revoked_at__isnull=True).update(revoked_at=now)
    token.refresh_from_db()
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
    """API-facing: users create shared or publisher namespaces for themselves or an org they admin.

    `org:` and `publisher:` keys name organizations and publishers, so a caller must not be able to
    take a name before its organization or publisher exists: an `org:` or `publisher:` namespace made
    here is `<org-slug>.<suffix>` of an organization the caller administers. Organization and publisher
    slugs hold no '.', so such a key never collides with one made for an organization or publisher."""
    if kind not in (NamespaceKind.SHARED, NamespaceKind.PUBLISHER, NamespaceKind.ORG):
        raise ApplicationError(
            "You can create 'shared', 'publisher' or 'org' namespaces; user and "
            "installation namespaces are made for you.",
            extra={"field": "kind"},
        )
    org = None
    if organization_slug:
        org = Organization.objects.filter(slug=organization_slug).first()
        if org is None:
            raise NotFound(f"Organization '{organization_slug}' not found.")
        _require_org_admin(actor=actor, org=org)
    if kind == NamespaceKind.SHARED:
        if not slug or slugify(slug) != slug:
            raise ApplicationError(
                "Namespace slug may hold lowercase letters, digits, '-' and '_' only.",
                extra={"field": "slug"},
            )
    else:
        if org is None:
            raise ApplicationError(
                f"An '{kind}' namespace needs 'organization'.", extra={"field": "organization"}
            )
        head, dot, suffix = slug.partition(".")
        if head != org.slug or not dot or not suffix or slugify(suffix) != suffix:
            raise ApplicationError(
                f"An '{kind}' namespace slug is '{org.slug}.<suffix>' (the organization's slug, a dot, then "
                "lowercase letters, digits, '-' and '_').",
                extra={"field": "slug"},
            )
    if org is not None:
        return namespace_create(kind=kind, slug=slug, organization=org, title=title)
    return namespace_create(kind=kind, slug=slug, owner_user=actor, title=title)


@transaction.atomic
def namespace_join(*, user: User, namespace_key: str) -> NamespaceJoin:
    """Start reading someone's `shared:` namespace: from now on it is in the user's searches and chats."""
    ns = Namespace.objects.filter(key=namespace_key, kind=NamespaceKind.SHARED).first()
    if ns is None:
        raise NotFound(f"Shared namespace '{namespace_key}' not found.", extra={"field": "namespace"})
    join, _ = NamespaceJoin.objects.get_or_create(namespace=ns, user=user)
    return join


@transaction.atomic
def namespace_leave(*, user: User, namespace_key: str) -> None:
    deleted, _ = NamespaceJoin.objects.filter(user=user, namespace__key=namespace_key).delete()
    if not deleted:
        raise NotFound(f"You have not joined '{namespace_key}'.")
