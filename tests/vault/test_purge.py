"""Right to erasure: after a purge the original text is nowhere (database, index, files); history and the
time machine diff show superseded text only to the namespace's writers; redaction purges history too."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from accounts.models import Namespace, NamespaceKind, Role
from accounts.services import namespace_create
from governance.models import AuditEvent
from governance.policy import Subject
from tests.governance.factories import needs_index, seed
from vault.hooks import PurgeEvent, register_purge_hook, unregister_purge_hook
from vault.models import MemCube, MemCubeVersion
from vault.services import content_hash, memory_purge

pytestmark = pytest.mark.django_db

SECRET = "Zoe Quintrell-Abara"
SECRET_TEXT = f"{SECRET} was treated for asthma at the Harrowgate clinic on 3 May."
EDITED_TEXT = f"Patient {SECRET} was treated at the Harrowgate clinic; follow-up in June."
OTHER_TEXT = "The Harrowgate clinic opens at eight on weekdays."
FRAGMENTS = ("Quintrell", "asthma", "follow-up in June")


def org_with(make_user, slug: str) -> dict[str, object]:
    """An organization with an owner, a member and a viewer (invited, and accepted)."""
    from accounts import services as account_services

    users = {role: make_user(f"{role}-{slug}") for role in (Role.OWNER, Role.MEMBER, Role.VIEWER)}
    org = account_services.organization_create(owner=users[Role.OWNER], slug=slug)
    for role in (Role.MEMBER, Role.VIEWER):
        invitation = account_services.invitation_create(
            actor=users[Role.OWNER], org=org, username=users[role].username, role=role
        )
        account_services.invitation_accept(user=users[role], invitation_id=invitation.id)
    return users


def text_columns_holding(fragment: str) -> list[str]:
    """Every `table.column` of the database (all apps) whose text or JSON holds `fragment`."""
    found = []
    with connection.cursor() as cur:
        cur.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public' "
            "AND data_type IN ('text', 'character varying', 'json', 'jsonb')"
        )
        for table, column in cur.fetchall():
            # identifiers from the catalogue, quoted; the value is a parameter
            t, c = connection.ops.quote_name(table), connection.ops.quote_name(column)
            cur.execute(f"SELECT count(*) FROM {t} WHERE CAST({c} AS text) LIKE %s", [f"%{fragment}%"])  # noqa: S608
            if cur.fetchone()[0]:
                found.append(f"{table}.{column}")
    return found


def files_holding(fragment: str) -> list[str]:
    root = Path(settings.MEMHUB_DATA_DIR)
    needle = fragment.encode()
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.fixture
def events():
    seen: list[PurgeEvent] = []
    register_purge_hook(seen.append)
    yield seen
    unregister_purge_hook(seen.append)


@pytest.fixture
def history(alice, api_for):
    """A memory with two versions, a second memory, and a third merged from the first and the second."""
    client = api_for(alice)
    m = client.post(
        "/api/v1/memories",
        {
            "namespace": "user:alice",
            "text": SECRET_TEXT,
            "title": f"Visit of {SECRET}",
            "entities": [SECRET, "Harrowgate clinic"],
            "metadata": {"patient": SECRET},
            "tags": ["clinic"],
        },
        format="json",
    ).json()
    client.patch(f"/api/v1/memories/{m['id']}", {"expected_version": 1, "text": EDITED_TEXT}, format="json")
    other = client.post("/api/v1/memories", {"namespace": "user:alice", "text": OTHER_TEXT}, format="json")
    merged = client.post(
        "/api/v1/memories/merge", {"sources": [other.json()["id"], m["id"]]}, format="json"
    ).json()
    assert SECRET in merged["text"] and OTHER_TEXT in merged["text"]
    return client, m["id"], merged["id"]


@needs_index
def test_purge_leaves_the_original_text_nowhere(history, events, index_now):
    client, mid, merged_id = history
    index_now()
    from vault.index import IndexFilter, get_index

    index = get_index()
    ns = Namespace.objects.get(key="user:alice")
    assert index.get([merged_id])  # the merged memory quoting the secret is indexed
    before = {
        f"{v.version}": v.content_sha256
        for v in MemCubeVersion.objects.filter(cube_id=mid).order_by("version")
    }
    assert text_columns_holding("Quintrell")  # the probe finds the text while it is there

    # when the namespace owner erases the memory
    resp = client.post(f"/api/v1/memories/{mid}/purge", {"reason": "erasure request 2024-17"}, format="json")
    assert resp.status_code == 200, resp.json()
    assert resp.json()["state"] == "deleted" and SECRET not in resp.json()["text"]
    index_now()

    # then no text or JSON column of any table holds any part of it (versions, audit details, merges)
    for fragment in FRAGMENTS:
        assert text_columns_holding(fragment) == [], fragment
    # the memory merged from it keeps what it quoted from the other memory, and stays live
    merged = client.get(f"/api/v1/memories/{merged_id}").json()
    assert OTHER_TEXT in merged["text"] and SECRET not in merged["text"] and merged["state"] == "activated"
    # the index neither holds the memory nor finds the secret, by id or by search
    assert index.get([mid]) == []
    for row in index.get([merged_id]):
        assert "quintrell" not in str(row).lower()
    hits = index.search(query=f"{SECRET} asthma", filters=IndexFilter(namespaces=[str(ns.id)]), top_k=10)
    assert mid not in {h.id for h in hits}
    search = client.post("/api/v1/memories/search", {"query": "Quintrell asthma"}, format="json").json()
    assert all(SECRET not in r["memory"]["text"] for r in search["results"])
    # no file under the data directory (KV caches, adapters, exports) holds it
    assert files_holding("Quintrell") == []
    # the audit log has a tombstone with the hashes of what was removed, never the text
    tomb = AuditEvent.objects.get(operation="memory.purge")
    assert tomb.details["tombstone"] is True and tomb.details["reason"] == "erasure request 2024-17"
    removed = {r["id"]: r for r in tomb.details["removed"]}
    assert set(removed[mid]["content_sha256s"]) == set(before.values())
    assert removed[merged_id]["relation"] == "merged from it"
    # the hooks (KV artifacts, adapters' training records) were told, with identities and hashes only
    assert len(events) == 1 and set(events[0].cube_ids) == {mid, merged_id}
    assert set(before.values()) <= set(events[0].content_sha256s)
    assert events[0].provenance_ids == (str(MemCube.objects.get(pk=mid).provenance_id),)
    # the owner's history keeps the shape (who, when, which operation) with tombstones for content
    versions = client.get(f"/api/v1/memories/{mid}/history").json()
    assert [v["operation"] for v in versions] == ["create", "overwrite", "merge", "purge"]
    assert {v["text"] for v in versions} == {"[erased]"} and {v["title"] for v in versions} == {""}


def test_purge_twice_is_409_and_a_frozen_memory_is_409(history):
    client, mid, merged_id = history
    assert client.post(f"/api/v1/memories/{mid}/purge", {}, format="json").status_code == 200
    again = client.post(f"/api/v1/memories/{mid}/purge", {}, format="json")
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_purged"
    client.post(f"/api/v1/memories/{merged_id}/lifecycle", {"action": "freeze"}, format="json")
    frozen = client.post(f"/api/v1/memories/{merged_id}/purge", {}, format="json")
    assert frozen.status_code == 409
    assert OTHER_TEXT in MemCube.objects.get(pk=merged_id).text  # nothing was erased


def test_purge_needs_namespace_admin_and_the_governance_scope(history, bob, make_user, api_for, alice):
    client, mid, _ = history
    # another tenant: 404, nothing written
    assert api_for(bob).post(f"/api/v1/memories/{mid}/purge", {}, format="json").status_code == 404
    # a token without the governance scope: 403
    scoped = api_for(alice, scopes=["memories:read", "memories:write"])
    resp = scoped.post(f"/api/v1/memories/{mid}/purge", {}, format="json")
    assert resp.status_code == 403 and "governance" in resp.json()["error"]["message"]
    # a reader the memory was shared with: 403 (it may read, not administer)
    client.post(f"/api/v1/memories/{mid}/acl", {"user": "bob", "permission": "write"}, format="json")
    assert api_for(bob).post(f"/api/v1/memories/{mid}/purge", {}, format="json").status_code == 403
    assert not AuditEvent.objects.filter(operation="memory.purge").exists()
    assert MemCube.objects.get(pk=mid).text == EDITED_TEXT
    # a reason longer than 300 characters is refused by name
    bad = client.post(f"/api/v1/memories/{mid}/purge", {"reason": "x" * 301}, format="json")
    assert bad.status_code == 400 and "reason" in str(bad.json())


def test_a_deleted_memory_can_still_be_purged(history):
    client, mid, _ = history
    assert client.delete(f"/api/v1/memories/{mid}").status_code == 204
    assert MemCubeVersion.objects.filter(cube_id=mid, text=EDITED_TEXT).exists()  # a soft delete keeps it
    assert client.post(f"/api/v1/memories/{mid}/purge", {}, format="json").status_code == 200
    assert not MemCubeVersion.objects.filter(cube_id=mid).exclude(text="[erased]").exists()


def test_purging_a_publishers_memory_erases_the_installed_copies(alice, bob, make_user):
    # given a publisher memory and a copy of it installed in another tenant's installation namespace
    pub = namespace_create(kind=NamespaceKind.PUBLISHER, slug="acme", owner_user=alice)
    inst = namespace_create(kind=NamespaceKind.INSTALLATION, slug="bob-1", owner_user=bob)
    (original,) = seed(pub, alice, SECRET_TEXT)
    copy = seed(inst, bob, SECRET_TEXT + " ", provenance_id=original.provenance_id)[0]
    unrelated = seed(inst, bob, "unrelated installed fact")[0]
    # when the publisher erases it
    memory_purge(actor=Subject(user=alice), cube_id=original.id, reason="subject request")
    # then the buyer's copy is erased too, and the buyer's audit log says so (with hashes only)
    copy.refresh_from_db()
    assert copy.state == "deleted" and copy.text == "[erased]"
    assert not MemCubeVersion.objects.filter(text__contains=SECRET).exists()
    assert MemCube.objects.get(pk=unrelated.id).text == "unrelated installed fact"
    tomb = AuditEvent.objects.get(operation="memory.purge", namespace_key="installation:bob-1")
    assert tomb.object_ids == [str(copy.id)] and "Quintrell" not in str(tomb.details)


def test_history_shows_superseded_text_to_writers_only(history, make_user, api_for, alice):
    client, mid, _ = history
    carol = make_user("carol")
    client.post(f"/api/v1/memories/{mid}/acl", {"user": "carol", "permission": "read"}, format="json")
    # the owner (a writer) sees every version
    owner_view = client.get(f"/api/v1/memories/{mid}/history").json()
    assert [v["text"] for v in owner_view][:2] == [SECRET_TEXT, EDITED_TEXT]
    # a reader sees the current version only
    reader_view = api_for(carol).get(f"/api/v1/memories/{mid}/history").json()
    assert [v["version"] for v in reader_view] == [owner_view[-1]["version"]]
    assert SECRET_TEXT not in str(reader_view)


def test_org_viewer_sees_current_versions_only(make_user, api_for):
    users = org_with(make_user, "clinic")
    ns = Namespace.objects.get(key="org:clinic")
    owner, viewer = api_for(users[Role.OWNER]), api_for(users[Role.VIEWER])
    m = owner.post("/api/v1/memories", {"namespace": ns.key, "text": SECRET_TEXT}, format="json").json()
    owner.patch(f"/api/v1/memories/{m['id']}", {"expected_version": 1, "text": "redacted"}, format="json")
    assert [v["text"] for v in viewer.get(f"/api/v1/memories/{m['id']}/history").json()] == ["redacted"]
    member = api_for(users[Role.MEMBER])  # members write org namespaces: they see history
    assert len(member.get(f"/api/v1/memories/{m['id']}/history").json()) == 2
    owner.delete(f"/api/v1/memories/{m['id']}")
    assert viewer.get(f"/api/v1/memories/{m['id']}/history").status_code == 404
    deleted = {"namespace": ns.key, "state": "deleted"}
    assert viewer.get("/api/v1/memories", deleted).json()["count"] == 0
    assert [r["text"] for r in member.get("/api/v1/memories", deleted).json()["results"]] == ["redacted"]


def test_diff_hides_superseded_text_from_readers(make_user, api_for):
    users = org_with(make_user, "ward")
    owner, viewer = api_for(users[Role.OWNER]), api_for(users[Role.VIEWER])
    snap = owner.post("/api/v1/governance/snapshots", {"namespace": "org:ward"}, format="json")
    m = owner.post("/api/v1/memories", {"namespace": "org:ward", "text": SECRET_TEXT}, format="json").json()
    gone = owner.post("/api/v1/memories", {"namespace": "org:ward", "text": "short-lived"}, format="json")
    snap2 = owner.post("/api/v1/governance/snapshots", {"namespace": "org:ward"}, format="json").json()
    owner.patch(f"/api/v1/memories/{m['id']}", {"expected_version": 1, "text": "redacted"}, format="json")
    owner.delete(f"/api/v1/memories/{gone.json()['id']}")
    url = "/api/v1/governance/timemachine/diff"
    as_owner = owner.get(url, {"namespace": "org:ward", "from": snap2["id"]}).json()
    assert as_owner["changed"][0]["before"]["text"] == SECRET_TEXT
    assert as_owner["removed"][0]["text"] == "short-lived"
    as_viewer = viewer.get(url, {"namespace": "org:ward", "from": snap2["id"]}).json()
    assert as_viewer["changed"][0]["before"]["text"] is None
    assert as_viewer["changed"][0]["after"]["text"] == "redacted"  # the current version is readable
    assert as_viewer["removed"][0]["text"] is None
    assert SECRET_TEXT not in str(as_viewer) and "short-lived" not in str(as_viewer)
    added = viewer.get(url, {"namespace": "org:ward", "from": snap.json()["id"]}).json()["added"]
    assert [a["text"] for a in added] == ["redacted"]


def test_pii_redaction_purges_the_original_from_history(alice, api_for):
    client = api_for(alice)
    email = "zoe.quintrell@fastmail.fm"
    m = client.post(
        "/api/v1/memories", {"namespace": "user:alice", "text": f"Write to {email} about it."}, format="json"
    ).json()
    client.patch(
        f"/api/v1/memories/{m['id']}",
        {"expected_version": 1, "mode": "append", "text": f"Copy {email} too."},
        format="json",
    )
    resp = client.post(
        "/api/v1/governance/pii/scan", {"namespace": "user:alice", "mode": "redact"}, format="json"
    )
    assert resp.status_code in (200, 201, 202) and resp.json()["status"] == "done", resp.json()
    versions = client.get(f"/api/v1/memories/{m['id']}/history").json()
    assert len(versions) == 3 and versions[-1]["operation"] == "overwrite"
    assert email not in str(versions) and not MemCubeVersion.objects.filter(text__contains=email).exists()
    assert "Write to" in versions[0]["text"]  # the rest of the old text stays
    # the scrubbed versions' hashes describe what they hold now
    for v in MemCubeVersion.objects.filter(cube_id=m["id"]):
        assert v.content_sha256 == content_hash(kind=v.kind, text=v.text)
