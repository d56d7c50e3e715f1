"""Small builders shared by the governance and lifecycle tests (real services, no mocks)."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from accounts import services as account_services
from accounts.models import Namespace, Organization, Role, User
from governance.policy import Subject
from vault.models import MemCube
from vault.services import memory_import_batch

ROLES = (Role.OWNER, Role.ADMIN, Role.MEMBER, Role.VIEWER)

HAVE_INDEX = importlib.util.find_spec("vault.index") is not None
needs_index = pytest.mark.skipif(
    not HAVE_INDEX, reason="vault.index (the Milvus index) is not in this tree yet"
)


def org_with_roles(make_user: Any, slug: str = "acme") -> tuple[Organization, dict[str, User]]:
    """An organization with one user per role, plus an outsider. Users are named <role>-<slug>."""
    users = {role: make_user(f"{role}-{slug}") for role in (*ROLES, "outsider")}
    org = account_services.organization_create(owner=users[Role.OWNER], slug=slug)
    for role in (Role.ADMIN, Role.MEMBER, Role.VIEWER):
        invitation = account_services.invitation_create(
            actor=users[Role.OWNER], org=org, username=users[role].username, role=role
        )
        account_services.invitation_accept(user=users[role], invitation_id=invitation.pk)
    return org, users


def seed(namespace: Namespace, owner: User, *texts: str, **fields: Any) -> list[MemCube]:
    """Memories written the way the platform writes them (any namespace kind, installations included)."""
    return memory_import_batch(
        actor=Subject(user=owner),
        namespace=namespace,
        items=[{"text": t, **fields} for t in texts],
        reason="test seed",
    )
