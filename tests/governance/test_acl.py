"""Per-memory ACL: share one memory out of a private namespace, read-only or read-write, with a user or
an organization's roles; revoke it; and every bad request refused without writing anything."""

from __future__ import annotations

import pytest

from accounts import services as account_services
from accounts.models import NamespaceKind
from governance.models import AuditEvent
from tests.governance.factories import needs_index, org_with_roles, seed
from vault.models import MemCube, MemCubeGrant, MemCubeVersion

pytestmark = pytest.mark.django_db


@pytest.fixture
def alices(alice, api_for):
    client = api_for(alice)
    shared = client.post(
        "/api/v1/memories", {"namespace": "user:alice", "text": "the tide table for May"}, format="json"
    ).json()
    private = client.post(
        "/api/v1/memories", {"namespace": "user:alice", "text": "my diary about tides"}, format="json"
    ).json()
    return client, shared, private


def grant(client, mid, **body):
    return client.post(f"/api/v1/memories/{mid}/acl", body, format="json")


def test_read_grant_shares_one_memory_read_only(alices, bob, api_for):
    a, shared, private = alices
    resp = grant(a, shared["id"], user="bob", permission="read")
    assert resp.status_code == 201
    assert resp.json() == [{"principal": "user:bob", "permission": "read"}]
    b = api_for(bob)
    # bob reads the shared memory, its history, and finds it in his list; the other stays invisible
    got = b.get(f"/api/v1/memories/{shared['id']}")
    assert got.status_code == 200 and got.json()["acl"] == [{"principal": "user:bob", "permission": "read"}]
    assert b.get(f"/api/v1/memories/{shared['id']}/history").status_code == 200
    # listed only when bob asks for what others shared with him: a grant cannot push memory on him
    assert b.get("/api/v1/memories").json()["results"] == []
    listed = b.get("/api/v1/memories?shared_with_me=true").json()["results"]
    assert [m["id"] for m in listed] == [shared["id"]]
    assert b.get(f"/api/v1/memories/{private['id']}").status_code == 404
    # but the namespace itself stays closed to him
    assert b.get("/api/v1/memories?namespace=user:alice").status_code == 404
    # read-only: writes are 403 (he can see it), and nothing changes
    resp = b.patch(f"/api/v1/memories/{shared['id']}", {"expected_version": 1, "text": "x"}, format="json")
    assert resp.status_code == 403
    assert b.delete(f"/api/v1/memories/{shared['id']}").status_code == 403
    assert (
        b.post(f"/api/v1/memories/{shared['id']}/lifecycle", {"action": "archive"}, format="json").status_code
        == 403
    )
    assert MemCube.objects.get(pk=shared["id"]).version == 1
    # the owner sees bob's read in her audit log
    ev = AuditEvent.objects.filter(operation="memory.read", actor_label="bob").get()
    assert ev.namespace_key == "user:alice" and ev.object_ids == [shared["id"]]


def test_write_grant_lets_the_grantee_update(alices, bob, api_for):
    a, shared, _ = alices
    grant(a, shared["id"], user="bob", permission="write")
    resp = api_for(bob).patch(
        f"/api/v1/memories/{shared['id']}", {"expected_version": 1, "text": "May tides v2"}, format="json"
    )
    assert resp.status_code == 200 and resp.json()["version"] == 2
    assert MemCubeVersion.objects.get(cube_id=shared["id"], version=2).actor == bob


def test_granting_again_replaces_the_permission_and_revoke_closes_it(alices, bob, api_for):
    a, shared, _ = alices
    grant(a, shared["id"], user="bob", permission="write")
    resp = grant(a, shared["id"], user="bob", permission="read")
    assert resp.json() == [{"principal": "user:bob", "permission": "read"}]
    assert MemCubeGrant.objects.count() == 1
    assert a.delete(f"/api/v1/memories/{shared['id']}/acl?user=bob").status_code == 204
    assert api_for(bob).get(f"/api/v1/memories/{shared['id']}").status_code == 404
    assert a.get(f"/api/v1/memories/{shared['id']}/acl").json() == []
    ops = list(
        AuditEvent.objects.filter(operation__startswith="memory.acl").values_list("operation", "details")
    )
    assert [o for o, _ in ops] == ["memory.acl.grant", "memory.acl.grant", "memory.acl.revoke"]
    assert ops[1][1]["previous"] == "write" and ops[2][1]["principal"] == "user:bob"


def test_org_role_grant_covers_that_role_and_above(alice, make_user, api_for):
    _org, users = org_with_roles(make_user)
    a = api_for(alice)
    m = a.post(
        "/api/v1/memories", {"namespace": "user:alice", "text": "a memo for acme admins"}, format="json"
    ).json()
    assert grant(a, m["id"], org="acme", role="admin", permission="read").status_code == 201
    seen = {role: api_for(u).get(f"/api/v1/memories/{m['id']}").status_code for role, u in users.items()}
    assert seen == {"owner": 200, "admin": 200, "member": 404, "viewer": 404, "outsider": 404}
    grant(a, m["id"], org="acme", role="viewer", permission="read")
    assert api_for(users["viewer"]).get(f"/api/v1/memories/{m['id']}").status_code == 200
    assert api_for(users["outsider"]).get(f"/api/v1/memories/{m['id']}").status_code == 404


def test_write_grant_lifts_an_org_viewer_on_one_memory(alice, make_user, api_for):
    _org, users = org_with_roles(make_user)
    owner = api_for(users["owner"])
    m = owner.post("/api/v1/memories", {"namespace": "org:acme", "text": "the runbook"}, format="json").json()
    viewer = api_for(users["viewer"])
    assert (
        viewer.patch(
            f"/api/v1/memories/{m['id']}", {"expected_version": 1, "text": "x"}, format="json"
        ).status_code
        == 403
    )
    grant(owner, m["id"], user=users["viewer"].username, permission="write")
    assert (
        viewer.patch(
            f"/api/v1/memories/{m['id']}", {"expected_version": 1, "text": "runbook v2"}, format="json"
        ).status_code
        == 200
    )


def test_only_namespace_admins_manage_the_acl(alices, alice, bob, make_user, api_for):
    a, shared, _ = alices
    carol = make_user("carol")
    grant(a, shared["id"], user="bob", permission="write")
    # bob can read (and write) it, so he is told no (403); carol cannot see it at all (404)
    assert grant(api_for(bob), shared["id"], user="carol", permission="read").status_code == 403
    assert grant(api_for(carol), shared["id"], user="carol", permission="read").status_code == 404
    assert api_for(bob).delete(f"/api/v1/memories/{shared['id']}/acl?user=bob").status_code == 403
    # a token without the governance scope cannot share either
    scoped = api_for(alice, scopes=["memories:read", "memories:write"])
    resp = grant(scoped, shared["id"], user="carol", permission="read")
    assert resp.status_code == 403 and "governance" in resp.json()["error"]["message"]
    assert MemCubeGrant.objects.count() == 1


def test_a_grantee_token_without_read_scope_sees_nothing(alices, bob, api_for):
    a, shared, _ = alices
    grant(a, shared["id"], user="bob", permission="read")
    assert api_for(bob, scopes=["inference"]).get(f"/api/v1/memories/{shared['id']}").status_code == 404


def test_installed_pack_memories_cannot_be_shared(alice, bob, api_for):
    ns = account_services.namespace_create(
        kind=NamespaceKind.INSTALLATION, slug="alice-pack", owner_user=alice
    )
    cube = seed(ns, alice, "licensed content")[0]
    before = AuditEvent.objects.count()
    resp = grant(api_for(alice), cube.id, user="bob", permission="read")
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "not_shareable"
    assert MemCubeGrant.objects.count() == 0 and AuditEvent.objects.count() == before
    assert api_for(bob).get(f"/api/v1/memories/{cube.id}").status_code == 404


def test_a_frozen_memory_can_still_be_shared(alices, bob, api_for):
    a, shared, _ = alices
    a.post(f"/api/v1/memories/{shared['id']}/lifecycle", {"action": "freeze"}, format="json")
    assert grant(a, shared["id"], user="bob", permission="read").status_code == 201
    assert api_for(bob).get(f"/api/v1/memories/{shared['id']}").status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"user": "bob"}, 400, "permission"),
        ({"user": "bob", "permission": "own"}, 400, "permission"),
        ({"user": "bob", "org": "acme", "permission": "read"}, 400, "exactly one principal"),
        ({"permission": "read"}, 400, "exactly one principal"),
        ({"org": "no-such-org", "permission": "read"}, 400, "Organization 'no-such-org' not found"),
        ({"user": "bob", "role": "admin", "permission": "read"}, 400, "'role' goes with 'org'"),
        ({"org": "acme", "role": "boss", "permission": "read"}, 400, "role"),
        ({"user": "bob", "permission": "read", "expires": "never"}, 400, "Unknown field 'expires'"),
    ],
)
def test_bad_grants_are_4xx_and_write_nothing(alices, bob, body, status, needle):
    a, shared, _ = alices
    before = AuditEvent.objects.count()
    resp = grant(a, shared["id"], **body)
    assert resp.status_code == status
    assert needle in resp.json()["error"]["message"], resp.json()
    assert MemCubeGrant.objects.count() == 0 and MemCube.objects.get(pk=shared["id"]).acl == []
    assert AuditEvent.objects.count() == before


def test_revoking_what_was_never_granted_is_404(alices, bob):
    a, shared, _ = alices
    resp = a.delete(f"/api/v1/memories/{shared['id']}/acl?user=bob")
    assert resp.status_code == 404 and "no ACL entry" in resp.json()["error"]["message"]
    resp = a.delete(f"/api/v1/memories/{shared['id']}/acl")
    assert resp.status_code == 400


@needs_index
def test_search_finds_a_shared_memory_and_only_that(alices, bob, api_for, index_now):
    a, shared, _private = alices
    grant(a, shared["id"], user="bob", permission="read")
    index_now()
    unasked = api_for(bob).post("/api/v1/memories/search", {"query": "tides"}, format="json")
    assert unasked.status_code == 200 and unasked.json()["results"] == []
    resp = api_for(bob).post(
        "/api/v1/memories/search", {"query": "tides", "shared_with_me": True}, format="json"
    )
    assert resp.status_code == 200
    assert [h["memory"]["id"] for h in resp.json()["results"]] == [shared["id"]]
