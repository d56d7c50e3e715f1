"""Hostile input found by probing the running platform: each answered 500 before. Each must be a 400
naming the problem, with nothing written."""

from __future__ import annotations

import pytest

from vault.models import MemCube

pytestmark = pytest.mark.django_db


def raw_post(api, path: str, body: str):  # type: ignore[no-untyped-def]
    return api.generic("POST", path, body.encode(), content_type="application/json")


def test_a_lone_surrogate_in_json_is_refused_before_it_is_stored(alice, api_for):
    api = api_for(alice)
    resp = raw_post(api, "/api/v1/memories", '{"namespace": "user:alice", "text": "bad \\ud800 text"}')
    assert resp.status_code == 400
    assert "lone surrogate \\ud800" in resp.json()["error"]["message"]
    assert not MemCube.objects.exists()
    # keys too, and search input
    assert raw_post(api, "/api/v1/memories/search", '{"query": "x", "\\udfff": 1}').status_code == 400
    # a proper pair (an emoji written as escapes) is fine
    ok = raw_post(api, "/api/v1/memories", '{"namespace": "user:alice", "text": "ok \\ud83d\\ude00"}')
    assert ok.status_code == 201 and ok.json()["text"] == "ok \U0001f600"


def test_deeply_nested_json_is_a_400_not_a_crash(alice, api_for):
    api = api_for(alice)
    for depth in (40, 5000):
        body = '{"namespace": "user:alice", "text": "x", "metadata": ' + "[" * depth + "]" * depth + "}"
        resp = raw_post(api, "/api/v1/memories", body)
        assert resp.status_code == 400, depth
        assert "nested more than 32 levels" in resp.json()["error"]["message"]
    assert not MemCube.objects.exists()


@pytest.mark.parametrize(
    "when",
    [
        "2024-02-30T00:00:00Z",
        "0001-01-01T00:00:00+05:00",
        "9999-12-31T23:59:59-05:00",
        "2024-13-01T00:00:00Z",
    ],
)
def test_impossible_or_unrepresentable_instants_are_400s_everywhere(alice, api_for, when):
    api = api_for(alice)
    search = api.post(
        "/api/v1/memories/search", {"query": "x", "filters": {"created_after": when}}, format="json"
    )
    assert search.status_code == 400 and "created_after" in search.json()["error"]["message"]
    audit = api.get("/api/v1/governance/audit", {"from": when})
    assert audit.status_code == 400 and "from" in audit.json()["error"]["message"]
    diff = api.get("/api/v1/governance/timemachine/diff", {"namespace": "user:alice", "source": when})
    assert diff.status_code in (400, 404) and diff.json()["error"]["code"] != "server_error"
    created = api.post(
        "/api/v1/memories", {"namespace": "user:alice", "text": "x", "valid_from": when}, format="json"
    )
    assert created.status_code == 400 and "valid_from" in created.json()["error"]["fields"]
    assert not MemCube.objects.exists()


def test_a_non_ascii_digit_version_is_a_400(alice, api_for):
    api = api_for(alice)
    memory = api.post("/api/v1/memories", {"namespace": "user:alice", "text": "x"}, format="json").json()
    resp = api.delete(f"/api/v1/memories/{memory['id']}?expected_version=\u00b2")
    assert resp.status_code == 400 and "expected_version" in resp.json()["error"]["message"]
    assert MemCube.objects.get(pk=memory["id"]).state != "deleted"
