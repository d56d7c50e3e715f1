"""The policy matrix, through the API: each role x operation x namespace kind, allowed and denied.

Denied reads answer 404 (existence is not revealed); denied writes on something the caller can read
answer 403; denials write nothing. Installation namespaces are read-only; token scopes narrow roles.
"""

from __future__ import annotations

import pytest

from accounts import services as account_services
from accounts.models import Namespace, NamespaceKind
from governance.models import AuditEvent
from tests.governance.factories import HAVE_INDEX, needs_index, org_with_roles, seed
from vault.models import MemCube, MemCubeVersion

pytestmark = pytest.mark.django_db

# "joiner" is an outsider who joined the shared namespace (accounts.NamespaceJoin).
PERSONAS = ("owner", "admin", "member", "viewer", "outsider", "joiner")
KINDS = ("user", "org", "shared", "installation", "publisher")
OPERATIONS = ("read", "list", "search", "create", "update", "delete", "admin-op")

READS = {"read", "list", "search"}
WRITES = {"create", "update", "delete"}
ADMIN = {"admin-op"}
ALL = READS | WRITES | ADMIN
NONE: set[str] = set()

# What each persona may do, by namespace kind. The user namespace belongs to the org owner personally.
# A shared namespace is read by others only once they join it: never by default.
ALLOWED: dict[str, dict[str, set[str]]] = {
    "user": {"owner": ALL, "admin": NONE, "member": NONE, "viewer": NONE, "outsider": NONE, "joiner": NONE},
    "org": {
        "owner": ALL,
        "admin": ALL,
        "member": READS | WRITES,
        "viewer": READS,
        "outsider": NONE,
        "joiner": NONE,
    },
    "publisher": {
        "owner": ALL,
        "admin": ALL,
        "member": READS | WRITES,
        "viewer": READS,
        "outsider": NONE,
        "joiner": NONE,
    },
    "shared": {
        "owner": ALL,
        "admin": ALL,
        "member": READS | WRITES,
        "viewer": READS,
        "outsider": NONE,
        "joiner": READS,
    },
    # installed packs are read-only to everyone; their holders' admins still govern them (freeze, archive)
    "installation": {
        "owner": READS | ADMIN,
        "admin": READS | ADMIN,
        "member": READS,
        "viewer": READS,
        "outsider": NONE,
        "joiner": NONE,
    },
}
SUCCESS = {
    "read": 200,
    "list": 200,
    "search": 200,
    "create": 201,
    "update": 200,
    "delete": 204,
    "admin-op": 200,
}


@pytest.fixture
def world(make_user):
    org, users = org_with_roles(make_user)
    owner = users["owner"]
    namespaces = {
        "user": Namespace.objects.get(key=f"user:{owner.username}"),
        "org": Namespace.objects.get(key="org:acme"),
        "shared": account_services.namespace_create(
            kind=NamespaceKind.SHARED, slug="acme-commons", organization=org
        ),
        "installation": account_services.namespace_create(
            kind=NamespaceKind.INSTALLATION, slug="acme-pack", organization=org
        ),
        "publisher": account_services.namespace_create(
            kind=NamespaceKind.PUBLISHER, slug="acme-pub", organization=org
        ),
    }
    memories = {
        kind: seed(ns, owner, f"the {kind} fact about glaciers")[0] for kind, ns in namespaces.items()
    }
    users["joiner"] = make_user("joiner-acme")
    account_services.namespace_join(user=users["joiner"], namespace_key=namespaces["shared"].key)
    return users, namespaces, memories


def perform(client, op, ns, cube):
    if op == "read":
        return client.get(f"/api/v1/memories/{cube.id}")
    if op == "list":
        return client.get(f"/api/v1/memories?namespace={ns.key}")
    if op == "search":
        return client.post(
            "/api/v1/memories/search", {"query": "glaciers", "namespaces": [ns.key]}, format="json"
        )
    if op == "create":
        return client.post("/api/v1/memories", {"namespace": ns.key, "text": "a new fact"}, format="json")
    if op == "update":
        return client.patch(
            f"/api/v1/memories/{cube.id}", {"expected_version": 1, "text": "changed"}, format="json"
        )
    if op == "delete":
        return client.delete(f"/api/v1/memories/{cube.id}")
    if op == "admin-op":
        return client.post(f"/api/v1/memories/{cube.id}/lifecycle", {"action": "freeze"}, format="json")
    raise AssertionError(op)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", OPERATIONS)
@pytest.mark.parametrize("persona", PERSONAS)
def test_policy_matrix(world, api_for, index_now, persona, op, kind):
    users, namespaces, memories = world
    ns, cube = namespaces[kind], memories[kind]
    allowed = op in ALLOWED[kind][persona]
    if op == "search" and allowed:
        if not HAVE_INDEX:
            pytest.skip("vault.index (the Milvus index) is not in this tree yet")
        index_now()
    cubes_before, versions_before = MemCube.objects.count(), MemCubeVersion.objects.count()

    resp = perform(api_for(users[persona]), op, ns, cube)

    if allowed:
        assert resp.status_code == SUCCESS[op], (persona, op, kind, resp.content)
        if op in ("list", "search"):
            body = resp.json()
            ids = (
                [m["id"] for m in body["results"]]
                if op == "list"
                else [h["memory"]["id"] for h in body["results"]]
            )
            assert str(cube.id) in ids
        return
    can_read = bool(ALLOWED[kind][persona] & READS)
    expected = 403 if can_read else 404
    assert resp.status_code == expected, (persona, op, kind, resp.content)
    err = resp.json()["error"]
    assert err["code"] == ("permission_denied" if can_read else "not_found")
    if not can_read:
        assert cube.text not in resp.content.decode()  # nothing about the memory leaks
    # a denial changes nothing
    assert MemCube.objects.count() == cubes_before and MemCubeVersion.objects.count() == versions_before
    cube.refresh_from_db()
    assert cube.version == 1 and cube.state == "activated" and not cube.frozen


# --- token scopes narrow what a role allows ------------------------------------------------------------


@pytest.mark.parametrize(
    ("scopes", "outcomes"),
    [
        (
            ["memories:read"],
            {"read": 200, "list": 200, "create": 403, "update": 403, "delete": 403, "admin-op": 403},
        ),
        (["memories:read", "memories:write"], {"read": 200, "create": 201, "update": 200, "admin-op": 403}),
        # a blind writer: it may add memories but not read existing ones through update or delete
        (["memories:write"], {"read": 404, "create": 201, "update": 404, "delete": 404}),
        (["inference"], {"read": 404, "list": 404, "create": 404, "admin-op": 404}),
        (["memories:read", "governance"], {"read": 200, "update": 403, "admin-op": 200}),
    ],
)
def test_token_scopes_narrow_an_org_owner(world, api_for, scopes, outcomes):
    users, namespaces, memories = world
    client = api_for(users["owner"], scopes=scopes)
    for op, status in outcomes.items():
        resp = perform(client, op, namespaces["org"], memories["org"])
        assert resp.status_code == status, (scopes, op, resp.content)
        if status == 403:
            message = resp.json()["error"]["message"]
            missing = "governance" if op == "admin-op" else "memories:write"
            assert f"'{missing}' scope" in message


def test_installation_write_denial_says_read_only(world, api_for):
    users, namespaces, memories = world
    resp = perform(api_for(users["owner"]), "update", namespaces["installation"], memories["installation"])
    assert resp.status_code == 403 and "read-only" in resp.json()["error"]["message"]


def test_a_denied_read_writes_no_read_audit_entry(world, api_for):
    users, namespaces, memories = world
    assert perform(api_for(users["outsider"]), "read", namespaces["org"], memories["org"]).status_code == 404
    # the refusal may be recorded (access.denied), but no read of the memory is
    assert (
        not AuditEvent.objects.exclude(operation="access.denied")
        .filter(object_ids__contains=[str(memories["org"].id)])
        .exists()
    )


@needs_index
def test_outsider_search_never_returns_private_or_unjoined_memories(world, api_for, index_now):
    users, _namespaces, memories = world
    index_now()
    resp = api_for(users["outsider"]).post("/api/v1/memories/search", {"query": "glaciers"}, format="json")
    assert resp.status_code == 200
    assert resp.json()["results"] == []
    # once joined, the shared namespace (and nothing else of the org's) is in the default search
    resp = api_for(users["joiner"]).post("/api/v1/memories/search", {"query": "glaciers"}, format="json")
    assert {h["memory"]["id"] for h in resp.json()["results"]} == {str(memories["shared"].id)}
