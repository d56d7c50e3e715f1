import pytest

from accounts.models import ALL_SCOPES, ApiToken

pytestmark = pytest.mark.django_db


def test_token_is_shown_once_and_stored_hashed(alice, api_for):
    client = api_for(alice)
    resp = client.post("/api/v1/tokens", {"name": "agent", "scopes": ["memories:read"]}, format="json")
    assert resp.status_code == 201
    raw = resp.json()["token"]
    assert raw.startswith("mh_")
    row = ApiToken.objects.get(pk=resp.json()["id"])
    assert raw not in (row.key_sha256, row.prefix) and len(row.key_sha256) == 64
    listed = client.get("/api/v1/tokens").json()
    assert all("token" not in t for t in listed)


def test_revoked_token_is_refused(alice, api_for):
    client = api_for(alice)
    created = client.post("/api/v1/tokens", {"name": "short-lived"}, format="json").json()
    other = type(client)()
    other.credentials(HTTP_AUTHORIZATION=f"Bearer {created['token']}")
    assert other.get("/api/v1/me").status_code == 200
    assert client.delete(f"/api/v1/tokens/{created['id']}").status_code == 204
    resp = other.get("/api/v1/me")
    assert resp.status_code == 401
    assert "revoked" in resp.json()["error"]["message"]


def test_cannot_revoke_someone_elses_token(alice, bob, api_for):
    bobs = api_for(bob).post("/api/v1/tokens", {"name": "b"}, format="json").json()
    assert api_for(alice).delete(f"/api/v1/tokens/{bobs['id']}").status_code == 404
    assert ApiToken.objects.get(pk=bobs["id"]).revoked_at is None


def test_unknown_scope_is_rejected_and_nothing_written(alice, api_for):
    client = api_for(alice)
    before = ApiToken.objects.count()
    resp = client.post("/api/v1/tokens", {"name": "x", "scopes": ["root"]}, format="json")
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "invalid"
    assert "scopes" in resp.json()["error"]["message"]
    assert ApiToken.objects.count() == before


def test_anonymous_requests_get_401_in_the_error_shape(client):
    resp = client.get("/api/v1/memories")
    assert resp.status_code in (401, 403)
    assert set(resp.json()["error"]) >= {"code", "message"}


def test_bad_bearer_token(db):
    from rest_framework.test import APIClient

    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION="Bearer mh_nope")
    resp = c.get("/api/v1/me")
    assert resp.status_code == 401
    assert "Invalid" in resp.json()["error"]["message"]


# --- a token mints only what it holds, for no longer than it lives -------------------------------------


def token_client(raw):
    from rest_framework.test import APIClient

    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return c


def test_a_token_without_the_account_scope_cannot_touch_tokens(alice, api_for):
    reader = api_for(alice, scopes=["memories:read"])
    before = ApiToken.objects.count()
    resp = reader.post("/api/v1/tokens", {"name": "escalated"}, format="json")
    assert resp.status_code == 403 and "'account' scope" in resp.json()["error"]["message"]
    assert reader.get("/api/v1/tokens").status_code == 403
    other = ApiToken.objects.filter(user=alice).first()
    assert reader.delete(f"/api/v1/tokens/{other.pk}").status_code == 403
    assert (
        ApiToken.objects.count() == before and not ApiToken.objects.filter(revoked_at__isnull=False).exists()
    )


def test_a_minted_token_holds_a_subset_of_its_parents_scopes(alice, api_for):
    parent = api_for(alice, scopes=["account", "memories:read"])
    default = parent.post("/api/v1/tokens", {"name": "child"}, format="json")
    assert default.status_code == 201 and sorted(default.json()["scopes"]) == ["account", "memories:read"]
    narrower = parent.post("/api/v1/tokens", {"name": "reader", "scopes": ["memories:read"]}, format="json")
    assert narrower.status_code == 201 and narrower.json()["scopes"] == ["memories:read"]
    before = ApiToken.objects.count()
    wider = parent.post(
        "/api/v1/tokens", {"name": "wider", "scopes": ["memories:read", "governance"]}, format="json"
    )
    assert wider.status_code == 403 and "'governance' scope" in wider.json()["error"]["message"]
    assert ApiToken.objects.count() == before
    # and the child cannot go around it either
    child = token_client(default.json()["token"])
    resp = child.post("/api/v1/tokens", {"name": "grandchild", "scopes": ["marketplace"]}, format="json")
    assert resp.status_code == 403 and "'marketplace' scope" in resp.json()["error"]["message"]


def test_a_session_may_create_a_token_with_any_scopes(alice, client):
    client.force_login(alice)
    resp = client.post(
        "/api/v1/tokens",
        {"name": "ops", "scopes": ["governance", "account"]},
        content_type="application/json",
    )
    assert resp.status_code == 201 and sorted(resp.json()["scopes"]) == ["account", "governance"]
    everything = client.post("/api/v1/tokens", {"name": "all"}, content_type="application/json")
    assert sorted(everything.json()["scopes"]) == sorted(ALL_SCOPES)


def test_a_minted_token_never_outlives_its_parent(alice):
    from datetime import timedelta

    from django.utils import timezone

    from accounts import services as account_services

    soon = timezone.now() + timedelta(hours=1)
    _, raw = account_services.api_token_create(user=alice, name="p", scopes=["account"], expires_at=soon)
    parent = token_client(raw)
    inherited = parent.post("/api/v1/tokens", {"name": "c"}, format="json")
    assert inherited.status_code == 201
    assert ApiToken.objects.get(pk=inherited.json()["id"]).expires_at == soon
    before = ApiToken.objects.count()
    later = (soon + timedelta(days=30)).isoformat()
    resp = parent.post("/api/v1/tokens", {"name": "c2", "expires_at": later}, format="json")
    assert resp.status_code == 400 and "expires_at" in resp.json()["error"]["message"]
    assert ApiToken.objects.count() == before


def test_revoking_a_token_revokes_the_tokens_it_minted(alice, api_for):
    session_like = api_for(alice)  # all scopes
    parent = session_like.post("/api/v1/tokens", {"name": "parent"}, format="json").json()
    child = token_client(parent["token"]).post("/api/v1/tokens", {"name": "child"}, format="json").json()
    grandchild = token_client(child["token"]).post("/api/v1/tokens", {"name": "gc"}, format="json").json()
    assert session_like.delete(f"/api/v1/tokens/{parent['id']}").status_code == 204
    for t in (parent, child, grandchild):
        assert token_client(t["token"]).get("/api/v1/me").status_code == 401


def test_an_empty_scope_list_grants_nothing(alice):
    from accounts.models import ApiToken as Token
    from accounts.selectors import token_hash

    Token.objects.create(
        user=alice, name="legacy", prefix="mh_legacy", key_sha256=token_hash("mh_legacy-raw")
    )
    c = token_client("mh_legacy-raw")
    me = c.get("/api/v1/me")
    assert me.status_code == 200 and me.json()["scopes"] == []
    assert c.get("/api/v1/memories?namespace=user:alice").status_code == 404
    assert c.post("/api/v1/tokens", {"name": "x"}, format="json").status_code == 403
    assert c.post("/api/v1/orgs", {"slug": "legacy-org"}, format="json").status_code == 403
    assert c.get("/api/v1/namespaces").status_code == 403
