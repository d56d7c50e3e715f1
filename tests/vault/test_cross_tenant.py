"""A second tenant gets 404 for every memory endpoint of the first tenant's data."""

import pytest

from vault.models import MemCube, MemCubeVersion

pytestmark = pytest.mark.django_db


@pytest.fixture
def alices_memory(alice, api_for):
    resp = api_for(alice).post(
        "/api/v1/memories", {"namespace": "user:alice", "text": "alice's secret plan"}, format="json"
    )
    return resp.json()


def test_every_memory_endpoint_is_404_for_another_tenant(alices_memory, bob, api_for):
    mid, pid = alices_memory["id"], alices_memory["provenance_id"]
    b = api_for(bob)
    assert b.get(f"/api/v1/memories/{mid}").status_code == 404
    assert (
        b.patch(
            f"/api/v1/memories/{mid}", {"expected_version": 1, "text": "pwned"}, format="json"
        ).status_code
        == 404
    )
    assert b.delete(f"/api/v1/memories/{mid}").status_code == 404
    assert b.get(f"/api/v1/memories/{mid}/history").status_code == 404
    assert b.get(f"/api/v1/memories/provenance/{pid}").status_code == 404
    assert b.get("/api/v1/memories?namespace=user:alice").status_code == 404
    assert (
        b.post("/api/v1/memories", {"namespace": "user:alice", "text": "plant"}, format="json").status_code
        == 404
    )
    assert (
        b.post(
            "/api/v1/memories/batch", {"namespace": "user:alice", "memories": [{"text": "x"}]}, format="json"
        ).status_code
        == 404
    )
    assert b.get("/api/v1/memories").json()["count"] == 0
    cube = MemCube.objects.get(pk=mid)
    assert cube.text == "alice's secret plan" and cube.version == 1 and cube.state == "activated"
    assert MemCubeVersion.objects.count() == 1


def test_org_roles_decide_access(alice, bob, make_user, api_for):
    carol = make_user("carol")
    a = api_for(alice)
    a.post("/api/v1/orgs", {"slug": "acme"}, format="json")
    inv = a.post("/api/v1/orgs/acme/invitations", {"username": "bob", "role": "viewer"}, format="json").json()
    api_for(bob).post(f"/api/v1/invitations/{inv['id']}/accept")
    m = a.post("/api/v1/memories", {"namespace": "org:acme", "text": "org knowledge"}, format="json").json()
    b = api_for(bob)
    assert b.get(f"/api/v1/memories/{m['id']}").status_code == 200  # viewers read
    resp = b.patch(f"/api/v1/memories/{m['id']}", {"expected_version": 1, "text": "x"}, format="json")
    assert resp.status_code == 403  # but may not write
    assert api_for(carol).get(f"/api/v1/memories/{m['id']}").status_code == 404  # outsiders see nothing
