"""Checks every marketplace service shares: the `marketplace` scope, and who may publish for whom."""

from __future__ import annotations

from accounts.models import Role, TokenScope
from core.errors import PermissionDenied
from governance.policy import Subject, SubjectKind
from marketplace.models import Publisher, PublisherMember, PublisherRole


def require_marketplace(actor: Subject) -> None:
    """403 naming the scope unless the caller's credentials hold `marketplace` (the platform always may)."""
    if actor.kind != SubjectKind.SYSTEM:
        actor.require_scope(TokenScope.MARKETPLACE.value)


def publisher_role(*, actor: Subject, publisher: Publisher) -> str | None:
    """The caller's role for this publisher: `owner` (a user publisher's owner, an organization
    publisher's owners and admins, or a member made owner), `publisher` (a member who publishes), or None."""
    if actor.kind == SubjectKind.SYSTEM:
        return PublisherRole.OWNER
    if not actor.is_user:
        return None
    if publisher.owner_user_id is not None and publisher.owner_user_id == actor.user.pk:
        return PublisherRole.OWNER
    if publisher.organization_id is not None and actor.roles.get(publisher.organization_id) in (
        Role.OWNER,
        Role.ADMIN,
    ):
        return PublisherRole.OWNER
    member = PublisherMember.objects.filter(publisher=publisher, user=actor.user).values_list(
        "role", flat=True
    )
    return next(iter(member), None)


def require_publisher_admin(
    *, actor: Subject, publisher: Publisher, owner: bool = False, write: bool = True
) -> str:
    """Authoring a pack or publishing a release needs the `marketplace` and `memories:write` scopes and a
    role for the publisher (`owner=True`: the owner role, for the profile, its members and payouts;
    `write=False`: a publisher-side read, such as a preview or the earnings report, needs
    `memories:read` instead). Publisher profiles are public, so a refusal is a 403 that says what is
    missing."""
    require_marketplace(actor)
    if actor.kind != SubjectKind.SYSTEM:
        actor.require_scope(TokenScope.MEMORIES_WRITE.value if write else TokenScope.MEMORIES_READ.value)
    role = publisher_role(actor=actor, publisher=publisher)
    if role is None:
        raise PermissionDenied(f"You do not publish for '{publisher.slug}'.")
    if owner and role != PublisherRole.OWNER:
        raise PermissionDenied(f"Only the owners of publisher '{publisher.slug}' may do this.")
    return role
