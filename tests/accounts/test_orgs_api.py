import pytest

from accounts.models import Invitation, Membership, Namespace

pytestmark = pytest.mark.django_db


def test_creating_an_org_makes_caller_owner_and_an_org_namespace(alice, api_for):
    client = api_for(alice)
    resp = client.post("/api/v1/orgs", {"slug": "acme", "name": "Acme"}, format="json")
    assert resp.status_code == 201
    assert Membership.objects.get(organization__slug="acme", user=alice).role == "owner"
    keys = [n["key"] for n in client.get("/api/v1/namespaces").json()]
    assert "org:acme" in keys and "user:alice" in keys


def invite_and_accept(admin_client, invitee_client, username, role, org="acme"):
    resp = admin_client.post(
        f"/api/v1/orgs/{org}/invitations", {"username": username, "role": role}, format="json"
    )
    assert resp.status_code == 201, resp.content
    accepted = invitee_client.post(f"/api/v1/invitations/{resp.json()['id']}/accept")
    assert accepted.status_code == 200, accepted.content
    return accepted.json()


def test_admin_invites_members_with_roles_and_outsiders_see_404(alice, bob, make_user, api_for):
    carol = make_user("carol")
    a = api_for(alice)
    a.post("/api/v1/orgs", {"slug": "acme"}, format="json")
    assert invite_and_accept(a, api_for(bob), "bob", "viewer") == {"organization": "acme", "role": "viewer"}
    # bob (viewer) cannot manage members
    resp = api_for(bob).post(
        "/api/v1/orgs/acme/invitations", {"username": "carol", "role": "member"}, format="json"
    )
    assert resp.status_code == 403
    # carol is not a member at all: the org does not exist for her
    assert api_for(carol).get("/api/v1/orgs/acme/members").status_code == 404
    assert not Membership.objects.filter(user=carol).exists()


def test_bad_role_is_rejected(alice, bob, api_for):
    a = api_for(alice)
    a.post("/api/v1/orgs", {"slug": "acme"}, format="json")
    resp = a.post("/api/v1/orgs/acme/invitations", {"username": "bob", "role": "emperor"}, format="json")
    assert resp.status_code == 400
    assert "role" in resp.json()["error"]["message"]
    assert not Membership.objects.filter(user=bob).exists() and not Invitation.objects.exists()


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


# --- invitations: membership starts only when the invitee accepts ----------------------------------------


def test_adding_a_user_is_an_invitation_the_member_list_changes_only_on_accept(alice, bob, api_for):
    a, b = api_for(alice), api_for(bob)
    a.post("/api/v1/orgs", {"slug": "acme"}, format="json")
    inv = a.post("/api/v1/orgs/acme/invitations", {"username": "bob", "role": "member"}, format="json").json()
    assert inv["status"] == "pending" and inv["invited_by"] == "alice" and inv["responded_at"] is None
    # nothing changed for bob yet: not a member, the org's namespace is not in his reads
    assert [m["username"] for m in a.get("/api/v1/orgs/acme/members").json()] == ["alice"]
    assert "org:acme" not in [n["key"] for n in b.get("/api/v1/namespaces").json()]
    assert b.get("/api/v1/orgs/acme/members").status_code == 404
    # bob sees the invitation and accepts it
    assert [i["id"] for i in b.get("/api/v1/invitations").json()] == [inv["id"]]
    assert b.post(f"/api/v1/invitations/{inv['id']}/accept").json() == {
        "organization": "acme",
        "role": "member",
    }
    assert {m["username"]: m["role"] for m in a.get("/api/v1/orgs/acme/members").json()} == {
        "alice": "owner",
        "bob": "member",
    }
    assert "org:acme" in [n["key"] for n in b.get("/api/v1/namespaces").json()]
    # an answered invitation cannot be answered again
    again = b.post(f"/api/v1/invitations/{inv['id']}/accept")
    assert again.status_code == 409 and "accepted" in again.json()["error"]["message"]
    assert b.get("/api/v1/invitations").json() == []


def test_declined_or_revoked_invitations_leave_the_members_unchanged(alice, bob, make_user, api_for):
    carol = make_user("carol")
    a = api_for(alice)
    a.post("/api/v1/orgs", {"slug": "acme"}, format="json")
    to_bob = a.post("/api/v1/orgs/acme/invitations", {"username": "bob"}, format="json").json()
    to_carol = a.post("/api/v1/orgs/acme/invitations", {"username": "carol"}, format="json").json()
    assert len(a.get("/api/v1/orgs/acme/invitations").json()) == 2
    assert api_for(bob).post(f"/api/v1/invitations/{to_bob['id']}/decline").status_code == 204
    assert a.delete(f"/api/v1/orgs/acme/invitations/{to_carol['id']}").status_code == 204
    assert api_for(carol).post(f"/api/v1/invitations/{to_carol['id']}/accept").status_code == 409
    assert Membership.objects.filter(organization__slug="acme").count() == 1
    assert a.get("/api/v1/orgs/acme/invitations").json() == []


def test_only_the_invitee_answers_an_invitation(alice, bob, make_user, api_for):
    mallory = make_user("mallory")
    a = api_for(alice)
    a.post("/api/v1/orgs", {"slug": "acme"}, format="json")
    inv = a.post("/api/v1/orgs/acme/invitations", {"username": "bob", "role": "admin"}, format="json").json()
    assert api_for(mallory).post(f"/api/v1/invitations/{inv['id']}/accept").status_code == 404
    assert api_for(mallory).get("/api/v1/invitations").json() == []
    assert not Membership.objects.filter(user=mallory).exists()
    assert Invitation.objects.get(pk=inv["id"]).status == "pending"


def test_invitation_errors(alice, bob, api_for):
    a = api_for(alice)
    a.post("/api/v1/orgs", {"slug": "acme"}, format="json")
    unknown = a.post("/api/v1/orgs/acme/invitations", {"username": "nobody"}, format="json")
    assert unknown.status_code == 404 and "nobody" in unknown.json()["error"]["message"]
    member = a.post("/api/v1/orgs/acme/invitations", {"username": "alice"}, format="json")
    assert member.status_code == 409 and "already a member" in member.json()["error"]["message"]
    # inviting again keeps one pending invitation, with the new role
    a.post("/api/v1/orgs/acme/invitations", {"username": "bob", "role": "viewer"}, format="json")
    a.post("/api/v1/orgs/acme/invitations", {"username": "bob", "role": "member"}, format="json")
    assert list(Invitation.objects.values_list("role", flat=True)) == ["member"]


def test_members_endpoint_changes_roles_but_never_adds_people(alice, bob, api_for):
    a = api_for(alice)
    a.post("/api/v1/orgs", {"slug": "acme"}, format="json")
    resp = a.post("/api/v1/orgs/acme/members", {"username": "bob", "role": "owner"}, format="json")
    assert resp.status_code == 404 and "invite" in resp.json()["error"]["message"]
    assert not Membership.objects.filter(user=bob).exists()


def test_admins_cannot_invite_owners_or_touch_owners(alice, bob, make_user, api_for):
    carol = make_user("carol")
    a, b = api_for(alice), api_for(bob)
    a.post("/api/v1/orgs", {"slug": "acme"}, format="json")
    invite_and_accept(a, b, "bob", "admin")
    assert (
        b.post(
            "/api/v1/orgs/acme/invitations", {"username": "carol", "role": "owner"}, format="json"
        ).status_code
        == 403
    )
    assert (
        b.post(
            "/api/v1/orgs/acme/members", {"username": "alice", "role": "viewer"}, format="json"
        ).status_code
        == 403
    )
    assert b.delete("/api/v1/orgs/acme/members/alice").status_code == 403
    assert (
        Membership.objects.get(user=alice).role == "owner"
        and not Membership.objects.filter(user=carol).exists()
    )


# --- the last owner ------------------------------------------------------------------------------------


def test_last_owner_cannot_demote_itself(alice, bob, api_for):
    a = api_for(alice)
    a.post("/api/v1/orgs", {"slug": "acme"}, format="json")
    resp = a.post("/api/v1/orgs/acme/members", {"username": "alice", "role": "admin"}, format="json")
    assert resp.status_code == 409 and "owner" in resp.json()["error"]["message"]
    assert Membership.objects.get(user=alice).role == "owner"
    # with a second owner, stepping down is fine
    invite_and_accept(a, api_for(bob), "bob", "owner")
    assert (
        a.post("/api/v1/orgs/acme/members", {"username": "alice", "role": "admin"}, format="json").status_code
        == 200
    )
    assert Membership.objects.get(user=alice).role == "admin"


def test_a_member_may_leave_but_the_last_owner_may_not(alice, bob, api_for):
    a, b = api_for(alice), api_for(bob)
    a.post("/api/v1/orgs", {"slug": "acme"}, format="json")
    invite_and_accept(a, b, "bob", "viewer")
    assert b.delete("/api/v1/orgs/acme/members/bob").status_code == 204
    assert not Membership.objects.filter(user=bob).exists()
    assert a.delete("/api/v1/orgs/acme/members/alice").status_code == 409
    assert Membership.objects.filter(user=alice, role="owner").exists()


# --- org: and publisher: names cannot be squatted --------------------------------------------------------


def test_org_namespace_keys_cannot_squat_another_organizations_name(alice, bob, api_for):
    a, b = api_for(alice), api_for(bob)
    a.post("/api/v1/orgs", {"slug": "acme"}, format="json")
    for slug in ("globex", "globex.notes", "acme", "acme.", "acme.Bad!"):
        resp = a.post(
            "/api/v1/namespaces", {"kind": "org", "slug": slug, "organization": "acme"}, format="json"
        )
        assert resp.status_code in (400, 409), (slug, resp.content)
        if resp.status_code == 400:
            assert "slug" in resp.json()["error"]["message"]
    squat = a.post("/api/v1/namespaces", {"kind": "publisher", "slug": "globex"}, format="json")
    assert squat.status_code == 400
    assert not Namespace.objects.filter(key__contains="globex").exists()
    # so bob can still found "globex", and acme makes its own sub-namespaces
    assert b.post("/api/v1/orgs", {"slug": "globex"}, format="json").status_code == 201
    ok = a.post(
        "/api/v1/namespaces", {"kind": "org", "slug": "acme.notes", "organization": "acme"}, format="json"
    )
    assert ok.status_code == 201 and ok.json()["key"] == "org:acme.notes"
    # only for an organization the caller administers
    resp = b.post(
        "/api/v1/namespaces", {"kind": "org", "slug": "acme.evil", "organization": "acme"}, format="json"
    )
    assert resp.status_code == 404
    assert not Namespace.objects.filter(key="org:acme.evil").exists()


def test_an_organization_whose_namespace_key_is_taken_is_refused_cleanly(alice, api_for):
    from accounts import services as account_services

    account_services.namespace_create(kind="org", slug="initech", owner_user=alice)  # e.g. an old squat
    resp = api_for(alice).post("/api/v1/orgs", {"slug": "initech"}, format="json")
    assert resp.status_code == 409 and "initech" in resp.json()["error"]["message"]
    assert not Membership.objects.filter(organization__slug="initech").exists()


# --- joining shared namespaces ---------------------------------------------------------------------------


def test_join_list_and_leave_a_shared_namespace(alice, bob, api_for):
    a, b = api_for(alice), api_for(bob)
    a.post("/api/v1/namespaces", {"kind": "shared", "slug": "recipes"}, format="json")
    assert "shared:recipes" not in [n["key"] for n in b.get("/api/v1/namespaces").json()]
    joined = b.post("/api/v1/namespaces/joined", {"namespace": "shared:recipes"}, format="json")
    assert joined.status_code == 201 and joined.json()["namespace"] == "shared:recipes"
    assert [j["namespace"] for j in b.get("/api/v1/namespaces/joined").json()] == ["shared:recipes"]
    listed = {n["key"]: n["actions"] for n in b.get("/api/v1/namespaces").json()}
    assert listed["shared:recipes"] == ["read"]
    # joining twice is harmless
    assert (
        b.post("/api/v1/namespaces/joined", {"namespace": "shared:recipes"}, format="json").status_code == 201
    )
    assert b.delete("/api/v1/namespaces/joined/shared:recipes").status_code == 204
    assert "shared:recipes" not in [n["key"] for n in b.get("/api/v1/namespaces").json()]
    assert b.delete("/api/v1/namespaces/joined/shared:recipes").status_code == 404


def test_only_shared_namespaces_can_be_joined(alice, bob, api_for):
    a, b = api_for(alice), api_for(bob)
    a.post("/api/v1/orgs", {"slug": "acme"}, format="json")
    for key in ("user:alice", "org:acme", "shared:nope"):
        resp = b.post("/api/v1/namespaces/joined", {"namespace": key}, format="json")
        assert resp.status_code == 404, key
    assert b.get("/api/v1/namespaces/joined").json() == []


def test_only_owners_and_admins_see_who_is_invited(make_user, api_for):
    from accounts import services as accounts

    owner, viewer, _invitee = make_user("olga"), make_user("vic"), make_user("ivan")
    org = accounts.organization_create(owner=owner, slug="vorg")
    accounts.invitation_accept(
        user=viewer,
        invitation_id=accounts.invitation_create(actor=owner, org=org, username="vic", role="viewer").pk,
    )
    accounts.invitation_create(actor=owner, org=org, username="ivan", role="member")
    listed = api_for(owner).get("/api/v1/orgs/vorg/invitations")
    assert listed.status_code == 200 and [i["username"] for i in listed.json()] == ["ivan"]
    refused = api_for(viewer).get("/api/v1/orgs/vorg/invitations")
    assert refused.status_code == 403 and "owners and admins" in refused.json()["error"]["message"]
