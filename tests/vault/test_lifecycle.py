"""Lifecycle: activate, archive, restore, expire, merge, freeze; 409 on frozen memories and invalid
transitions; archived and expired memories leave the hot index and come back on restore; the TTL and
cold-archival sweeps (Celery beat) are idempotent."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from governance import tasks
from governance.lifecycle import lifecycle_archive_cold, lifecycle_expire_due
from governance.models import AuditEvent
from tests.governance.factories import needs_index, org_with_roles
from vault.models import IndexOutbox, MemCube, MemCubeVersion

pytestmark = pytest.mark.django_db


@pytest.fixture
def client(alice, api_for):
    return api_for(alice)


def create(client, text="The Rhine flows into the North Sea.", **extra):
    resp = client.post("/api/v1/memories", {"namespace": "user:alice", "text": text, **extra}, format="json")
    assert resp.status_code == 201, resp.json()
    return resp.json()


def act(client, mid, action, **extra):
    return client.post(f"/api/v1/memories/{mid}/lifecycle", {"action": action, **extra}, format="json")


def pending(mid):
    return list(
        IndexOutbox.objects.filter(cube_id=mid, processed_at__isnull=True).values_list("op", flat=True)
    )


def test_archive_then_restore(client):
    m = create(client)
    IndexOutbox.objects.update(processed_at=timezone.now())
    resp = act(client, m["id"], "archive", reason="cold")
    assert resp.status_code == 200 and resp.json()["state"] == "archived" and resp.json()["version"] == 2
    assert pending(m["id"]) == ["delete"]  # leaves the hot index
    # still readable by id and listable by state: archived, not gone
    assert client.get(f"/api/v1/memories/{m['id']}").json()["state"] == "archived"
    assert client.get("/api/v1/memories?state=archived").json()["count"] == 1
    resp = act(client, m["id"], "restore")
    assert resp.status_code == 200 and resp.json()["state"] == "activated"
    assert pending(m["id"]) == ["delete", "upsert"]  # and back into it
    history = client.get(f"/api/v1/memories/{m['id']}/history").json()
    assert [(h["operation"], h["state"]) for h in history] == [
        ("create", "activated"),
        ("lifecycle", "archived"),
        ("lifecycle", "activated"),
    ]
    assert history[1]["reason"] == "cold"
    assert [
        e for e in AuditEvent.objects.values_list("operation", flat=True) if "archive" in e or "restore" in e
    ] == ["memory.archive", "memory.restore"]


@needs_index
def test_archived_memories_leave_search_and_come_back(client, index_now):
    m = create(client)
    index_now()

    def found():
        body = client.post("/api/v1/memories/search", {"query": "Rhine North Sea"}, format="json").json()
        return [h["memory"]["id"] for h in body["results"]]

    assert found() == [m["id"]]
    act(client, m["id"], "archive")
    index_now()
    assert found() == []
    act(client, m["id"], "restore")
    index_now()
    assert found() == [m["id"]]


def test_activate_a_generated_memory(client):
    m = create(client)
    MemCube.objects.filter(pk=m["id"]).update(state="generated")
    assert act(client, m["id"], "activate").json()["state"] == "activated"


def test_expire_and_restore_with_a_new_ttl(client):
    m = create(client, expires_at=(timezone.now() - timedelta(days=1)).isoformat())
    assert act(client, m["id"], "expire").json()["state"] == "expired"
    later = timezone.now() + timedelta(days=30)
    resp = act(client, m["id"], "restore", expires_at=later.isoformat())
    assert resp.status_code == 200 and resp.json()["state"] == "activated"
    assert MemCube.objects.get(pk=m["id"]).expires_at == later
    # restoring an expired memory without a new expiry clears the passed one, so the sweep leaves it be
    act(client, m["id"], "expire")
    MemCube.objects.filter(pk=m["id"]).update(expires_at=timezone.now() - timedelta(hours=1))
    act(client, m["id"], "restore")
    assert MemCube.objects.get(pk=m["id"]).expires_at is None
    assert lifecycle_expire_due() == 0


@pytest.mark.parametrize(
    ("setup_state", "action"),
    [
        ("activated", "activate"),
        ("activated", "restore"),
        ("archived", "activate"),
        ("expired", "archive"),
        ("archived", "archive"),
    ],
)
def test_invalid_transitions_are_409_and_write_nothing(client, setup_state, action):
    m = create(client)
    MemCube.objects.filter(pk=m["id"]).update(state=setup_state)
    versions, audits = MemCubeVersion.objects.count(), AuditEvent.objects.count()
    resp = act(client, m["id"], action)
    assert resp.status_code == 409
    err = resp.json()["error"]
    assert err["code"] == "invalid_transition" and setup_state in err["message"]
    assert MemCubeVersion.objects.count() == versions and AuditEvent.objects.count() == audits
    assert MemCube.objects.get(pk=m["id"]).state == setup_state


def test_frozen_memory_refuses_every_change_until_unfrozen(client):
    m = create(client)
    resp = act(client, m["id"], "freeze")
    assert resp.status_code == 200 and resp.json()["frozen"] is True and resp.json()["version"] == 1
    for resp in (
        client.patch(f"/api/v1/memories/{m['id']}", {"expected_version": 1, "text": "x"}, format="json"),
        client.delete(f"/api/v1/memories/{m['id']}"),
        act(client, m["id"], "archive"),
        act(client, m["id"], "expire"),
    ):
        assert resp.status_code == 409 and resp.json()["error"]["code"] == "frozen"
    assert act(client, m["id"], "freeze").status_code == 409  # already frozen
    assert MemCubeVersion.objects.filter(cube_id=m["id"]).count() == 1
    assert act(client, m["id"], "unfreeze").json()["frozen"] is False
    assert act(client, m["id"], "unfreeze").status_code == 409
    assert (
        client.patch(
            f"/api/v1/memories/{m['id']}", {"expected_version": 1, "text": "x"}, format="json"
        ).status_code
        == 200
    )
    assert list(
        AuditEvent.objects.filter(operation__in=["memory.freeze", "memory.unfreeze"]).values_list(
            "operation", flat=True
        )
    ) == ["memory.freeze", "memory.unfreeze"]


def test_lifecycle_needs_admin_rights(make_user, api_for):
    _org, users = org_with_roles(make_user)
    m = (
        api_for(users["member"])
        .post("/api/v1/memories", {"namespace": "org:acme", "text": "x"}, format="json")
        .json()
    )
    assert act(api_for(users["member"]), m["id"], "archive").status_code == 403
    assert act(api_for(users["outsider"]), m["id"], "archive").status_code == 404
    assert act(api_for(users["admin"]), m["id"], "archive").status_code == 200


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"action": "vanish"}, "action"),
        ({}, "action"),
        ({"action": "archive", "expires_at": "2999-01-01T00:00:00Z"}, "expires_at"),
        ({"action": "restore", "expires_at": "2001-01-01T00:00:00Z"}, "future"),
        ({"action": "archive", "expected_version": 7}, "version 1, not 7"),
        ({"action": "archive", "colour": "red"}, "Unknown field 'colour'"),
    ],
)
def test_bad_lifecycle_requests_are_4xx_and_write_nothing(client, body, needle):
    m = create(client)
    if "restore" in body.values():
        MemCube.objects.filter(pk=m["id"]).update(state="archived")
    versions, audits = MemCubeVersion.objects.count(), AuditEvent.objects.count()
    resp = client.post(f"/api/v1/memories/{m['id']}/lifecycle", body, format="json")
    assert 400 <= resp.status_code < 500
    assert needle in resp.json()["error"]["message"], resp.json()
    assert MemCubeVersion.objects.count() == versions and AuditEvent.objects.count() == audits


# --- merge ---------------------------------------------------------------------------------------------


def test_merge_makes_one_memory_and_links_the_sources(client):
    a = create(client, "Bern is the Swiss capital.", tags=["ch"], sensitivity="internal")
    b = create(client, "Bern lies on the Aare.", tags=["ch", "rivers"], sensitivity="confidential")
    IndexOutbox.objects.update(processed_at=timezone.now())
    resp = client.post(
        "/api/v1/memories/merge", {"sources": [a["id"], b["id"]], "reason": "dedupe"}, format="json"
    )
    assert resp.status_code == 201, resp.json()
    merged = resp.json()
    assert merged["text"] == "Bern is the Swiss capital.\n\nBern lies on the Aare."
    assert merged["tags"] == ["ch", "rivers"] and merged["sensitivity"] == "confidential"
    assert merged["metadata"]["merged_from"] == [a["id"], b["id"]]
    for src in (a, b):
        got = client.get(f"/api/v1/memories/{src['id']}").json()
        assert got["state"] == "merged" and got["merged_into"] == merged["id"]
        assert client.get(f"/api/v1/memories/{src['id']}/history").json()[-1]["operation"] == "merge"
        assert pending(src["id"]) == ["delete"]
    assert pending(merged["id"]) == ["upsert"]
    ev = AuditEvent.objects.get(operation="memory.merge")
    assert ev.object_ids == [merged["id"], a["id"], b["id"]]


def test_merge_with_given_text_and_restore_of_a_source(client):
    a, b = create(client, "one"), create(client, "two")
    merged = client.post(
        "/api/v1/memories/merge",
        {"sources": [a["id"], b["id"]], "text": "one and two", "title": "both"},
        format="json",
    ).json()
    assert merged["text"] == "one and two" and merged["title"] == "both"
    restored = act(client, a["id"], "restore").json()
    assert restored["state"] == "activated" and restored["merged_into"] is None


def test_merge_refusals_write_nothing(client, bob, api_for, make_user):
    a, b = create(client, "one"), create(client, "two")
    bobs = (
        api_for(bob).post("/api/v1/memories", {"namespace": "user:bob", "text": "bob"}, format="json").json()
    )
    frozen = create(client, "ice")
    act(client, frozen["id"], "freeze")
    archived = create(client, "old")
    act(client, archived["id"], "archive")
    cubes, versions = MemCube.objects.count(), MemCubeVersion.objects.count()
    cases = [
        ({"sources": [a["id"]]}, 400, "sources"),
        ({"sources": [a["id"], a["id"]]}, 400, "two distinct"),
        ({"sources": [a["id"], bobs["id"]]}, 404, "not found"),
        ({"sources": [a["id"], frozen["id"]]}, 409, "Frozen"),
        ({"sources": [a["id"], archived["id"]]}, 409, "live"),
        ({"sources": [a["id"], b["id"]], "text": ""}, 400, "text"),
        ({"sources": [a["id"], "not-a-uuid"]}, 400, "sources"),
        ({"sources": [a["id"], b["id"]], "priority": 3}, 400, "Unknown field 'priority'"),
    ]
    for body, status, needle in cases:
        resp = client.post("/api/v1/memories/merge", body, format="json")
        assert resp.status_code == status, (body, resp.json())
        assert needle in resp.json()["error"]["message"], (body, resp.json())
    assert MemCube.objects.count() == cubes and MemCubeVersion.objects.count() == versions
    assert MemCube.objects.get(pk=a["id"]).state == "activated"


def test_merge_across_namespaces_is_refused(make_user, api_for):
    _org, users = org_with_roles(make_user)
    owner = api_for(users["owner"])
    a = owner.post("/api/v1/memories", {"namespace": "org:acme", "text": "org"}, format="json").json()
    b = owner.post(
        "/api/v1/memories", {"namespace": f"user:{users['owner'].username}", "text": "mine"}, format="json"
    ).json()
    resp = owner.post("/api/v1/memories/merge", {"sources": [a["id"], b["id"]]}, format="json")
    assert resp.status_code == 400 and "one namespace" in resp.json()["error"]["message"]


def test_viewers_cannot_merge(make_user, api_for):
    _org, users = org_with_roles(make_user)
    owner = api_for(users["owner"])
    ids = [
        owner.post("/api/v1/memories", {"namespace": "org:acme", "text": t}, format="json").json()["id"]
        for t in ("a", "b")
    ]
    resp = api_for(users["viewer"]).post("/api/v1/memories/merge", {"sources": ids}, format="json")
    assert resp.status_code == 403


# --- sweeps (Celery beat) ------------------------------------------------------------------------------


def test_ttl_sweep_expires_due_memories_once(client):
    now = timezone.now()
    due = create(client, "due", expires_at=(now - timedelta(minutes=1)).isoformat())
    later = create(client, "later", expires_at=(now + timedelta(days=1)).isoformat())
    frozen = create(client, "frozen", expires_at=(now - timedelta(minutes=1)).isoformat())
    act(client, frozen["id"], "freeze")
    forever = create(client, "forever")
    assert tasks.lifecycle_expire_due.delay().get() == 1
    states = dict(MemCube.objects.values_list("id", "state"))
    assert states[MemCube.objects.get(text="due").id] == "expired"
    assert {states[MemCube.objects.get(pk=m["id"]).id] for m in (later, frozen, forever)} == {"activated"}
    assert pending(due["id"])[-1] == "delete"
    # idempotent: a second run changes nothing
    versions = MemCubeVersion.objects.count()
    assert lifecycle_expire_due() == 0 and MemCubeVersion.objects.count() == versions
    ev = AuditEvent.objects.get(operation="memory.expire")
    assert ev.actor_label == "system:ttl-expiry" and ev.object_ids == [due["id"]]


def test_ttl_sweep_takes_ids(client):
    past = (timezone.now() - timedelta(minutes=1)).isoformat()
    one, two = create(client, "one", expires_at=past), create(client, "two", expires_at=past)
    assert tasks.lifecycle_expire_due.delay(cube_ids=[one["id"]]).get() == 1
    assert MemCube.objects.get(pk=two["id"]).state == "activated"


def test_cold_archival_sweep(client, settings):
    now = timezone.now()
    cold, warm, fresh = create(client, "cold"), create(client, "warm"), create(client, "fresh")
    MemCube.objects.filter(pk__in=[cold["id"], warm["id"]]).update(created_at=now - timedelta(days=200))
    MemCube.objects.filter(pk=cold["id"]).update(last_accessed_at=now - timedelta(days=120))
    MemCube.objects.filter(pk=warm["id"]).update(last_accessed_at=now - timedelta(days=5))
    assert lifecycle_archive_cold(now=now) == 1  # default: 90 days
    assert MemCube.objects.get(pk=cold["id"]).state == "archived"
    assert {MemCube.objects.get(pk=m["id"]).state for m in (warm, fresh)} == {"activated"}
    assert lifecycle_archive_cold(now=now) == 0  # idempotent
    settings.MEMHUB_ARCHIVE_AFTER_DAYS = 3
    assert tasks.lifecycle_archive_cold.delay().get() == 1  # now 'warm' is cold too; 'fresh' was just made
    assert MemCube.objects.get(pk=warm["id"]).state == "archived"
    assert (
        AuditEvent.objects.filter(operation="memory.archive", actor_label="system:cold-archival").count() == 2
    )


def test_sweep_command(client):
    from io import StringIO

    from django.core.management import call_command

    create(client, "due", expires_at=(timezone.now() - timedelta(minutes=1)).isoformat())
    out = StringIO()
    call_command("lifecycle_sweep", stdout=out)
    assert "expired 1" in out.getvalue()
