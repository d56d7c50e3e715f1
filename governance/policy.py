"""The policy decision point: the one place that decides who may do what to which memory.

Every read and write in the Memory API (and later marketplace, inference and MIP) asks `decide` or
filters with `readable_namespace_ids`. A denied read answers 404 (the object might as well not exist for
this caller); a denied write on something the caller can read answers 403.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from django.db.models import Q

from accounts.models import ALL_SCOPES, Membership, Namespace, NamespaceKind, Role
from core.errors import NotFound, PermissionDenied


class Action(enum.StrEnum):
    READ = "read"
    WRITE = "write"  # create, update, delete memories
    ADMIN = "admin"  # lifecycle, freezing, audit of the namespace


SCOPE_FOR_ACTION = {Action.READ: "memories:read", Action.WRITE: "memories:write", Action.ADMIN: "governance"}

# Org roles and what they may do in an org-owned namespace.
ORG_ROLE_ACTIONS: dict[str, set[Action]] = {
    Role.OWNER: {Action.READ, Action.WRITE, Action.ADMIN},
    Role.ADMIN: {Action.READ, Action.WRITE, Action.ADMIN},
    Role.MEMBER: {Action.READ, Action.WRITE},
    Role.VIEWER: {Action.READ},
}


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


@dataclass
class Subject:
    """Who is asking: a user, with the scopes of the token used (None: a session, all scopes)."""

    user: Any
    scopes: frozenset[str] = field(default_factory=lambda: frozenset(ALL_SCOPES))

    @classmethod
    def from_request(cls, request: Any) -> Subject:
        token = getattr(request, "auth", None)
        scopes = frozenset(getattr(token, "scopes", None) or ALL_SCOPES) if token is not None else frozenset(
            ALL_SCOPES
        )
        return cls(user=request.user, scopes=scopes)

    @cached_property
    def roles(self) -> dict[Any, str]:
        """organization id -> role."""
        if not getattr(self.user, "is_authenticated", False):
            return {}
        return dict(Membership.objects.filter(user=self.user).values_list("organization_id", "role"))

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


def _owner_actions(subject: Subject, ns: Namespace) -> set[Action]:
    """What the subject may do as (a member of) the namespace's owner."""
    if ns.owner_user_id is not None:
        return {Action.READ, Action.WRITE, Action.ADMIN} if ns.owner_user_id == subject.user.pk else set()
    role = subject.roles.get(ns.organization_id)
    return set(ORG_ROLE_ACTIONS.get(role, set())) if role else set()


def namespace_actions(subject: Subject, ns: Namespace) -> set[Action]:
    if not getattr(subject.user, "is_authenticated", False):
        return set()
    actions = _owner_actions(subject, ns)
    if ns.kind == NamespaceKind.INSTALLATION:
        # An installed pack is the publisher's release: its holders read it, nobody edits it in place.
        actions.discard(Action.WRITE)
    if ns.kind == NamespaceKind.SHARED:
        actions.add(Action.READ)
    return {a for a in actions if subject.has_scope(SCOPE_FOR_ACTION[a])}


def decide(*, subject: Subject, action: Action, namespace: Namespace) -> Decision:
    allowed = action in namespace_actions(subject, namespace)
    return Decision(allowed, "granted" if allowed else f"{action.value} not granted on {namespace.key}")


def authorize(*, subject: Subject, action: Action, namespace: Namespace) -> None:
    """Raise NotFound if the caller cannot even read the namespace, PermissionDenied otherwise."""
    actions = namespace_actions(subject, namespace)
    if action in actions:
        return
    if Action.READ not in actions:
        raise NotFound(f"Namespace '{namespace.key}' not found.")
    if action == Action.WRITE and namespace.kind == NamespaceKind.INSTALLATION:
        raise PermissionDenied(f"Namespace '{namespace.key}' holds an installed pack and is read-only.")
    scope = SCOPE_FOR_ACTION[action]
    if not subject.has_scope(scope):
        raise PermissionDenied(f"This API token lacks the '{scope}' scope.")
    raise PermissionDenied(f"You may not {action.value} in namespace '{namespace.key}'.")


def readable_namespaces_q(subject: Subject, prefix: str = "") -> Q:
    """A Q over Namespace (or, with prefix 'namespace__', over rows that have one) the subject may read."""
    if not getattr(subject.user, "is_authenticated", False) or not subject.has_scope("memories:read"):
        return Q(pk__in=[])
    org_ids = list(subject.roles.keys())
    return (
        Q(**{f"{prefix}owner_user": subject.user})
        | Q(**{f"{prefix}organization_id__in": org_ids})
        | Q(**{f"{prefix}kind": NamespaceKind.SHARED})
    )


def readable_namespace_ids(subject: Subject, among: Iterable[Any] | None = None) -> list[Any]:
    qs = Namespace.objects.filter(readable_namespaces_q(subject))
    if among is not None:
        qs = qs.filter(pk__in=list(among))
    return list(qs.values_list("pk", flat=True))
