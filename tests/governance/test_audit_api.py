"""LogQuery: `GET /api/v1/governance/audit` with filters, pagination, JSONL/CSV export, and visibility
(a user sees the log of what they own; org owners and admins see their organization's)."""

from __future__ import annotations

import csv
import io
import json

import pytest
from django.utils import timezone

from governance.audit import audit_record
from governance.models import AuditEvent
from tests.governance.factories import org_with_roles

pytestmark = pytest.mark.django_db
URL = "/api/v1/governance/audit"


@pytest.fixture
def activity(alice, bob, api_for):
    """alice writes and reads in her namespace, bob in his."""
    a, b = api_for(alice), api_for(bob)
    m1 = a.post("/api/v1/memories", {"namespace": "user:alice", "text": "alpha"}, format="json").json()
    a.get(f"/api/v1/memories/{m1['id']}")
    m2 = a.post("/api/v1/memories", {"namespace": "user:alice", "text": "beta"}, format="json").json()
    a.patch(f"/api/v1/memories/{m2['id']}", {"expected_version": 1, "text": "beta 2"}, format="json")
    b.post("/api/v1/memories", {"namespace": "user:bob", "text": "bob's"}, format="json")
    return a, b, m1, m2


def ops(resp):
    return [e["operation"] for e in resp.json()["results"]]


def test_users_see_the_log_of_what_they_own(activity):
    a, b, m1, _ = activity
    mine = a.get(URL).json()
    assert mine["count"] == 4 and {e["namespace"] for e in mine["results"]} == {"user:alice"}
    assert ops(a.get(URL)) == [
        "memory.update",
        "memory.create",
        "memory.read",
        "memory.create",
    ]  # newest first
    assert b.get(URL).json()["count"] == 1
    # bob cannot ask for alice's namespace: it does not exist for him
    resp = b.get(URL, {"namespace": "user:alice"})
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
    # nor dig out entries about her memory
    assert b.get(URL, {"memory": m1["id"]}).json()["count"] == 0


def test_entries_carry_the_chain(activity):
    a, *_ = activity
    entries = a.get(URL, {"order": "asc"}).json()["results"]
    assert all(len(e["hash"]) == 64 and len(e["prev_hash"]) == 64 for e in entries)
    assert [e["seq"] for e in entries] == sorted(e["seq"] for e in entries)


def test_each_tenant_reads_its_own_chain(activity, alice, bob):
    a, b, *_ = activity
    mine = a.get(URL, {"order": "asc"}).json()["results"]
    assert {e["chain"] for e in mine} == {f"ns/{alice.namespaces.get().pk}"}
    assert [e["chain_seq"] for e in mine] == [1, 2, 3, 4]
    assert [e["prev_hash"] for e in mine[1:]] == [e["hash"] for e in mine[:-1]]
    theirs = b.get(URL).json()["results"]
    assert [(e["chain"], e["chain_seq"]) for e in theirs] == [(f"ns/{bob.namespaces.get().pk}", 1)]
    exported = a.get(URL, {"format": "csv"})
    header = b"".join(exported.streaming_content).decode().splitlines()[0]
    assert header.startswith("seq,chain,chain_seq,")


def test_org_owners_and_admins_see_the_org_log_members_do_not(make_user, api_for):
    _org, users = org_with_roles(make_user)
    api_for(users["member"]).post(
        "/api/v1/memories", {"namespace": "org:acme", "text": "org fact"}, format="json"
    )
    for role in ("owner", "admin"):
        resp = api_for(users[role]).get(URL, {"namespace": "org:acme"})
        assert resp.status_code == 200 and ops(resp) == ["memory.create"], role
    for role in ("member", "viewer"):
        client = api_for(users[role])
        assert client.get(URL).json()["count"] == 0, role  # their own action, but not their log
        resp = client.get(URL, {"namespace": "org:acme"})
        assert resp.status_code == 403 and "owners and admins" in resp.json()["error"]["message"]
    assert api_for(users["outsider"]).get(URL, {"namespace": "org:acme"}).status_code == 404


def test_filters(activity, alice):
    a, _, m1, _m2 = activity
    assert ops(a.get(URL, {"operation": "memory.read"})) == ["memory.read"]
    assert ops(a.get(URL, {"operation": ["memory.read", "memory.update"]})) == [
        "memory.update",
        "memory.read",
    ]
    assert a.get(URL, {"operation": "memory.*"}).json()["count"] == 4
    assert a.get(URL, {"actor": "alice"}).json()["count"] == 4
    assert a.get(URL, {"actor": "bob"}).json()["count"] == 0
    assert a.get(URL, {"memory": m1["id"]}).json()["count"] == 2  # created, read
    assert a.get(URL, {"memory_kind": "plaintext"}).json()["count"] == 1  # reads carry the kind
    assert a.get(URL, {"memory_kind": "activation"}).json()["count"] == 0
    assert a.get(URL, {"namespace": "user:alice"}).json()["count"] == 4


def test_time_range(alice, api_for):
    a = api_for(alice)
    a.post("/api/v1/memories", {"namespace": "user:alice", "text": "before"}, format="json")
    middle = timezone.now()
    a.post("/api/v1/memories", {"namespace": "user:alice", "text": "after"}, format="json")
    after = a.get(URL, {"from": middle.isoformat()}).json()
    before = a.get(URL, {"to": middle.isoformat()}).json()
    assert after["count"] == 1 and before["count"] == 1
    assert after["results"][0]["seq"] > before["results"][0]["seq"]


def test_pagination(alice, api_for):
    a = api_for(alice)
    for i in range(7):
        audit_record(actor=alice, operation="memory.read", namespace=alice.namespaces.get(), details={"i": i})
    page = a.get(URL, {"limit": 3}).json()
    assert page["count"] == 7 and len(page["results"]) == 3 and page["next"]
    rest = a.get(URL, {"limit": 3, "offset": 6}).json()
    assert len(rest["results"]) == 1 and rest["next"] is None


def test_jsonl_export_streams_every_matching_entry(activity):
    a, *_ = activity
    resp = a.get(URL, {"format": "jsonl", "order": "asc"})
    assert resp.status_code == 200 and resp["Content-Type"] == "application/x-ndjson"
    assert "audit.jsonl" in resp["Content-Disposition"]
    lines = [json.loads(line) for line in b"".join(resp.streaming_content).decode().splitlines()]
    assert [e["operation"] for e in lines] == [
        "memory.create",
        "memory.read",
        "memory.create",
        "memory.update",
    ]
    assert lines[1]["prev_hash"] == lines[0]["hash"]  # consecutive entries: the export shows the chain


def test_csv_export(activity):
    a, *_ = activity
    resp = a.get(URL, {"format": "csv", "operation": "memory.create"})
    assert resp.status_code == 200 and resp["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(resp.streaming_content).decode())))
    assert len(rows) == 2 and {r["operation"] for r in rows} == {"memory.create"}
    assert rows[0]["namespace"] == "user:alice" and json.loads(rows[0]["details"])["count"] == 1


def test_csv_export_defuses_formulas(alice, api_for):
    audit_record(
        actor=alice,
        operation="memory.read",
        namespace=alice.namespaces.get(),
        details={"note": "x"},
        object_ids=['=HYPERLINK("http://evil")'],
    )
    resp = api_for(alice).get(URL, {"format": "csv"})
    row = next(csv.DictReader(io.StringIO(b"".join(resp.streaming_content).decode())))
    assert row["object_ids"].startswith("'=")


def test_governance_scope_is_required(activity, alice, api_for):
    resp = api_for(alice, scopes=["memories:read", "memories:write"]).get(URL)
    assert resp.status_code == 403 and "governance" in resp.json()["error"]["message"]


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"from": "last tuesday"}, "from"),
        ({"to": "soon"}, "to"),
        ({"from": "2025-02-01T00:00:00Z", "to": "2025-01-01T00:00:00Z"}, "earlier"),
        ({"memory_kind": "dream"}, "memory_kind"),
        ({"operation": "*"}, "operation name"),
        ({"operation": "memory.*.read"}, "operation name"),
        ({"format": "xml"}, "format"),
        ({"order": "sideways"}, "order"),
        ({"memory": "not-a-uuid"}, "memory"),
        ({"colour": "red"}, "Unknown field 'colour'"),
        ({"limit": "0"}, "limit"),
    ],
)
def test_bad_queries_are_400_in_the_error_shape(activity, params, needle):
    a, *_ = activity
    before = AuditEvent.objects.count()
    resp = a.get(URL, params)
    assert resp.status_code == 400, resp.content
    err = resp.json()["error"]
    assert err["code"] in ("invalid", "invalid_filter") and needle in err["message"], err
    assert AuditEvent.objects.count() == before


def test_anonymous_callers_are_refused():
    from rest_framework.test import APIClient

    resp = APIClient().get(URL)
    assert resp.status_code in (401, 403) and "error" in resp.json()
