"""One audited-read path: every door (API, pages, time machine diff) writes one audit entry for a read,
through `vault.services.memory_reads_record`, and the access statistics follow the same rule everywhere."""

from __future__ import annotations

import pytest
from django.test import Client

from governance.models import AuditEvent
from governance.policy import Subject
from tests.governance.factories import needs_index
from vault.models import MemCube
from vault.services import memory_reads_record

pytestmark = pytest.mark.django_db
AUDIT = "/api/v1/governance/audit"


@pytest.fixture
def memories(alice, api_for):
    client = api_for(alice)
    ids = [
        client.post("/api/v1/memories", {"namespace": "user:alice", "text": t}, format="json").json()["id"]
        for t in ("Ferries to Tarsk leave at nine.", "The Tarsk lighthouse is white.")
    ]
    return client, ids


@pytest.fixture
def page(alice):
    c = Client()
    c.force_login(alice)
    return c


def audited(client, operation):
    """What the owner sees of one operation in the audit API: (object ids, details) per entry."""
    rows = client.get(AUDIT, {"operation": operation, "order": "asc"}).json()["results"]
    return [(sorted(r["object_ids"]), r["details"]) for r in rows]


def test_api_read_by_id_is_audited_once_and_counted(memories):
    client, (first, _) = memories
    body = client.get(f"/api/v1/memories/{first}").json()
    assert body["access_count"] == 1  # the answer shows the read it caused
    assert [ids for ids, _ in audited(client, "memory.read")] == [[first]]
    assert MemCube.objects.get(pk=first).access_count == 1


def test_api_list_history_provenance_are_audited_but_not_counted(memories):
    client, ids = memories
    listing = client.get("/api/v1/memories?namespace=user:alice").json()
    assert listing["count"] == 2
    client.get(f"/api/v1/memories/{ids[0]}/history")
    client.get(f"/api/v1/memories/provenance/{listing['results'][0]['provenance_id']}")
    assert [i for i, _ in audited(client, "memory.list")] == [sorted(ids)]
    assert [i for i, _ in audited(client, "memory.history")] == [[ids[0]]]
    assert len(audited(client, "memory.provenance")) == 1
    assert set(MemCube.objects.values_list("access_count", flat=True)) == {0}


@needs_index
def test_api_and_page_search_are_audited_alike(memories, page, index_now):
    client, ids = memories
    index_now()
    client.post("/api/v1/memories/search", {"query": "Tarsk ferries"}, format="json")
    resp = page.get("/memories/", {"q": "Tarsk ferries"})
    assert resp.status_code == 200 and "Ferries to Tarsk" in resp.content.decode()
    entries = audited(client, "memory.search")
    assert len(entries) == 2
    (api_ids, api_details), (page_ids, page_details) = entries
    assert api_ids == page_ids and ids[0] in api_ids
    assert api_details["query_sha256"] == page_details["query_sha256"]  # a hash, never the query
    assert "Tarsk" not in str(entries)
    assert MemCube.objects.get(pk=ids[0]).hit_count == 2


def test_pages_list_detail_and_home_are_audited(memories, page):
    client, ids = memories
    assert "Ferries to Tarsk" in page.get("/memories/", {"namespace": "user:alice"}).content.decode()
    detail = page.get(f"/memories/{ids[0]}/")
    assert detail.status_code == 200 and "Ferries to Tarsk" in detail.content.decode()
    page.get("/")
    assert [i for i, _ in audited(client, "memory.read")] == [[ids[0]]]
    assert audited(client, "memory.list") == [(sorted(ids), {"door": "page"})] * 2
    assert MemCube.objects.get(pk=ids[0]).access_count == 1


def test_page_detail_of_another_tenants_memory_is_404_and_not_audited(memories, bob):
    _, ids = memories
    c = Client()
    c.force_login(bob)
    assert c.get(f"/memories/{ids[0]}/").status_code == 404
    assert not AuditEvent.objects.filter(operation="memory.read").exists()


def test_time_machine_diff_is_audited(memories):
    client, ids = memories
    snap = client.post("/api/v1/governance/snapshots", {"namespace": "user:alice"}, format="json").json()
    client.patch(f"/api/v1/memories/{ids[1]}", {"expected_version": 1, "text": "It is red."}, format="json")
    diff = client.get("/api/v1/governance/timemachine/diff", {"namespace": "user:alice", "from": snap["id"]})
    assert diff.status_code == 200 and len(diff.json()["changed"]) == 1
    ((diff_ids, details),) = audited(client, "memory.diff")
    assert diff_ids == [ids[1]] and details["from"]["snapshot"] == snap["id"]


def test_one_entry_per_namespace_read(alice, memories):
    # a read that spans namespaces writes one entry in each namespace's log
    from accounts.services import organization_create

    _, ids = memories
    organization_create(owner=alice, slug="tarsk")
    client = memories[0]
    other = client.post("/api/v1/memories", {"namespace": "org:tarsk", "text": "x"}, format="json").json()
    cubes = list(MemCube.objects.filter(pk__in=[*ids, other["id"]]).select_related("namespace"))
    memory_reads_record(actor=Subject(user=alice), cubes=cubes, operation="memory.read")
    rows = AuditEvent.objects.filter(operation="memory.read").order_by("namespace_key")
    assert [(r.namespace_key, len(r.object_ids)) for r in rows] == [("org:tarsk", 1), ("user:alice", 2)]
    memory_reads_record(actor=Subject(user=alice), cubes=[], operation="memory.read")
    assert AuditEvent.objects.filter(operation="memory.read").count() == 2  # nothing read, nothing written
