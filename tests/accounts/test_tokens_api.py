import pytest

from accounts.models import ApiToken

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
