"""Refused attempts are audited: a 404 or 403 answered to a signed-in caller writes an `access.denied`
entry after the refused request's transaction has rolled back. The answer itself does not change, and
nothing in it (or in the caller's own audit log) tells the caller whether someone else's object exists."""

from __future__ import annotations

import uuid

import pytest
from rest_framework.test import APIClient

from governance.models import AuditEvent
from tests.governance.factories import org_with_roles

pytestmark = pytest.mark.django_db
URL = "/api/v1/governance/audit"


def denials():  # type: ignore[no-untyped-def]
    return AuditEvent.objects.filter(operation="access.denied")


def test_a_denied_read_of_another_tenants_memory_is_audited_and_still_404(alice, bob, api_for):
    a, b = api_for(alice), api_for(bob)
    memory = a.post(
        "/api/v1/memories", {"namespace": "user:alice", "text": "alice's secret"}, format="json"
    ).json()

    refused = b.get(f"/api/v1/memories/{memory['id']}")
    missing = b.get(f"/api/v1/memories/{uuid.uuid4()}")

    # the answer is the one for a memory that does not exist
    assert refused.status_code == missing.status_code == 404
    assert refused.json() == missing.json()
    # and the attempt is on record, with who asked for what
    entry = denials().filter(details__path=f"/api/v1/memories/{memory['id']}").get()
    assert entry.actor_label == "bob" and entry.details["status"] == 404
    assert entry.details["method"] == "GET" and entry.details["code"] == "not_found"
    # bob's own log does not show it: it would tell him which ids exist elsewhere
    assert "access.denied" not in {e["operation"] for e in b.get(URL).json()["results"]}
    # alice, whose memory it was, does see who tried
    seen = a.get(URL, {"operation": "access.denied"}).json()["results"]
    assert [(e["actor"], e["namespace"]) for e in seen] == [("bob", "user:alice")]
    assert memory["id"] in seen[0]["object_ids"]
    assert audit_is_intact()


def test_a_denied_look_at_another_tenants_audit_log_is_shown_to_its_owner(alice, bob, api_for):
    a, b = api_for(alice), api_for(bob)
    refused = b.get(URL, {"namespace": "user:alice"})
    missing = b.get(URL, {"namespace": "user:nobody-has-this"})
    assert refused.status_code == missing.status_code == 404
    assert refused.json()["error"]["code"] == missing.json()["error"]["code"] == "not_found"

    seen = a.get(URL, {"operation": "access.denied"}).json()["results"]
    assert len(seen) == 1
    assert seen[0]["actor"] == "bob" and seen[0]["namespace"] == "user:alice"
    assert seen[0]["details"]["status"] == 404 and seen[0]["chain"] == f"ns/{alice.namespaces.get().pk}"
    assert b.get(URL, {"operation": "access.denied"}).json()["count"] == 0


def test_a_member_refused_the_org_log_is_seen_by_its_admins(make_user, api_for):
    _org, users = org_with_roles(make_user)
    assert api_for(users["member"]).get(URL, {"namespace": "org:acme"}).status_code == 403
    for role in ("owner", "admin"):
        seen = api_for(users[role]).get(URL, {"operation": "access.denied"}).json()["results"]
        assert [(e["actor"], e["details"]["status"]) for e in seen] == [(users["member"].username, 403)], role
    assert api_for(users["member"]).get(URL, {"operation": "access.denied"}).json()["count"] == 0


def test_a_token_without_the_scope_is_audited_as_refused(alice, api_for):
    client = api_for(alice, scopes=["memories:read"])
    assert client.get(URL).status_code == 403
    entry = denials().get()
    assert entry.actor_label == "alice" and entry.details["status"] == 403 and entry.details["token"]


def test_anonymous_requests_are_not_audited():
    assert APIClient().get(URL).status_code in (401, 403)
    assert not denials().exists()


def test_bad_input_is_not_a_denial(alice, api_for):
    assert api_for(alice).get(URL, {"from": "yesterday"}).status_code == 400
    assert not denials().exists()


def test_denials_are_recorded_after_the_request_transaction_with_atomic_requests(
    alice, bob, api_for, monkeypatch
):
    """With ATOMIC_REQUESTS on, the refused request's transaction rolls back when the view returns; the
    denial is written after that (when the response is closed), so it survives."""
    from django.db import connection

    monkeypatch.setitem(connection.settings_dict, "ATOMIC_REQUESTS", True)
    resp = api_for(bob).get(URL, {"namespace": "user:alice"})
    assert resp.status_code == 404
    entry = denials().get()
    assert entry.actor_label == "bob" and entry.namespace_key == "user:alice"
    assert audit_is_intact()


def audit_is_intact() -> bool:
    from governance.audit import audit_verify

    return audit_verify() is None
