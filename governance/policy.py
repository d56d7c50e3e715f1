"""The policy decision point: the one place that decides who may do what to which memory.

Every read and write in the Memory API (and marketplace, inference and MIP) asks `decide`/`authorize`
(one namespace), `decide_memory`/`authorize_memory` (one memory, per-memory ACL included) or filters
with `readable_namespaces_q`/`readable_memories_q`. A denied read answers 404 (the object might as well
not exist for this caller); a denied write on something the caller can read answers 403.

Subjects come in three kinds:
- `user`: a person, through a session (all scopes) or an API token (its scopes narrow what roles allow);
- `remote`: a MIP peer instance; it reads exactly the namespaces a licence or installation grants it and
  never writes;
- `system`: the platform itself (Celery sweeps, a pack installation writing into a read-only namespace).

The request context (operation, purpose, installation, licence) travels with the subject and is copied
into every `Decision`, so the audit log can say not only who did what but why.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from django.db.models import Q

from accounts.models import ALL_SCOPES, Membership, Namespace, NamespaceJoin, NamespaceKind, Role
from accounts.scopes import missing_scope_error, request_scopes
from core.errors import NotFound, PermissionDenied
from core.exceptions import deny_target


class Action(enum.StrEnum):
    READ = "read"
    WRITE = "write"  # create, update, delete memories
    ADMIN = "admin"  # lifecycle, freezing, sharing, snapshots, audit of the namespace


class SubjectKind(enum.StrEnum):
    USER = "user"
    REMOTE = "remote"
    SYSTEM = "system"


class AclPermission(enum.StrEnum):
    READ = "read"
    WRITE = "write"  # implies read


SCOPE_FOR_ACTION = {Action.READ: "memories:read", Action.WRITE: "memories:write", Action.ADMIN: "governance"}

# Org roles and what they may do in an org-owned namespace.
ORG_ROLE_ACTIONS: dict[str, set[Action]] = {
    Role.OWNER: {Action.READ, Action.WRITE, Action.ADMIN},
    Role.ADMIN: {Action.READ, Action.WRITE, Action.ADMIN},
    Role.MEMBER: {Action.READ, Action.WRITE},
    Role.VIEWER: {Action.READ},
}
# An ACL entry for an org role covers that role and every role above it.
ROLE_RANK: dict[str, int] = {Role.VIEWER: 0, Role.MEMBER: 1, Role.ADMIN: 2, Role.OWNER: 3}
ACL_ACTIONS: dict[str, set[Action]] = {
    AclPermission.READ: {Action.READ},
    AclPermission.WRITE: {Action.READ, Action.WRITE},
}
MAX_PURPOSE_CHARS = 100


@dataclass(frozen=True)
class Context:
    """Why and on what terms a request is made. Recorded with decisions and in the audit log."""

    operation: str = ""  # e.g. memory.read, mip.export
    purpose: str = ""  # free text the caller states (X-MemHub-Purpose header), e.g. "support-ticket-42"
    installation_id: str = ""
    licence: str = ""

    def as_dict(self) -> dict[str, str]:
        return {
            k: v
            for k, v in (
                ("operation", self.operation),
                ("purpose", self.purpose),
                ("installation", self.installation_id),
                ("licence", self.licence),
            )
            if v
        }


@dataclass(frozen=True)
class RemoteGrant:
    """What a licence or installation lets a remote instance read: one namespace, under one licence."""

    namespace_id: Any
    licence: str = ""
    installation_id: str = ""


@dataclass
class Subject:
    """Who is asking. A user's scopes come from the API token used (no token: a session, all scopes;
    a token with an empty scope list: no scopes)."""

    user: Any = None
    scopes: frozenset[str] = field(default_factory=lambda: frozenset(ALL_SCOPES))
    kind: SubjectKind = SubjectKind.USER
    remote_instance: str = ""
    remote_grants: tuple[RemoteGrant, ...] = ()
    system_label: str = ""
    token_id: Any = None
    context: Context = field(default_factory=Context)

    @classmethod
    def from_request(cls, request: Any, *, operation: str = "") -> Subject:
        token = getattr(request, "auth", None)
        scopes = request_scopes(request)  # a token's own scopes (empty: none), a session's all
        headers = getattr(request, "headers", {}) or {}
        purpose = str(headers.get("X-MemHub-Purpose", "") or "")[:MAX_PURPOSE_CHARS]
        return cls(
            user=request.user,
            scopes=scopes,
            token_id=getattr(token, "pk", None),
            context=Context(operation=operation, purpose=purpose),
        )

    @classmethod
    def remote(cls, *, instance: str, grants: Iterable[RemoteGrant], purpose: str = "") -> Subject:
        """A MIP peer. It may read the granted namespaces and nothing else; it never writes."""
        return cls(
            user=None,
            scopes=frozenset({"memories:read"}),
            kind=SubjectKind.REMOTE,
            remote_instance=instance,
            remote_grants=tuple(grants),
            context=Context(purpose=purpose),
        )

    @classmethod
    def system(cls, label: str, *, purpose: str = "") -> Subject:
        """The platform acting on its own behalf (sweeps, installs). Allowed everything; always audited."""
        return cls(user=None, kind=SubjectKind.SYSTEM, system_label=label, context=Context(purpose=purpose))

    def with_context(self, **changes: Any) -> Subject:
        return replace(self, context=replace(self.context, **changes))

    @property
    def is_user(self) -> bool:
        return self.kind == SubjectKind.USER and bool(getattr(self.user, "is_authenticated", False))

    @property
    def label(self) -> str:
        if self.kind == SubjectKind.REMOTE:
            return f"remote:{self.remote_instance}"
        if self.kind == SubjectKind.SYSTEM:
            return f"system:{self.system_label}" if self.system_label else "system"
        return getattr(self.user, "username", "") or "anonymous"

    @cached_property
    def roles(self) -> dict[Any, str]:
        """organization id -> role."""
        if not self.is_user:
            return {}
        return dict(Membership.objects.filter(user=self.user).values_list("organization_id", "role"))

    @cached_property
    def joined_namespace_ids(self) -> frozenset[Any]:
        """The `shared:` namespaces of others this user chose to read (accounts.NamespaceJoin)."""
        if not self.is_user:
            return frozenset()
        return frozenset(
            NamespaceJoin.objects.filter(user=self.user, namespace__kind=NamespaceKind.SHARED).values_list(
                "namespace_id", flat=True
            )
        )

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes

    def require_scope(self, scope: str) -> None:
        """Raise 403 naming the scope unless the caller's credentials hold it."""
        if not self.has_scope(scope):
            raise missing_scope_error(scope)

    def grant_for(self, namespace_id: Any) -> RemoteGrant | None:
        return next((g for g in self.remote_grants if str(g.namespace_id) == str(namespace_id)), None)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    subject: str = ""
    action: str = ""
    object: str = ""  # namespace key, or memory:<id>
    via: str = ""  # namespace, acl, remote-grant, system
    context: Mapping[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "reason": self.reason,
            "subject": self.subject,
            "action": self.action,
            "object": self.object,
            "via": self.via,
            **dict(self.context),
        }


# --- namespaces -------------------------------------------------------------------------------------


def _owner_actions(subject: Subject, ns: Namespace) -> set[Action]:
    """What the subject may do as (a member of) the namespace's owner."""
    if ns.owner_user_id is not None:
        return {Action.READ, Action.WRITE, Action.ADMIN} if ns.owner_user_id == subject.user.pk else set()
    role = subject.roles.get(ns.organization_id)
    return set(ORG_ROLE_ACTIONS.get(role, set())) if role else set()


def namespace_actions(subject: Subject, ns: Namespace) -> set[Action]:
    if subject.kind == SubjectKind.SYSTEM:
        return {Action.READ, Action.WRITE, Action.ADMIN}
    if subject.kind == SubjectKind.REMOTE:
        return {Action.READ} if subject.grant_for(ns.pk) and not ns.suspended_reason else set()
    if not subject.is_user:
        return set()
    if ns.suspended_reason or ns.kind == NamespaceKind.CATALOG:
        # A suspended installation (licence gone) and the catalog's index entries are nobody's memory.
        return set()
    actions = _owner_actions(subject, ns)
    if ns.kind == NamespaceKind.INSTALLATION:
        # An installed pack is the publisher's release: its holders read it, nobody edits it in place.
        actions.discard(Action.WRITE)
    if ns.kind == NamespaceKind.SHARED and ns.pk in subject.joined_namespace_ids:
        # Anyone can create a shared namespace: others read it only once they join it (never by default).
        actions.add(Action.READ)
    return {a for a in actions if subject.has_scope(SCOPE_FOR_ACTION[a])}


def _decision(
    subject: Subject, action: Action, obj: str, allowed: bool, via: str, reason: str, context: Context | None
) -> Decision:
    ctx = context or subject.context
    extra = ctx.as_dict()
    if subject.kind == SubjectKind.REMOTE and not extra.get("licence"):
        # The remote's licence is part of why it was let in; record it with the decision.
        licences = sorted({g.licence for g in subject.remote_grants if g.licence})
        if licences:
            extra["licence"] = ",".join(licences)
    return Decision(allowed, reason, subject.label, action.value, obj, via if allowed else "", extra)


def decide(
    *, subject: Subject, action: Action, namespace: Namespace, context: Context | None = None
) -> Decision:
    allowed = action in namespace_actions(subject, namespace)
    via = {SubjectKind.SYSTEM: "system", SubjectKind.REMOTE: "remote-grant"}.get(subject.kind, "namespace")
    return _decision(
        subject,
        action,
        namespace.key,
        allowed,
        via,
        "granted" if allowed else f"{action.value} not granted on {namespace.key}",
        context,
    )


def _denied_error(
    subject: Subject, action: Action, actions: set[Action], *, kind: str, what: str, installation: bool
) -> Exception:
    if Action.READ not in actions:
        return NotFound(f"{what} not found.")
    if subject.kind == SubjectKind.REMOTE:
        return PermissionDenied(f"A remote instance may only read what its licence grants ({what}).")
    if action == Action.WRITE and installation:
        return PermissionDenied(f"{what} holds an installed pack and is read-only.")
    scope = SCOPE_FOR_ACTION[action]
    if not subject.has_scope(scope):
        return PermissionDenied(f"This API token lacks the '{scope}' scope.")
    # "You may not write this memory." / "You may not admin in namespace 'org:acme'."
    target = kind if kind == "this memory" else f"in {what[:1].lower()}{what[1:]}"
    return PermissionDenied(f"You may not {action.value} {target}.")


def authorize(
    *, subject: Subject, action: Action, namespace: Namespace, context: Context | None = None
) -> Decision:
    """Raise NotFound if the caller cannot even read the namespace, PermissionDenied otherwise."""
    actions = namespace_actions(subject, namespace)
    if action in actions:
        return decide(subject=subject, action=action, namespace=namespace, context=context)
    raise deny_target(
        _denied_error(
            subject,
            action,
            actions,
            kind="in namespace",
            what=f"Namespace '{namespace.key}'",
            installation=namespace.kind == NamespaceKind.INSTALLATION,
        ),
        namespace=namespace,
    )


# --- one memory (namespace rights plus its ACL entries) ---------------------------------------------


def acl_actions(subject: Subject, acl: Iterable[Mapping[str, Any]]) -> set[Action]:
    """What a memory's ACL entries give this subject (users only; remote peers go by licence)."""
    if not subject.is_user:
        return set()
    user_id = str(subject.user.pk)
    roles = {str(org): role for org, role in subject.roles.items()}
    granted: set[Action] = set()
    for entry in acl or ():
        if entry.get("user_id") and entry["user_id"] == user_id:
            granted |= ACL_ACTIONS.get(entry.get("permission", ""), set())
        elif entry.get("org_id") and entry["org_id"] in roles:
            held = ROLE_RANK.get(roles[entry["org_id"]], -1)
            if held >= ROLE_RANK.get(entry.get("role", ""), 99):
                granted |= ACL_ACTIONS.get(entry.get("permission", ""), set())
    return granted


def memory_actions(subject: Subject, cube: Any) -> tuple[set[Action], set[Action]]:
    """(all actions on this memory, those that come only from its ACL).

    Nothing is allowed on a memory the subject cannot read: an update, deletion or lifecycle change
    answers with the memory, so a token without `memories:read` would otherwise read through them."""
    ns = cube.namespace
    by_namespace = namespace_actions(subject, ns)
    if ns.kind == NamespaceKind.INSTALLATION:
        by_acl: set[Action] = set()  # licensed content is never shared out by ACL
    else:
        by_acl = {a for a in acl_actions(subject, cube.acl) if subject.has_scope(SCOPE_FOR_ACTION[a])}
    actions = by_namespace | by_acl
    if Action.READ not in actions:
        return set(), set()
    return actions, by_acl - by_namespace


def decide_memory(*, subject: Subject, action: Action, cube: Any, context: Context | None = None) -> Decision:
    actions, only_acl = memory_actions(subject, cube)
    allowed = action in actions
    via = (
        "acl"
        if action in only_acl
        else {SubjectKind.SYSTEM: "system", SubjectKind.REMOTE: "remote-grant"}.get(subject.kind, "namespace")
    )
    return _decision(
        subject,
        action,
        f"memory:{cube.pk}",
        allowed,
        via,
        "granted" if allowed else f"{action.value} not granted on memory {cube.pk}",
        context,
    )


def authorize_memory(
    *, subject: Subject, action: Action, cube: Any, context: Context | None = None
) -> Decision:
    """Like `authorize`, for one memory: its ACL can open it to readers (and writers) outside its
    namespace. ADMIN never comes from an ACL: sharing, lifecycle and freezing stay with the namespace."""
    actions, _ = memory_actions(subject, cube)
    if action in actions:
        return decide_memory(subject=subject, action=action, cube=cube, context=context)
    raise deny_target(
        _denied_error(
            subject,
            action,
            actions,
            kind="this memory",
            what="Memory",
            installation=cube.namespace.kind == NamespaceKind.INSTALLATION,
        ),
        namespace=cube.namespace,
        object_type="memory",
        object_ids=[cube.pk],
    )


# --- query filters ------------------------------------------------------------------------------------


def readable_namespaces_q(subject: Subject, prefix: str = "") -> Q:
    """A Q over Namespace (or, with prefix 'namespace__', over rows that have one) the subject may read."""
    if subject.kind == SubjectKind.SYSTEM:
        return Q()
    live = Q(**{f"{prefix}suspended_reason": ""})
    if subject.kind == SubjectKind.REMOTE:
        return Q(**{f"{prefix}pk__in": [g.namespace_id for g in subject.remote_grants]}) & live
    if not subject.is_user or not subject.has_scope("memories:read"):
        return Q(pk__in=[])
    org_ids = list(subject.roles.keys())
    # What the user owns (installations included), their organizations', and the shared namespaces
    # they joined. Every other shared namespace stays out of their searches, lists and chats; so do
    # suspended installations and the marketplace catalog's index entries.
    return (
        (
            Q(**{f"{prefix}owner_user": subject.user})
            | Q(**{f"{prefix}organization_id__in": org_ids})
            | Q(
                **{
                    f"{prefix}kind": NamespaceKind.SHARED,
                    f"{prefix}pk__in": list(subject.joined_namespace_ids),
                }
            )
        )
        & live
        & ~Q(**{f"{prefix}kind": NamespaceKind.CATALOG})
    )


def acl_grants_q(
    subject: Subject, *, permissions: Iterable[str] = tuple(AclPermission), prefix: str = ""
) -> Q:
    """A Q over per-memory grant rows (or, with a prefix such as 'memories__grants__', over rows that
    reach them) that give the subject one of `permissions`."""
    if not subject.is_user:
        return Q(pk__in=[])
    role_q = Q(pk__in=[])
    for org_id, role in subject.roles.items():
        covered = [r for r, rank in ROLE_RANK.items() if rank <= ROLE_RANK.get(role, -1)]
        role_q |= Q(**{f"{prefix}organization_id": org_id, f"{prefix}role__in": covered})
    return Q(**{f"{prefix}permission__in": list(permissions)}) & (
        Q(**{f"{prefix}user": subject.user}) | role_q
    )


def readable_memories_q(subject: Subject) -> Q:
    """A Q over MemCube: memories whose namespace the subject reads, or whose ACL grants it a read."""
    ns_q = readable_namespaces_q(subject, prefix="namespace__")
    if not subject.is_user or not subject.has_scope("memories:read"):
        return ns_q
    # The ids of memories granted to the subject, reached from Namespace through its reverse relations
    # (memories -> grants) so the kernel names no vault model; as a subquery, so a memory with several
    # matching grants is still one row.
    granted = (
        Namespace.objects.exclude(kind=NamespaceKind.INSTALLATION)
        .filter(acl_grants_q(subject, prefix="memories__grants__"))
        .values("memories__pk")
    )
    return ns_q | Q(pk__in=granted)


def readable_namespace_ids(subject: Subject, among: Iterable[Any] | None = None) -> list[Any]:
    qs = Namespace.objects.filter(readable_namespaces_q(subject))
    if among is not None:
        qs = qs.filter(pk__in=list(among))
    return list(qs.values_list("pk", flat=True))


def audit_visible_q(subject: Subject) -> Q:
    """A Q over AuditEvent: the entries this subject may read. A user sees the log of the namespaces
    they own; org owners and admins see their organization's; the system sees everything."""
    if subject.kind == SubjectKind.SYSTEM or (
        subject.is_user and subject.user.is_superuser and subject.has_scope("governance")
    ):
        return Q()
    if not subject.is_user or not subject.has_scope("governance"):
        return Q(pk__in=[])
    admin_orgs = [
        org for org, role in subject.roles.items() if Action.ADMIN in ORG_ROLE_ACTIONS.get(role, set())
    ]
    return Q(owner_user_id=subject.user.pk) | Q(organization_id__in=admin_orgs)
