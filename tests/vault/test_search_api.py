"""Hybrid search through the API against a real milvus-lite server: relevance, isolation, filters."""

import pytest

from vault.models import IndexOutbox

pytestmark = pytest.mark.django_db

FACTS = [
    ("The Eiffel Tower is in Paris and was finished in 1889.", ["travel"]),
    ("Mount Fuji is the highest mountain in Japan.", ["travel"]),
    ("Use a virtual environment to isolate Python project dependencies.", ["python"]),
    ("Sourdough bread needs a starter made of flour and water.", ["cooking"]),
    ("The ticket number for the outage was INC-48213.", ["ops"]),
]


@pytest.fixture
def alice_memories(alice, api_for, index_now):
    client = api_for(alice)
    resp = client.post(
        "/api/v1/memories/batch",
        {"namespace": "user:alice", "memories": [{"text": t, "tags": tags} for t, tags in FACTS]},
        format="json",
    )
    assert resp.status_code == 201
    index_now()
    return client, resp.json()


def search(client, **body):
    return client.post("/api/v1/memories/search", body, format="json")


def test_semantic_query_finds_the_right_memory_with_scores_and_provenance(alice_memories):
    client, _created = alice_memories
    resp = search(client, query="Which tall peak is in Japan?", top_k=3)
    assert resp.status_code == 200, resp.json()
    top = resp.json()["results"][0]
    assert top["memory"]["text"].startswith("Mount Fuji")
    assert top["rank"] == 1 and top["score"] > 0
    assert top["provenance"]["provenance_id"] == top["memory"]["provenance_id"]
    assert IndexOutbox.objects.filter(processed_at__isnull=True).count() == 0


def test_keyword_query_hits_exact_identifier(alice_memories):
    client, _ = alice_memories
    for mode in ("hybrid", "sparse"):
        results = search(client, query="INC-48213", mode=mode, top_k=3).json()["results"]
        assert results and "INC-48213" in results[0]["memory"]["text"], mode


def test_tag_filter_restricts_results(alice_memories):
    client, _ = alice_memories
    results = search(client, query="food", filters={"tags": ["python"]}, top_k=5).json()["results"]
    assert results and all("python" in r["memory"]["tags"] for r in results)


def test_search_never_returns_another_tenants_memories(alice_memories, bob, api_for, index_now):
    b = api_for(bob)
    b.post(
        "/api/v1/memories", {"namespace": "user:bob", "text": "Mount Fuji trip notes from bob"}, format="json"
    )
    index_now()
    results = search(b, query="Mount Fuji Japan", top_k=10).json()["results"]
    assert results and all(r["memory"]["namespace"] == "user:bob" for r in results)
    assert search(b, query="Mount Fuji", namespaces=["user:alice"]).status_code == 404


def test_deleted_and_updated_memories_are_reflected(alice_memories, index_now):
    client, created = alice_memories
    fuji = next(m for m in created if m["text"].startswith("Mount Fuji"))
    assert client.delete(f"/api/v1/memories/{fuji['id']}").status_code == 204
    index_now()
    results = search(client, query="highest mountain in Japan", top_k=5).json()["results"]
    assert all(r["memory"]["id"] != fuji["id"] for r in results)
    bread = next(m for m in created if m["text"].startswith("Sourdough"))
    client.patch(
        f"/api/v1/memories/{bread['id']}",
        {"expected_version": 1, "text": "Rye bread needs a sourdough starter."},
        format="json",
    )
    index_now()
    top = search(client, query="rye bread", top_k=1).json()["results"][0]
    assert top["memory"]["id"] == bread["id"] and top["memory"]["version"] == 2


def test_stale_index_entry_is_filtered_by_the_database(alice_memories):
    """If the index lags (outbox not yet processed), a deleted memory is still never returned."""
    client, created = alice_memories
    tower = next(m for m in created if "Eiffel" in m["text"])
    client.delete(f"/api/v1/memories/{tower['id']}")  # outbox row left pending on purpose
    results = search(client, query="Eiffel Tower Paris", top_k=5).json()["results"]
    assert all(r["memory"]["id"] != tower["id"] for r in results)


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({}, 400, "query"),
        ({"query": ""}, 400, "query"),
        ({"query": "x", "top_k": 0}, 400, "top_k"),
        ({"query": "x", "top_k": 10_000}, 400, "top_k"),
        ({"query": "x", "mode": "psychic"}, 400, "mode"),
        ({"query": "x", "filters": {"colour": "red"}}, 400, "Unknown filter 'colour'"),
        ({"query": "x", "filters": {"tags": 5}}, 400, "tags"),
        ({"query": "x", "filters": {"created_after": "soon"}}, 400, "created_after"),
        ({"query": "x", "filters": {"state": ["archived"]}}, 400, "live memories"),
        ({"query": "x", "filters": ["not", "an", "object"]}, 400, "filters"),
        ({"query": "x", "namespaces": ["user:nobody"]}, 404, "not found"),
        ({"query": 7}, 400, "query"),
    ],
)
def test_bad_search_input(alice, api_for, body, status, needle):
    resp = search(api_for(alice), **body)
    assert resp.status_code == status, resp.json()
    assert needle in resp.json()["error"]["message"]


def test_filter_values_cannot_inject_into_the_index_expression(alice_memories):
    client, _ = alice_memories
    evil = 'python"] or namespace != "'
    resp = search(client, query="python", filters={"tags": [evil]})
    assert resp.status_code in (200, 400)
    if resp.status_code == 200:
        assert resp.json()["results"] == []


# --- canaries ----------------------------------------------------------------------------------------

CANARY = "Bianca keeps the spare thermos for the tram depot behind the ticket office."


@pytest.fixture
def with_canary(alice, api_for, index_now):
    from accounts.models import Namespace
    from governance.policy import Subject
    from vault import services

    cubes = services.memory_import_batch(
        actor=Subject(user=alice),
        namespace=Namespace.objects.get(key="user:alice"),
        items=[
            {"text": CANARY, "canary": True},
            {"text": "The tram depot opens at six in the morning."},
            {"text": "A thermos keeps tea hot for the whole tram shift."},
            {"text": "Bianca drives the night tram to the depot."},
        ],
    )
    index_now()
    return api_for(alice), cubes


def test_canaries_are_never_returned_and_top_k_is_still_filled(with_canary):
    client, (canary, *others) = with_canary
    assert canary.is_canary and not any(c.is_canary for c in others)
    for mode in ("hybrid", "dense", "sparse"):
        results = search(client, query=CANARY, top_k=3, mode=mode).json()["results"]
        assert CANARY not in [r["memory"]["text"] for r in results], mode
        assert len(results) == 3, mode


def test_a_canary_left_in_the_index_is_still_dropped_by_the_database(with_canary):
    """A canary indexed before the flag existed (or by an old worker) is filtered out, top_k kept."""
    from vault.index import get_index
    from vault.services import index_doc_for

    client, (canary, *_) = with_canary
    assert get_index().get([str(canary.id)]) == []  # never indexed in the first place
    get_index().upsert([index_doc_for(canary)])
    results = search(client, query=CANARY, top_k=3).json()["results"]
    assert CANARY not in [r["memory"]["text"] for r in results] and len(results) == 3


def test_canaries_travel_in_bulk_copies_without_showing_the_flag(with_canary):
    client, _ = with_canary
    listed = client.get("/api/v1/memories", {"namespace": "user:alice"}).json()["results"]
    assert CANARY in [m["text"] for m in listed]
    assert all("is_canary" not in m and "canary" not in m for m in listed)


# --- scores --------------------------------------------------------------------------------------------


def test_scores_are_comparable_across_queries_not_one_per_query(alice_memories):
    client, _ = alice_memories
    strong = search(client, query="outage ticket INC-48213", top_k=3).json()["results"]
    weak = search(client, query="zebra crossings mars", top_k=3).json()["results"]
    assert strong and weak
    for r in strong + weak:
        assert 0.0 <= r["score"] <= 1.0
    assert "INC-48213" in strong[0]["memory"]["text"]
    # a query nothing answers is not given a perfect best hit: its best scores a fraction of a real match
    assert weak[0]["score"] < 0.1 and strong[0]["score"] > 0.3, (weak[0]["score"], strong[0]["score"])


def test_min_score_drops_weak_hits(alice_memories):
    client, _ = alice_memories
    assert search(client, query="zebra crossings mars", min_score=0.2).json()["results"] == []
    kept = search(client, query="outage ticket INC-48213", min_score=0.2).json()["results"]
    assert kept and all(r["score"] >= 0.2 for r in kept)
    assert "INC-48213" in kept[0]["memory"]["text"]


@pytest.mark.parametrize("value", [-0.1, 1.5, "high", None])
def test_bad_min_score_is_a_400(alice, api_for, value):
    resp = search(api_for(alice), query="x", min_score=value)
    assert resp.status_code == 400, resp.json()
    assert "min_score" in resp.json()["error"]["fields"]
