"""A missing page is a page for people and a JSON error for API callers."""

import uuid

import pytest

pytestmark = pytest.mark.django_db


def test_a_memory_page_that_is_not_yours_is_an_html_404(client, alice, bob, api_for):
    theirs = api_for(bob).post("/api/v1/memories", {"namespace": "user:bob", "text": "bob's"}, format="json")
    client.force_login(alice)
    for path in (f"/memories/{theirs.json()['id']}/", f"/memories/{uuid.uuid4()}/", "/no-such-page/"):
        resp = client.get(path)
        assert resp.status_code == 404 and resp["Content-Type"].startswith("text/html"), path
        assert b"There is nothing here that you can see" in resp.content
        assert b"bob's" not in resp.content


def test_api_paths_keep_the_json_404(client):
    for path in ("/api/v1/nothing-here", "/v1/nothing-here"):
        resp = client.get(path)
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
