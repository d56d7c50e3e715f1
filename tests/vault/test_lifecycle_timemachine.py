"""Time machine: snapshot a namespace, change it, diff, roll back, and the namespace reads as it did;
history only grows (rollback writes new versions)."""

from __future__ import annotations

import pytest
from django.utils import timezone

from accounts import services as account_services
from accounts.models import NamespaceKind
from governance.models import AuditEvent, Snapshot, SnapshotEntry
from tests.governance.factories import needs_index, org_with_roles, seed
from vault.models import MemCube, MemCubeVersion

pytestmark = pytest.mark.django_db
SNAPSHOTS = "/api/v1/governance/snapshots"
DIFF = "/api/v1/governance/timemachine/diff"
ROLLBACK = "/api/v1/governance/timemachine/rollback"


@pytest.fixture
def client(alice, api_for):
    return api_for(alice)


def create(client, text, **extra):
    return client.post(
        "/api/v1/memories", {"namespace": "user:alice", "text": text, **extra}, format="json"
    ).json()


def reads(client):
    """What the namespace reads as: every memory that is not deleted, with what it says and its state."""
    body = client.get("/api/v1/memories?namespace=user:alice&limit=200").json()
    return sorted((m["id"], m["text"], tuple(m["tags"]), m["state"]) for m in body["results"])


def change_everything(client, ids):
    _keep, edit, drop, cold = ids
    client.patch(
        f"/api/v1/memories/{edit}", {"expected_version": 1, "text": "edited", "tags": ["new"]}, format="json"
    )
    client.delete(f"/api/v1/memories/{drop}")
    client.post(f"/api/v1/memories/{cold}/lifecycle", {"action": "archive"}, format="json")
    return create(client, "added after the snapshot")["id"]


@pytest.fixture
def namespace_with_history(client):
    ids = [create(client, t, tags=["t"])["id"] for t in ("keep", "edit", "drop", "cold")]
    return ids


def test_round_trip_snapshot_change_rollback(client, namespace_with_history):
    ids = namespace_with_history
    before = reads(client)
    snap = client.post(SNAPSHOTS, {"namespace": "user:alice", "name": "before-cleanup"}, format="json")
    assert snap.status_code == 201 and snap.json()["memory_count"] == 4
    snapshot_id = snap.json()["id"]
    added = change_everything(client, ids)
    assert reads(client) != before
    versions_before_rollback = MemCubeVersion.objects.count()

    resp = client.post(ROLLBACK, {"namespace": "user:alice", "snapshot": snapshot_id}, format="json")

    assert resp.status_code == 200, resp.json()
    result = resp.json()
    assert sorted(result["restored"]) == sorted(ids[1:]) and result["removed"] == [added]
    assert result["unchanged"] == 1
    assert reads(client) == before  # the namespace reads as it did
    # history was not rewritten: new versions on top, the old ones intact
    assert MemCubeVersion.objects.count() == versions_before_rollback + 4
    history = client.get(f"/api/v1/memories/{ids[1]}/history").json()
    assert [h["operation"] for h in history] == ["create", "overwrite", "restore"]
    assert history[1]["text"] == "edited" and history[2]["text"] == "edit"
    assert client.get(f"/api/v1/memories/{ids[2]}").json()["version"] == 3  # the deleted one is back
    assert client.get(f"/api/v1/memories/{added}").status_code == 404  # the later one is (soft) gone
    ev = AuditEvent.objects.get(operation="namespace.rollback")
    assert ev.details["restored"] == 3 and ev.details["removed"] == 1
    # rolling back again finds nothing to do
    again = client.post(ROLLBACK, {"namespace": "user:alice", "snapshot": snapshot_id}, format="json").json()
    assert again["restored"] == [] and again["removed"] == []


def test_diff_between_a_snapshot_and_now(client, namespace_with_history):
    ids = namespace_with_history
    snapshot_id = client.post(SNAPSHOTS, {"namespace": "user:alice"}, format="json").json()["id"]
    added = change_everything(client, ids)
    resp = client.get(DIFF, {"namespace": "user:alice", "from": snapshot_id})
    assert resp.status_code == 200
    d = resp.json()
    assert [m["id"] for m in d["added"]] == [added]
    assert [m["id"] for m in d["removed"]] == [ids[2]]
    changed = {c["id"]: c for c in d["changed"]}
    assert set(changed) == {ids[1], ids[3]}
    assert changed[ids[1]]["fields"] == ["text", "tags"] and changed[ids[1]]["after"]["text"] == "edited"
    assert changed[ids[3]]["fields"] == ["state"] and changed[ids[3]]["after"]["state"] == "archived"
    assert d["unchanged"] == 1 and d["source"]["snapshot"] == snapshot_id and d["target"]["at"] == "now"
    # and the other way round
    back = client.get(DIFF, {"namespace": "user:alice", "from": "now", "to": snapshot_id}).json()
    assert [m["id"] for m in back["removed"]] == [added] and [m["id"] for m in back["added"]] == [ids[2]]


def test_diff_and_rollback_by_timestamp(client, namespace_with_history):
    ids = namespace_with_history
    t0 = timezone.now()
    before = reads(client)
    change_everything(client, ids)
    t1 = timezone.now()
    d = client.get(DIFF, {"namespace": "user:alice", "from": t0.isoformat(), "to": t1.isoformat()}).json()
    assert len(d["added"]) == 1 and len(d["removed"]) == 1 and len(d["changed"]) == 2
    # a snapshot taken afterwards of the earlier time pins the same pairs
    snap = client.post(
        SNAPSHOTS, {"namespace": "user:alice", "name": "t0", "at": t0.isoformat()}, format="json"
    ).json()
    assert snap["memory_count"] == 4
    resp = client.post(ROLLBACK, {"namespace": "user:alice", "at": t0.isoformat()}, format="json")
    assert resp.status_code == 200 and reads(client) == before


def test_dry_run_writes_nothing(client, namespace_with_history):
    ids = namespace_with_history
    snapshot_id = client.post(SNAPSHOTS, {"namespace": "user:alice"}, format="json").json()["id"]
    change_everything(client, ids)
    versions, after = MemCubeVersion.objects.count(), reads(client)
    resp = client.post(
        ROLLBACK, {"namespace": "user:alice", "snapshot": snapshot_id, "dry_run": True}, format="json"
    ).json()
    assert resp["dry_run"] is True and len(resp["restored"]) == 3 and len(resp["removed"]) == 1
    assert MemCubeVersion.objects.count() == versions and reads(client) == after


def test_a_frozen_memory_blocks_the_whole_rollback(client, namespace_with_history):
    ids = namespace_with_history
    snapshot_id = client.post(SNAPSHOTS, {"namespace": "user:alice"}, format="json").json()["id"]
    change_everything(client, ids)
    client.post(f"/api/v1/memories/{ids[1]}/lifecycle", {"action": "freeze"}, format="json")
    versions, after = MemCubeVersion.objects.count(), reads(client)
    resp = client.post(ROLLBACK, {"namespace": "user:alice", "snapshot": snapshot_id}, format="json")
    assert resp.status_code == 409 and resp.json()["error"]["extra"]["ids"] == [ids[1]]
    assert MemCubeVersion.objects.count() == versions and reads(client) == after
    assert not AuditEvent.objects.filter(operation="namespace.rollback").exists()


def test_snapshots_are_listed_and_shown(client, namespace_with_history):
    for name in ("first", "second"):
        client.post(SNAPSHOTS, {"namespace": "user:alice", "name": name}, format="json")
    listed = client.get(SNAPSHOTS, {"namespace": "user:alice"}).json()
    assert listed["count"] == 2 and {s["name"] for s in listed["results"]} == {"first", "second"}
    detail = client.get(f"{SNAPSHOTS}/{listed['results'][0]['id']}").json()
    assert sorted(m["id"] for m in detail["memories"]) == sorted(namespace_with_history)
    assert {m["version"] for m in detail["memories"]} == {1}


@needs_index
def test_rollback_restores_the_index(client, namespace_with_history, index_now):
    ids = namespace_with_history
    snapshot_id = client.post(SNAPSHOTS, {"namespace": "user:alice"}, format="json").json()["id"]
    change_everything(client, ids)
    client.post(ROLLBACK, {"namespace": "user:alice", "snapshot": snapshot_id}, format="json")
    index_now()
    hits = client.post("/api/v1/memories/search", {"query": "cold", "top_k": 10}, format="json").json()
    assert ids[3] in [h["memory"]["id"] for h in hits["results"]]  # un-archived, searchable again


def test_who_may_use_the_time_machine(make_user, api_for):
    _org, users = org_with_roles(make_user)
    owner = api_for(users["owner"])
    owner.post("/api/v1/memories", {"namespace": "org:acme", "text": "x"}, format="json")
    snapshot_id = owner.post(SNAPSHOTS, {"namespace": "org:acme"}, format="json").json()["id"]
    viewer, member, outsider = (api_for(users[r]) for r in ("viewer", "member", "outsider"))
    # readers look back; admins snapshot; admins with write rights roll back
    assert viewer.get(SNAPSHOTS, {"namespace": "org:acme"}).status_code == 200
    assert viewer.get(DIFF, {"namespace": "org:acme", "from": snapshot_id}).status_code == 200
    assert viewer.get(f"{SNAPSHOTS}/{snapshot_id}").status_code == 200
    assert viewer.post(SNAPSHOTS, {"namespace": "org:acme"}, format="json").status_code == 403
    assert (
        member.post(ROLLBACK, {"namespace": "org:acme", "snapshot": snapshot_id}, format="json").status_code
        == 403
    )
    assert outsider.get(SNAPSHOTS, {"namespace": "org:acme"}).status_code == 404
    assert outsider.get(f"{SNAPSHOTS}/{snapshot_id}").status_code == 404
    assert outsider.get(DIFF, {"namespace": "org:acme", "from": snapshot_id}).status_code == 404
    assert (
        api_for(users["admin"])
        .post(ROLLBACK, {"namespace": "org:acme", "snapshot": snapshot_id}, format="json")
        .status_code
        == 200
    )


def test_installed_packs_cannot_be_rolled_back(alice, api_for):
    ns = account_services.namespace_create(
        kind=NamespaceKind.INSTALLATION, slug="alice-pack", owner_user=alice
    )
    seed(ns, alice, "licensed")
    client = api_for(alice)
    snap = client.post(SNAPSHOTS, {"namespace": ns.key}, format="json")
    assert snap.status_code == 201
    resp = client.post(ROLLBACK, {"namespace": ns.key, "snapshot": snap.json()["id"]}, format="json")
    assert resp.status_code == 403 and "read-only" in resp.json()["error"]["message"]


@pytest.mark.parametrize(
    ("url", "method", "body", "status", "needle"),
    [
        (ROLLBACK, "post", {"namespace": "user:alice"}, 400, "exactly one of 'snapshot' and 'at'"),
        (
            ROLLBACK,
            "post",
            {
                "namespace": "user:alice",
                "snapshot": "00000000-0000-0000-0000-000000000000",
                "at": "2020-01-01T00:00:00Z",
            },
            400,
            "exactly one",
        ),
        (ROLLBACK, "post", {"namespace": "user:alice", "at": "2999-01-01T00:00:00Z"}, 400, "future"),
        (
            ROLLBACK,
            "post",
            {"namespace": "user:alice", "snapshot": "00000000-0000-0000-0000-000000000000"},
            404,
            "Snapshot",
        ),
        (ROLLBACK, "post", {"namespace": "user:nobody", "at": "2020-01-01T00:00:00Z"}, 404, "not found"),
        (ROLLBACK, "post", {"namespace": "user:alice", "at": "yesterday"}, 400, "at"),
        (
            ROLLBACK,
            "post",
            {"namespace": "user:alice", "at": "2020-01-01T00:00:00Z", "force": True},
            400,
            "Unknown field 'force'",
        ),
        (SNAPSHOTS, "post", {"namespace": "user:alice", "at": "2999-01-01T00:00:00Z"}, 400, "future"),
        (SNAPSHOTS, "post", {"namespace": "user:alice", "name": "no spaces please"}, 400, "name"),
        (SNAPSHOTS, "post", {}, 400, "namespace"),
        (SNAPSHOTS, "get", {}, 400, "namespace"),
        (DIFF, "get", {"namespace": "user:alice", "from": "last week"}, 400, "'from' must be"),
        (
            DIFF,
            "get",
            {"namespace": "user:alice", "from": "now", "to": "2999-01-01T00:00:00Z"},
            400,
            "future",
        ),
        (DIFF, "get", {"namespace": "user:alice"}, 400, "from"),
        (
            DIFF,
            "get",
            {"namespace": "user:alice", "from": "00000000-0000-0000-0000-000000000000"},
            404,
            "Snapshot",
        ),
    ],
)
def test_bad_time_machine_requests_are_4xx_and_write_nothing(
    client, namespace_with_history, url, method, body, status, needle
):
    # a refused request writes nothing but the record of the refusal (`access.denied`)
    written = AuditEvent.objects.exclude(operation="access.denied")
    counts = (MemCubeVersion.objects.count(), Snapshot.objects.count(), written.count())
    resp = client.post(url, body, format="json") if method == "post" else client.get(url, body)
    assert resp.status_code == status, resp.json()
    assert needle in resp.json()["error"]["message"], resp.json()
    assert (MemCubeVersion.objects.count(), Snapshot.objects.count(), written.count()) == counts


def test_duplicate_snapshot_name_is_409(client, namespace_with_history):
    client.post(SNAPSHOTS, {"namespace": "user:alice", "name": "v1"}, format="json")
    resp = client.post(SNAPSHOTS, {"namespace": "user:alice", "name": "v1"}, format="json")
    assert resp.status_code == 409 and Snapshot.objects.count() == 1 and SnapshotEntry.objects.count() == 4


def test_another_namespaces_snapshot_is_404(client, bob, api_for, namespace_with_history):
    b = api_for(bob)
    b.post("/api/v1/memories", {"namespace": "user:bob", "text": "bob"}, format="json")
    bobs = b.post(SNAPSHOTS, {"namespace": "user:bob"}, format="json").json()["id"]
    assert client.get(DIFF, {"namespace": "user:alice", "from": bobs}).status_code == 404
    assert (
        client.post(ROLLBACK, {"namespace": "user:alice", "snapshot": bobs}, format="json").status_code == 404
    )
    assert MemCube.objects.filter(state="deleted").count() == 0


def test_rollback_does_not_bring_back_a_purged_memory(client, namespace_with_history):
    ids = namespace_with_history
    snap = client.post(SNAPSHOTS, {"namespace": "user:alice"}, format="json").json()
    assert client.post(f"/api/v1/memories/{ids[0]}/purge", {}, format="json").status_code == 200
    resp = client.post(ROLLBACK, {"namespace": "user:alice", "snapshot": snap["id"]}, format="json")
    assert resp.status_code == 200 and ids[0] not in resp.json()["restored"]
    cube = MemCube.objects.get(pk=ids[0])
    assert cube.state == "deleted" and cube.text == "[erased]"
    assert ids[0] not in {m[0] for m in reads(client)}
