"""Values the index cannot hold are refused at the door (400 naming the field, nothing written), and
search filters the index cannot evaluate are a 400 too: no index error ever becomes a 500."""

import pytest

from vault.index import reset_index_cache
from vault.models import IndexOutbox, MemCube, MemCubeVersion

pytestmark = pytest.mark.django_db

POISON = [
    ("tags", ["a\tb"]),
    ("tags", ["line\nbreak"]),
    ("tags", ["bell\x07"]),
    ("tags", ["x" * 65]),
    ("semantic_type", "fa\tct"),
    ("semantic_type", "event\x1b"),
    ("semantic_type", "x" * 33),
    ("language", "e\nn"),
    ("licence", "mi\rt"),
    ("entities", ["Ada\nLovelace"]),
    ("title", "two\nlines"),
    ("valid_from", "1969-12-31T23:59:59Z"),
    ("valid_to", "1900-01-01T00:00:00Z"),
]


def counts() -> tuple[int, int, int]:
    return MemCube.objects.count(), MemCubeVersion.objects.count(), IndexOutbox.objects.count()


@pytest.mark.parametrize(("field", "value"), POISON)
def test_create_refuses_values_the_index_cannot_hold(alice, api_for, field, value):
    resp = api_for(alice).post(
        "/api/v1/memories", {"namespace": "user:alice", "text": "a fact", field: value}, format="json"
    )
    assert resp.status_code == 400, resp.json()
    error = resp.json()["error"]
    assert field in error["fields"] and error["message"].startswith(field)
    assert counts() == (0, 0, 0)


@pytest.mark.parametrize(("field", "value"), POISON)
def test_batch_refuses_a_poison_item_and_writes_nothing(alice, api_for, field, value):
    resp = api_for(alice).post(
        "/api/v1/memories/batch",
        {"namespace": "user:alice", "memories": [{"text": "fine"}, {"text": "bad", field: value}]},
        format="json",
    )
    assert resp.status_code == 400, resp.json()
    assert field in resp.json()["error"]["fields"]["memories"]["1"]
    assert counts() == (0, 0, 0)


@pytest.mark.parametrize(("field", "value"), POISON)
def test_update_refuses_poison_and_keeps_the_version(alice, api_for, field, value):
    client = api_for(alice)
    created = client.post("/api/v1/memories", {"namespace": "user:alice", "text": "a fact"}, format="json")
    before = counts()
    resp = client.patch(
        f"/api/v1/memories/{created.json()['id']}", {"expected_version": 1, field: value}, format="json"
    )
    assert resp.status_code == 400, resp.json()
    assert field in resp.json()["error"]["fields"]
    assert counts() == before and MemCube.objects.get().version == 1


def test_values_at_the_limits_are_accepted_and_indexed(alice, api_for, index_now):
    client = api_for(alice)
    resp = client.post(
        "/api/v1/memories",
        {
            "namespace": "user:alice",
            "text": "Tabs\tand\nnewlines are fine in the text itself.",
            "tags": ["x" * 64, "ünïcödé"],
            "semantic_type": "y" * 32,
            "valid_from": "1970-01-01T00:00:00Z",
            "valid_to": "9999-12-31T00:00:00Z",
        },
        format="json",
    )
    assert resp.status_code == 201, resp.json()
    assert index_now() == 1
    assert IndexOutbox.objects.get().processed_at is not None


@pytest.mark.parametrize(
    ("filters", "field"),
    [
        ({"semantic_type": "s" * 65}, "filters.semantic_type"),
        ({"semantic_type": "s" * 128}, "filters.semantic_type"),
        ({"semantic_type": "fact\n"}, "filters.semantic_type"),
        ({"tags": ["a\tb"]}, "filters.tags"),
        ({"tags": {"all": ["ok", "bad\x00"]}}, "filters.tags"),
        ({"created_after": "1960-01-01T00:00:00Z"}, "filters.created_after"),
        ({"created_before": "1969-06-01T00:00:00Z"}, "filters.created_before"),
        ({"valid_at": "1950-01-01T00:00:00Z"}, "filters.valid_at"),
    ],
)
def test_search_filters_the_index_cannot_evaluate_are_a_400_naming_the_filter(
    alice, api_for, index_now, filters, field
):
    client = api_for(alice)
    client.post("/api/v1/memories", {"namespace": "user:alice", "text": "a fact"}, format="json")
    index_now()
    resp = client.post("/api/v1/memories/search", {"query": "fact", "filters": filters}, format="json")
    assert resp.status_code == 400, resp.json()
    error = resp.json()["error"]
    assert error["code"] == "invalid_filter" and error["extra"]["field"] == field
    assert field in error["message"]
    assert "_ts" not in error["message"]  # the caller's names, not the index's
    if field in ("filters.created_after", "filters.created_before", "filters.valid_at"):
        assert "1970-01-01" in error["message"]


@pytest.mark.parametrize("owner", ["nobody-by-that-name", ["ghost", "phantom"], "ali\tce"])
def test_search_by_an_unknown_owner_finds_nothing(alice, api_for, index_now, owner):
    client = api_for(alice)
    client.post("/api/v1/memories", {"namespace": "user:alice", "text": "a fact"}, format="json")
    index_now()
    resp = client.post(
        "/api/v1/memories/search", {"query": "fact", "filters": {"owner": owner}}, format="json"
    )
    assert resp.status_code == 200, resp.json()
    assert resp.json()["results"] == []
    known = client.post(
        "/api/v1/memories/search", {"query": "fact", "filters": {"owner": "alice"}}, format="json"
    )
    assert [r["memory"]["text"] for r in known.json()["results"]] == ["a fact"]


def test_search_answers_503_not_500_when_the_index_is_down(alice, api_for, settings):
    client = api_for(alice)
    client.post("/api/v1/memories", {"namespace": "user:alice", "text": "a fact"}, format="json")
    settings.MILVUS_URI = "http://127.0.0.1:9"  # nothing listens there
    reset_index_cache()
    resp = client.post("/api/v1/memories/search", {"query": "fact"}, format="json")
    assert resp.status_code == 503, resp.content
    assert resp.json()["error"]["code"] == "index_unavailable"
