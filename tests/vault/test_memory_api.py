"""Memory API: create, read, versioned update, soft delete, history, provenance, and every bad input."""

import pytest

from governance.models import AuditEvent
from vault.models import IndexOutbox, MemCube, MemCubeVersion

pytestmark = pytest.mark.django_db


def create(client, **overrides):
    body = {"namespace": "user:alice", "text": "Paris is the capital of France.", "tags": ["geo"]}
    body.update(overrides)
    return client.post("/api/v1/memories", body, format="json")


def test_create_then_get(alice, api_for):
    client = api_for(alice)
    resp = create(client, title="Capital", valid_from="2020-01-01T00:00:00Z")
    assert resp.status_code == 201, resp.json()
    m = resp.json()
    assert m["version"] == 1 and m["state"] == "activated" and m["namespace"] == "user:alice"
    assert m["owner"] == "alice" and len(m["content_sha256"]) == 64
    got = client.get(f"/api/v1/memories/{m['id']}").json()
    assert got["text"] == "Paris is the capital of France." and got["access_count"] == 1
    # the write queued index work in the same transaction
    assert IndexOutbox.objects.filter(cube_id=m["id"], processed_at__isnull=True).exists()


def test_batch_create_is_all_or_nothing(alice, api_for):
    client = api_for(alice)
    ok = client.post(
        "/api/v1/memories/batch",
        {"namespace": "user:alice", "memories": [{"text": "one"}, {"text": "two", "tags": ["t"]}]},
        format="json",
    )
    assert ok.status_code == 201 and len(ok.json()) == 2
    bad = client.post(
        "/api/v1/memories/batch",
        {"namespace": "user:alice", "memories": [{"text": "three"}, {"text": ""}]},
        format="json",
    )
    assert bad.status_code == 400
    assert "Item 1" in bad.json()["error"]["message"]
    assert MemCube.objects.count() == 2


def test_update_creates_new_version_linked_to_parent(alice, api_for):
    client = api_for(alice)
    m = create(client).json()
    resp = client.patch(
        f"/api/v1/memories/{m['id']}", {"expected_version": 1, "text": "Paris, France."}, format="json"
    )
    assert resp.status_code == 200 and resp.json()["version"] == 2
    history = client.get(f"/api/v1/memories/{m['id']}/history").json()
    assert [h["version"] for h in history] == [1, 2]
    assert history[0]["text"] == "Paris is the capital of France."  # the old version is kept as it was
    assert history[1]["parent_version"] == 1 and history[1]["operation"] == "overwrite"


def test_append_and_merge_modes(alice, api_for):
    client = api_for(alice)
    m = create(client, metadata={"a": 1}).json()
    r = client.patch(
        f"/api/v1/memories/{m['id']}",
        {"expected_version": 1, "mode": "append", "text": "It lies on the Seine.", "tags": ["river"]},
        format="json",
    ).json()
    assert r["text"].endswith("\nIt lies on the Seine.") and r["tags"] == ["geo", "river"]
    r = client.patch(
        f"/api/v1/memories/{m['id']}",
        {"expected_version": 2, "mode": "merge", "metadata": {"b": 2}, "tags": ["geo", "city"]},
        format="json",
    ).json()
    assert r["metadata"] == {"a": 1, "b": 2} and r["tags"] == ["geo", "river", "city"] and r["version"] == 3


def test_stale_version_is_409_and_writes_nothing(alice, api_for):
    client = api_for(alice)
    m = create(client).json()
    client.patch(f"/api/v1/memories/{m['id']}", {"expected_version": 1, "text": "v2"}, format="json")
    resp = client.patch(
        f"/api/v1/memories/{m['id']}", {"expected_version": 1, "text": "lost update"}, format="json"
    )
    assert resp.status_code == 409
    assert resp.json()["error"]["code"] == "version_conflict"
    assert resp.json()["error"]["extra"]["current_version"] == 2
    assert MemCube.objects.get(pk=m["id"]).text == "v2"
    assert MemCubeVersion.objects.filter(cube_id=m["id"]).count() == 2


def test_if_match_header_works_and_missing_version_is_400(alice, api_for):
    client = api_for(alice)
    m = create(client).json()
    assert client.patch(f"/api/v1/memories/{m['id']}", {"text": "x"}, format="json").status_code == 400
    ok = client.patch(f"/api/v1/memories/{m['id']}", {"text": "x"}, format="json", HTTP_IF_MATCH='"1"')
    assert ok.status_code == 200 and ok.json()["version"] == 2


def test_frozen_memory_refuses_updates(alice, api_for):
    client = api_for(alice)
    m = create(client).json()
    MemCube.objects.filter(pk=m["id"]).update(frozen=True)
    resp = client.patch(f"/api/v1/memories/{m['id']}", {"expected_version": 1, "text": "x"}, format="json")
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "frozen"


def test_delete_is_soft_and_history_remains(alice, api_for):
    client = api_for(alice)
    m = create(client).json()
    assert client.delete(f"/api/v1/memories/{m['id']}?expected_version=1").status_code == 204
    assert client.get(f"/api/v1/memories/{m['id']}").status_code == 404
    cube = MemCube.objects.get(pk=m["id"])
    assert cube.state == "deleted" and cube.version == 2
    history = client.get(f"/api/v1/memories/{m['id']}/history").json()
    assert history[-1]["operation"] == "delete"
    assert client.get("/api/v1/memories").json()["count"] == 0


def test_list_filters_and_pagination(alice, api_for):
    client = api_for(alice)
    for i in range(5):
        create(client, text=f"memory {i}", tags=["even" if i % 2 == 0 else "odd"])
    page = client.get("/api/v1/memories?limit=2").json()
    assert page["count"] == 5 and len(page["results"]) == 2 and page["next"]
    evens = client.get("/api/v1/memories?tag=even").json()
    assert evens["count"] == 3
    assert client.get("/api/v1/memories?namespace=user:alice&kind=plaintext").json()["count"] == 5


def test_provenance_lookup(alice, api_for):
    client = api_for(alice)
    m = create(client, source={"producer": "test-suite"}).json()
    resp = client.get(f"/api/v1/memories/provenance/{m['provenance_id']}")
    assert resp.status_code == 200
    assert resp.json()["memories"][0]["id"] == m["id"]
    assert resp.json()["origin"]["source"] == {"producer": "test-suite"}


def test_reads_and_writes_are_audited(alice, api_for):
    client = api_for(alice)
    m = create(client).json()
    client.get(f"/api/v1/memories/{m['id']}")
    ops = list(AuditEvent.objects.order_by("seq").values_list("operation", flat=True))
    assert ops[-2:] == ["memory.create", "memory.read"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"text": "no namespace"}, "namespace"),
        ({"namespace": "user:alice"}, "non-empty 'text'"),
        ({"namespace": "user:alice", "text": 42}, "text"),
        ({"namespace": "user:alice", "text": "x", "tags": "not-a-list"}, "tags"),
        ({"namespace": "user:alice", "text": "x", "kind": "dream"}, "kind"),
        ({"namespace": "user:nobody", "text": "x"}, "not found"),
        ({"namespace": "user:alice", "text": "x" * 20_001}, "limit"),
        ({"namespace": "user:alice", "text": "x", "colour": "red"}, "Unknown field 'colour'"),
        (
            {
                "namespace": "user:alice",
                "text": "x",
                "valid_from": "2024-02-01T00:00:00Z",
                "valid_to": "2024-01-01T00:00:00Z",
            },
            "valid_to",
        ),
        ({"namespace": "user:alice", "kind": "activation", "text": "kv"}, "blob_uri"),
        ({"namespace": "user:alice", "text": "x", "metadata": ["not", "an", "object"]}, "metadata"),
        ({"namespace": "user:alice", "text": "x", "valid_from": "yesterday"}, "valid_from"),
    ],
)
def test_bad_create_input_is_4xx_and_writes_nothing(alice, api_for, body, needle):
    resp = api_for(alice).post("/api/v1/memories", body, format="json")
    assert 400 <= resp.status_code < 500
    err = resp.json()["error"]
    assert needle in err["message"], err
    assert MemCube.objects.count() == 0 and IndexOutbox.objects.count() == 0


def test_bad_list_filter_is_400(alice, api_for):
    client = api_for(alice)
    resp = client.get("/api/v1/memories?created_after=last-tuesday")
    assert resp.status_code == 400 and "created_after" in resp.json()["error"]["message"]
    resp = client.get("/api/v1/memories?state=sleepy")
    assert resp.status_code == 400 and "state" in resp.json()["error"]["message"]
    resp = client.get("/api/v1/memories?flavour=mint")
    assert resp.status_code == 400 and "flavour" in resp.json()["error"]["message"]


def test_read_only_token_cannot_write(alice, api_for):
    resp = create(api_for(alice, scopes=["memories:read"]))
    assert resp.status_code == 403 and "memories:write" in resp.json()["error"]["message"]
    assert MemCube.objects.count() == 0


def test_provenance_id_is_the_servers(alice, bob, api_for):
    # given bob's memory, alice cannot attach her text to bob's provenance, one by one or in a batch
    bobs = create(api_for(bob), namespace="user:bob", text="bob's original").json()
    client = api_for(alice)
    single = create(client, provenance_id=bobs["provenance_id"])
    assert single.status_code == 400 and "provenance_id" in single.json()["error"]["message"]
    batch = client.post(
        "/api/v1/memories/batch",
        {
            "namespace": "user:alice",
            "memories": [{"text": "a"}, {"text": "b", "provenance_id": bobs["provenance_id"]}],
        },
        format="json",
    )
    assert batch.status_code == 400 and "Item 1" in batch.json()["error"]["message"]
    assert MemCube.objects.filter(provenance_id=bobs["provenance_id"]).count() == 1
    assert MemCube.objects.filter(owner=alice).count() == 0
    # the server assigns one: fresh for every memory
    made = create(client).json()
    assert made["provenance_id"] not in (bobs["provenance_id"], None)


def test_acl_grant_to_an_unknown_user_answers_like_a_known_one(alice, bob, make_user, api_for):
    client = api_for(alice)
    m = create(client).json()
    acl = f"/api/v1/memories/{m['id']}/acl"
    known = client.post(acl, {"user": "bob", "permission": "read"}, format="json")
    unknown = client.post(acl, {"user": "nobody-here", "permission": "read"}, format="json")
    # the same status, and entries of the same shape, in the answer and in the listing
    assert known.status_code == unknown.status_code == 201
    listing = client.get(acl).json()
    assert (
        listing
        == unknown.json()
        == [
            {"principal": "user:bob", "permission": "read"},
            {"principal": "user:nobody-here", "permission": "read"},
        ]
    )
    shown = client.get(f"/api/v1/memories/{m['id']}").json()["acl"]
    assert shown == listing
    # revoking either answers alike; revoking what was never granted is 404 for both
    assert client.delete(f"{acl}?user=nobody-here").status_code == 204
    assert client.delete(f"{acl}?user=bob").status_code == 204
    assert (
        client.delete(f"{acl}?user=bob").status_code == client.delete(f"{acl}?user=ghost").status_code == 404
    )


def test_acl_grant_kept_under_an_unknown_name_grants_nothing_later(alice, make_user, api_for):
    client = api_for(alice)
    m = create(client).json()
    client.post(f"/api/v1/memories/{m['id']}/acl", {"user": "mallory", "permission": "write"}, format="json")
    # an account registered later under that name gets nothing from it
    mallory = make_user("mallory")
    assert api_for(mallory).get(f"/api/v1/memories/{m['id']}").status_code == 404
    # granting again, now that the account exists, gives it the memory (one entry, not two)
    client.post(f"/api/v1/memories/{m['id']}/acl", {"user": "mallory", "permission": "read"}, format="json")
    assert client.get(f"/api/v1/memories/{m['id']}/acl").json() == [
        {"principal": "user:mallory", "permission": "read"}
    ]
    assert api_for(mallory).get(f"/api/v1/memories/{m['id']}").status_code == 200


def test_provenance_shows_deleted_text_only_to_those_who_may_write(alice, bob, api_for):
    from accounts import services as accounts

    org = accounts.organization_create(owner=alice, slug="vorg")
    invitation = accounts.invitation_create(actor=alice, org=org, username="bob", role="viewer")
    accounts.invitation_accept(user=bob, invitation_id=invitation.pk)
    a, b = api_for(alice), api_for(bob)
    memory = a.post(
        "/api/v1/memories", {"namespace": "org:vorg", "text": "to be deleted"}, format="json"
    ).json()
    assert a.delete(f"/api/v1/memories/{memory['id']}").status_code == 204

    url = f"/api/v1/memories/provenance/{memory['provenance_id']}"
    assert b.get(url).status_code == 404  # a viewer: deleted text is history
    owner_view = a.get(url).json()["memories"]
    assert [m["text"] for m in owner_view] == ["to be deleted"]  # the owner may restore it
