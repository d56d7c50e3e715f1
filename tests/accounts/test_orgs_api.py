import pytest

from accounts.models import Membership, Namespace

pytestmark = pytest.mark.django_db


def test_creating_an_org_makes_caller_owner_and_an_org_namespace(alice, api_for):
    client = api_for(alice)
    resp = client.post("/api/v1/orgs", {"slug": "acme", "name": "Acme"}, format="json")
    assert resp.status_code == 201
    assert Membership.objects.get(organization__slug="acme", user=alice).role == "owner"
    keys = [n["key"] for n in client.get("/api/v1/namespaces").json()]
    assert "org:acme" in keys and "user:alice" in keys


def test_admin_adds_members_with_roles_and_outsiders_see_404(alice, bob, make_user, api_for):
    carol = make_user("carol")
    a = api_for(alice)
    a.post("/api/v1/orgs", {"slug": "acme"}, format="json")
    assert (
        a.post("/api/v1/orgs/acme/members", {"username": "bob", "role": "viewer"}, format="json").status_code
        == 200
    )
    # bob (viewer) cannot manage members
    resp = api_for(bob).post(
        "/api/v1/orgs/acme/members", {"username": "carol", "role": "member"}, format="json"
    )
    assert resp.status_code == 403
    # carol is not a member at all: the org does not exist for her
    assert api_for(carol).get("/api/v1/orgs/acme/members").status_code == 404
    assert not Membership.objects.filter(user=carol).exists()


def test_bad_role_is_rejected(alice, bob, api_for):
    a = api_for(alice)
    a.post("/api/v1/orgs", {"slug": "acme"}, format="json")
    resp = a.post("/api/v1/orgs/acme/members", {"username": "bob", "role": "emperor"}, format="json")
    assert resp.status_code == 400
    assert "role" in resp.json()["error"]["message"]
    assert not Membership.objects.filter(user=bob).exists()


def test_last_owner_cannot_leave(alice, api_for):
    a = api_for(alice)
    a.post("/api/v1/orgs", {"slug": "acme"}, format="json")
    resp = a.delete("/api/v1/orgs/acme/members/alice")
    assert resp.status_code == 409


def test_shared_namespace_creation_and_validation(alice, api_for):
    a = api_for(alice)
    ok = a.post("/api/v1/namespaces", {"kind": "shared", "slug": "recipes"}, format="json")
    assert ok.status_code == 201 and ok.json()["key"] == "shared:recipes"
    bad = a.post("/api/v1/namespaces", {"kind": "installation", "slug": "x"}, format="json")
    assert bad.status_code == 400
    bad_slug = a.post("/api/v1/namespaces", {"kind": "shared", "slug": "Bad Slug!"}, format="json")
    assert bad_slug.status_code == 400
    dup = a.post("/api/v1/namespaces", {"kind": "shared", "slug": "recipes"}, format="json")
    assert dup.status_code == 409
    assert Namespace.objects.filter(kind="shared").count() == 1
