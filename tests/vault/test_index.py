"""The Milvus index against a real milvus-lite server: writes, tenant isolation, filters, hybrid search."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings

from vault.embedding import Embedder, build_embedder
from vault.index import (
    FUSIONS,
    MAX_TAG_LEN,
    IndexDoc,
    IndexFilter,
    IndexHit,
    IndexValueError,
    SearchTuning,
    VectorIndex,
    build_filter_expr,
    check_doc,
    expand_lexical_scores,
    fuse,
    label_problem,
    lexical_query,
    lexical_text,
    moment_problem,
)

PREFIX = f"t_index_{uuid.uuid4().hex[:8]}"

NS_A = str(uuid.uuid4())
NS_B = str(uuid.uuid4())
OWNER_1 = str(uuid.uuid4())
OWNER_2 = str(uuid.uuid4())
T0 = 1_700_000_000  # 2023-11-14


def doc(text: str, *, namespace: str = NS_A, **fields: object) -> IndexDoc:
    base: dict[str, object] = {
        "id": str(uuid.uuid4()),
        "namespace": namespace,
        "text": text,
        "kind": "plaintext",
        "state": "activated",
        "owner": OWNER_1,
        "tags": [],
        "semantic_type": "fact",
        "created_ts": T0,
        "valid_from_ts": 0,
        "valid_to_ts": 0,
        "version": 1,
    }
    base.update(fields)
    return IndexDoc(**base)  # type: ignore[arg-type]


def ids(hits: list[IndexHit]) -> set[str]:
    return {h.id for h in hits}


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return build_embedder("onnx", cache_dir=Path(settings.EMBEDDING_CACHE_DIR))


def _fresh_index(milvus_uri: str, embedder: Embedder) -> VectorIndex:
    idx = VectorIndex(uri=milvus_uri, collection_prefix=f"{PREFIX}_{uuid.uuid4().hex[:6]}", embedder=embedder)
    idx.ensure_collection()
    return idx


@pytest.fixture
def index(milvus_uri: str, embedder: Embedder) -> Iterator[VectorIndex]:
    """A fresh collection per test (unique prefix), dropped afterwards."""
    idx = _fresh_index(milvus_uri, embedder)
    yield idx
    idx.drop()
    idx.close()


# ── collection layout ─────────────────────────────────────────────────────────────────────────────


def test_collection_is_named_after_prefix_model_and_dim(milvus_uri: str, embedder: Embedder) -> None:
    idx = VectorIndex(uri=milvus_uri, collection_prefix="memhub", embedder=embedder)
    assert idx.collection_name == "memhub_all_minilm_l6_v2_384"


def test_ensure_collection_is_idempotent_and_shared_by_instances(
    index: VectorIndex, embedder: Embedder
) -> None:
    index.ensure_collection()
    index.upsert([doc("the lighthouse keeper logs the weather")])
    other = VectorIndex(
        uri=index.uri, collection_prefix=index.collection_name.split("_all_")[0], embedder=embedder
    )
    assert other.collection_name == index.collection_name
    other.ensure_collection()
    assert other.count() == 1
    other.close()


def test_bad_collection_prefix_is_rejected(milvus_uri: str, embedder: Embedder) -> None:
    with pytest.raises(ValueError, match="collection_prefix"):
        VectorIndex(uri=milvus_uri, collection_prefix="bad-prefix; drop", embedder=embedder)


# ── writes ────────────────────────────────────────────────────────────────────────────────────────


def test_upsert_then_search_in_every_mode(index: VectorIndex) -> None:
    target = doc("Caroline went to an LGBTQ support group meeting yesterday")
    others = [doc("Melanie painted a sunrise over the lake"), doc("The car needs new tyres before winter")]
    index.upsert([target, *others])
    flt = IndexFilter(namespaces=[NS_A])
    for mode in ("dense", "sparse", "hybrid"):
        hits = index.search(
            query="When did Caroline go to the support group?", filters=flt, mode=mode, top_k=3
        )
        assert hits[0].id == target.id, mode
        assert hits[0].score >= hits[-1].score
    hybrid = index.search(query="support group Caroline", filters=flt, mode="hybrid", top_k=1)[0]
    assert hybrid.dense_score is not None and hybrid.sparse_score is not None
    dense = index.search(query="support group", filters=flt, mode="dense", top_k=1)[0]
    assert dense.sparse_score is None and dense.dense_score == pytest.approx(dense.score)
    assert index.count() == 3


def test_reupsert_replaces_without_duplicates(index: VectorIndex) -> None:
    original = doc("the password for the wifi is printed under the router", tags=["home"])
    index.upsert([original])
    changed = replace(original, text="the cat sleeps on the warm laptop keyboard", state="merged", version=2)
    index.upsert([changed])
    assert index.count() == 1
    flt = IndexFilter(namespaces=[NS_A])
    assert index.search(query="router wifi password", filters=flt, mode="sparse") == []
    hits = index.search(query="cat laptop keyboard", filters=flt, mode="hybrid")
    assert [h.id for h in hits] == [original.id]
    assert ids(index.search(query="cat", filters=replace(flt, states=["merged"]), mode="dense")) == {
        original.id
    }
    assert index.search(query="cat", filters=replace(flt, states=["activated"]), mode="dense") == []
    stored = index.get([original.id])[0]
    assert stored["version"] == 2 and stored["state"] == "merged"


def test_same_id_twice_in_one_batch_keeps_the_last(index: VectorIndex) -> None:
    first = doc("first wording about volcanoes")
    second = replace(first, text="second wording about glaciers", version=2)
    index.upsert([first, second])
    assert index.count() == 1
    assert index.get([first.id])[0]["version"] == 2


def test_delete_removes_from_count_and_search(index: VectorIndex) -> None:
    keep, gone = doc("bees make honey in the hive"), doc("bees pollinate the orchard in spring")
    index.upsert([keep, gone])
    index.delete([gone.id, str(uuid.uuid4())])  # unknown ids are ignored
    assert index.count() == 1
    hits = index.search(query="bees", filters=IndexFilter(namespaces=[NS_A]), mode="hybrid", top_k=10)
    assert ids(hits) == {keep.id}
    index.delete([])
    assert index.count() == 1


def test_upsert_with_given_vectors_and_bad_shapes(index: VectorIndex, embedder: Embedder) -> None:
    docs = [doc("alpha centauri is the nearest star system"), doc("bread rises because of yeast")]
    index.upsert(docs, vectors=embedder.embed([d.text for d in docs]))
    hits = index.search(query="nearest star", filters=IndexFilter(namespaces=[NS_A]), mode="dense", top_k=1)
    assert hits[0].id == docs[0].id
    with pytest.raises(ValueError, match="shape"):
        index.upsert(docs, vectors=np.zeros((1, 384), dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        index.upsert(docs, vectors=np.full((2, 384), np.nan, dtype=np.float32))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "video"}, "kind 'video'"),
        ({"state": "zombie"}, "state 'zombie'"),
        ({"namespace": 'x" or 1==1'}, "namespace"),
        ({"id": ""}, "id must be a non-empty string"),
        ({"tags": ["ok", "line\nbreak"]}, "control characters"),
        ({"tags": [f"t{i}" for i in range(65)]}, "at most 64"),
        ({"created_ts": -5}, "out of range"),
        ({"version": "2"}, "version"),
    ],
)
def test_upsert_rejects_bad_docs_and_writes_nothing(index: VectorIndex, fields: dict, message: str) -> None:
    good = doc("a perfectly fine memory")
    with pytest.raises(ValueError, match=message):
        index.upsert([good, doc("a broken one", **fields)])
    assert index.count() == 0


# ── tenant isolation ──────────────────────────────────────────────────────────────────────────────


def test_search_never_returns_another_namespaces_docs(index: VectorIndex) -> None:
    text = "the secret launch code for project nightingale is tulip"
    mine, theirs = doc(text, namespace=NS_A), doc(text, namespace=NS_B)
    index.upsert([mine, theirs])
    for mode in ("dense", "sparse", "hybrid"):
        hits = index.search(query=text, filters=IndexFilter(namespaces=[NS_A]), mode=mode, top_k=50)
        assert ids(hits) == {mine.id}, mode
        both = index.search(query=text, filters=IndexFilter(namespaces=[NS_A, NS_B]), mode=mode, top_k=50)
        assert ids(both) == {mine.id, theirs.id}, mode
    nobody = str(uuid.uuid4())
    assert index.search(query=text, filters=IndexFilter(namespaces=[nobody]), mode="hybrid") == []


def test_isolation_holds_after_flush_across_many_tenants(index: VectorIndex, embedder: Embedder) -> None:
    # Given 40 tenants with rows flushed into segments (the path milvus-lite partition pruning takes) ...
    rng = np.random.default_rng(3)
    tenants = [str(uuid.uuid4()) for _ in range(40)]
    docs = [doc(f"memory {i} about topic {i % 7}", namespace=tenants[i % 40]) for i in range(400)]
    vectors = rng.standard_normal((400, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index.upsert(docs, vectors=vectors)
    index.flush()
    by_tenant: dict[str, set[str]] = {}
    for d in docs:
        by_tenant.setdefault(d.namespace, set()).add(d.id)
    # ... each tenant's search returns exactly its own ten memories, in every mode.
    for tenant in tenants[:12]:
        flt = IndexFilter(namespaces=[tenant])
        for mode in ("dense", "sparse", "hybrid"):
            hits = index.search(query="memory about topic", filters=flt, mode=mode, top_k=50)
            assert ids(hits) == by_tenant[tenant], mode
    # and pruning is only an optimisation: without it the answer is the same.
    unpruned = VectorIndex(
        uri=index.uri,
        collection_prefix=index.collection_name.split("_all_")[0],
        embedder=embedder,
        tuning=SearchTuning(lite_partition_pruning=False),
    )
    flt = IndexFilter(namespaces=tenants[:3])
    assert ids(unpruned.search(query="topic 3", filters=flt, mode="dense", top_k=50)) == set().union(
        *(by_tenant[t] for t in tenants[:3])
    )
    unpruned.close()


# ── filters ───────────────────────────────────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def catalogue_index(milvus_uri: str, embedder: Embedder) -> Iterator[VectorIndex]:
    """One collection for the read-only filter tests (collection creation is the slow part)."""
    idx = _fresh_index(milvus_uri, embedder)
    yield idx
    idx.drop()
    idx.close()


@pytest.fixture(scope="module")
def catalogue(catalogue_index: VectorIndex) -> dict[str, IndexDoc]:
    docs = {
        "plain": doc("notes on rose pruning", tags=["garden", "roses"], semantic_type="howto"),
        "kv": doc("notes on rose pruning kv cache", kind="activation", tags=["garden"]),
        "lora": doc("notes on rose pruning adapter", kind="parameter", owner=OWNER_2),
        "archived": doc("notes on rose pruning old", state="archived", tags=["roses", 'say "hi"']),
        "old": doc("notes on rose pruning 2019", created_ts=T0 - 10_000, tags=["back\\slash"]),
        "expiring": doc("notes on rose pruning until", valid_from_ts=T0, valid_to_ts=T0 + 100),
        "future": doc("notes on rose pruning later", valid_from_ts=T0 + 1_000, semantic_type="plan"),
        # Same text and tags in another tenant: no filter may ever let it through.
        "other_tenant": doc("notes on rose pruning", namespace=NS_B, tags=["garden", "roses"]),
    }
    catalogue_index.upsert(list(docs.values()))
    return docs


def _found(index: VectorIndex, catalogue: dict[str, IndexDoc], **filters: object) -> set[str]:
    flt = IndexFilter(namespaces=[NS_A], **filters)  # type: ignore[arg-type]
    hits = index.search(query="rose pruning notes", filters=flt, mode="dense", top_k=50)
    names = {d.id: name for name, d in catalogue.items()}
    return {names[h.id] for h in hits}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, {"plain", "kv", "lora", "archived", "old", "expiring", "future"}),
        ({"kinds": ["activation", "parameter"]}, {"kv", "lora"}),
        ({"states": ["archived"]}, {"archived"}),
        ({"owners": [OWNER_2]}, {"lora"}),
        ({"tags_any": ["roses", "nothing"]}, {"plain", "archived"}),
        ({"tags_all": ["garden", "roses"]}, {"plain"}),
        ({"semantic_types": ["howto", "plan"]}, {"plain", "future"}),
        ({"created_from_ts": T0 - 10_000, "created_to_ts": T0 - 1}, {"old"}),
        ({"created_from_ts": T0}, {"plain", "kv", "lora", "archived", "expiring", "future"}),
        ({"valid_at_ts": T0 + 50}, {"plain", "kv", "lora", "archived", "old", "expiring"}),
        ({"valid_at_ts": T0 + 100}, {"plain", "kv", "lora", "archived", "old"}),  # valid_to is exclusive
        ({"valid_at_ts": T0 + 5_000}, {"plain", "kv", "lora", "archived", "old", "future"}),
        ({"kinds": ["plaintext"], "tags_any": ["roses"], "states": ["activated"]}, {"plain"}),
    ],
)
def test_each_filter(
    catalogue_index: VectorIndex, catalogue: dict[str, IndexDoc], filters: dict, expected: set
) -> None:
    assert _found(catalogue_index, catalogue, **filters) == expected


def test_tags_with_quotes_and_backslashes_match_literally(
    catalogue_index: VectorIndex, catalogue: dict
) -> None:
    assert _found(catalogue_index, catalogue, tags_any=['say "hi"']) == {"archived"}
    assert _found(catalogue_index, catalogue, tags_any=["back\\slash"]) == {"old"}


@pytest.mark.parametrize(
    "evil",
    [
        '") or (namespace != "',
        'garden"]) or array_contains_any(tags, ["roses',
        "garden' or 1==1 or '",
        "\\",
        '\\"',
        'x") || true || ("',
    ],
)
def test_tag_values_cannot_break_out_of_the_expression(
    catalogue_index: VectorIndex, catalogue: dict, evil: str
) -> None:
    assert _found(catalogue_index, catalogue, tags_any=[evil]) == set()
    assert _found(catalogue_index, catalogue, tags_all=["garden", evil]) == set()
    assert _found(catalogue_index, catalogue, semantic_types=[evil]) == set()
    assert _found(catalogue_index, catalogue, tags_any=["roses", evil]) == {"plain", "archived"}


def test_expression_quotes_every_value() -> None:
    expr = build_filter_expr(IndexFilter(namespaces=[NS_A], tags_any=['a"b', "c\\d"]))
    assert expr == f'(namespace == "{NS_A}") and (array_contains_any(tags, ["a\\"b", "c\\\\d"]))'


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"namespaces": []}, "namespaces must not be empty"),
        ({"namespaces": None}, "namespaces is required"),
        ({"namespaces": "abc"}, "namespaces must be a list"),
        ({"namespaces": ['a" or "1"=="1']}, "not a valid identifier"),
        ({"namespaces": [NS_A], "kinds": ["video"]}, "kind 'video' is not one of"),
        ({"namespaces": [NS_A], "states": ["zombie"]}, "state 'zombie'"),
        ({"namespaces": [NS_A], "owners": ["x y"]}, "owner 'x y' is not a valid identifier"),
        ({"namespaces": [NS_A], "tags_any": []}, "tags_any must not be empty"),
        ({"namespaces": [NS_A], "tags_all": ["a\x00b"]}, "control characters"),
        ({"namespaces": [NS_A], "tags_any": ["x" * 129]}, "longer than 128"),
        ({"namespaces": [NS_A], "created_from_ts": 10, "created_to_ts": 5}, "after created_to_ts"),
        ({"namespaces": [NS_A], "valid_at_ts": "yesterday"}, "valid_at_ts must be an integer"),
        ({"namespaces": [NS_A], "created_from_ts": True}, "created_from_ts must be an integer"),
        ({"namespaces": [NS_A], "semantic_types": [3]}, "semantic_type must be a non-empty string"),
    ],
)
def test_bad_filter_values_raise_clear_errors(filters: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_filter_expr(IndexFilter(**filters))


def test_bad_search_arguments_raise_clear_errors(index: VectorIndex) -> None:
    flt = IndexFilter(namespaces=[NS_A])
    with pytest.raises(ValueError, match="mode 'fuzzy'"):
        index.search(query="x", filters=flt, mode="fuzzy")
    with pytest.raises(ValueError, match="top_k"):
        index.search(query="x", filters=flt, top_k=0)
    with pytest.raises(ValueError, match="dense_weight"):
        index.search(query="x", filters=flt, dense_weight=1.5)
    with pytest.raises(ValueError, match="query_vector"):
        index.search(query="x", filters=flt, query_vector=np.zeros(3))
    with pytest.raises(ValueError, match="fusion"):
        index.search(query="x", filters=flt, fusion="borda")
    with pytest.raises(ValueError, match="namespaces must not be empty"):
        index.search(query="x", filters=IndexFilter(namespaces=[]))


# ── hybrid retrieval ──────────────────────────────────────────────────────────────────────────────


def test_hybrid_beats_or_equals_dense_on_a_keyword_query(index: VectorIndex) -> None:
    target = doc("Invoice 88231-ZQ was settled by bank transfer.")
    distractors = [
        doc("The invoice for the office chairs was paid by card."),
        doc("We settled the invoice for the catering by bank transfer."),
        doc("Invoices are due within thirty days of issue."),
        doc("The bank transfer for invoice 77412-KT bounced."),
        doc("Payment terms: invoice settlement by transfer only."),
    ]
    index.upsert([target, *distractors])
    flt = IndexFilter(namespaces=[NS_A])
    query = "was 88231-ZQ settled?"

    def rank(mode: str) -> int:
        hits = [h.id for h in index.search(query=query, filters=flt, mode=mode, top_k=6)]
        return hits.index(target.id) if target.id in hits else 99

    assert rank("hybrid") <= rank("dense")
    assert rank("hybrid") == 0
    rrf = index.search(query=query, filters=flt, mode="hybrid", fusion="rrf", top_k=6)
    assert rrf[0].id == target.id


def test_dense_weight_moves_hybrid_between_routes(index: VectorIndex) -> None:
    docs = [
        doc("a dog chased the ball across the park"),
        doc("puppy fetch game outdoors"),
        doc("ball ball ball"),
    ]
    index.upsert(docs)
    flt = IndexFilter(namespaces=[NS_A])
    lexical_only = index.search(query="ball", filters=flt, mode="hybrid", dense_weight=0.0, top_k=3)
    sparse = index.search(query="ball", filters=flt, mode="sparse", top_k=3)
    assert lexical_only[0].id == sparse[0].id == docs[2].id
    dense_only = index.search(query="ball", filters=flt, mode="hybrid", dense_weight=1.0, top_k=3)
    dense = index.search(query="ball", filters=flt, mode="dense", top_k=3)
    assert [h.id for h in dense_only] == [h.id for h in dense]


def test_a_query_of_only_stop_words_still_searches_densely(index: VectorIndex) -> None:
    target = doc("what is it that you did there")
    index.upsert([target])
    flt = IndexFilter(namespaces=[NS_A])
    assert index.search(query="what did you do", filters=flt, mode="sparse") == []
    assert [h.id for h in index.search(query="what did you do", filters=flt, mode="hybrid")] == [target.id]


def test_valid_from_date_is_searchable_in_words(index: VectorIndex) -> None:
    may = doc("Joanna baked a cake with strawberry filling", valid_from_ts=1_652_000_000)  # 8 May 2022
    june = doc("Joanna baked a cake with lemon filling", valid_from_ts=1_655_000_000)  # 12 June 2022
    index.upsert([may, june])
    hits = index.search(
        query="cake Joanna made in May 2022", filters=IndexFilter(namespaces=[NS_A]), mode="sparse"
    )
    assert hits[0].id == may.id


# ── pure functions ────────────────────────────────────────────────────────────────────────────────


def test_lexical_analysis_drops_stop_words_and_stems() -> None:
    assert lexical_query("When did Caroline go to the support groups?") == "carolin go support group"
    d = doc("Painting sunrises", valid_from_ts=1_683_504_000)  # 8 May 2023
    assert lexical_text(d) == "paint sunris 8 may 2023"


def test_weighted_fusion_sums_calibrated_route_scores() -> None:
    fused = dict(
        fuse({"a": 0.9, "b": 0.5}, {"b": 12.0, "c": 4.0}, fusion="weighted", dense_weight=0.4, bm25_half=4.0)
    )
    assert fused["a"] == pytest.approx(0.4 * 0.9)
    assert fused["b"] == pytest.approx(0.4 * 0.5 + 0.6 * 12 / 16)
    assert fused["c"] == pytest.approx(0.6 * 0.5)  # BM25 equal to bm25_half counts one half


def test_weighted_scores_do_not_depend_on_the_other_candidates() -> None:
    """Comparable across queries: a hit's score is its own evidence, not its place among the others."""
    alone = dict(fuse({"a": 0.3}, {"a": 2.0}, fusion="weighted"))["a"]
    crowded = dict(fuse({"a": 0.3, "b": 0.9, "c": 0.1}, {"a": 2.0, "b": 30.0}, fusion="weighted"))["a"]
    assert alone == pytest.approx(crowded) and 0 < alone < 0.5
    best_of_weak = fuse({"x": 0.12, "y": 0.05}, {}, fusion="weighted")[0][1]
    assert best_of_weak < 0.1  # the best of a query nothing answers is not 1.0
    assert all(0 <= s <= 1 for _, s in fuse({"a": 1.0, "b": -0.2}, {"a": 1e6}, fusion="weighted"))


def test_minmax_fusion_normalises_each_route() -> None:
    fused = dict(fuse({"a": 0.9, "b": 0.5}, {"b": 12.0, "c": 3.0}, fusion="minmax", dense_weight=0.4))
    assert fused["a"] == pytest.approx(0.4)
    assert fused["b"] == pytest.approx(0.6)
    assert fused["c"] == pytest.approx(0.0)


def test_rrf_fusion_rewards_agreement() -> None:
    ranked = fuse({"a": 0.9, "b": 0.8}, {"b": 5.0, "c": 4.0}, fusion="rrf", rrf_k=60)
    assert ranked[0][0] == "b"
    assert ranked[0][1] == pytest.approx(1 / 62 + 1 / 61)


def test_fusion_of_single_candidates_and_ties() -> None:
    assert fuse({"a": 0.3}, {}, fusion="minmax", dense_weight=0.4) == [("a", pytest.approx(0.4))]
    assert fuse({"a": 0.3}, {}, fusion="weighted", dense_weight=0.4) == [("a", pytest.approx(0.12))]
    for fusion in [f for f in FUSIONS if f != "rrf"]:  # rrf ranks, so it has no ties to break
        assert [k for k, _ in fuse({"b": 0.5, "a": 0.5}, {}, fusion=fusion)] == ["a", "b"]


def test_feedback_expansion_lifts_candidates_that_share_the_best_answers_terms() -> None:
    # Given the two best candidates talk about Saturn's rings through a telescope ...
    texts = {f"filler{i}": f"groceri list item{i} weekend" for i in range(16)}
    texts |= {
        "best1": "telescop saturn ring night",
        "best2": "telescop saturn ring cloud",
        "related": "saw saturn ring backyard",  # never says "telescope": BM25 alone misses it
        "other": "bake bread flour",
    }
    sparse = {"best1": 6.0, "best2": 5.5}
    expanded = expand_lexical_scores(
        sparse, texts, feedback=["best1", "best2"], query_terms={"telescop"}, terms=5, weight=0.5
    )
    # ... the related memory gains lexical evidence, the feedback keeps its score, the unrelated none.
    assert expanded["related"] > 0
    assert expanded["best1"] == 6.0 and expanded["best2"] == 5.5
    assert "other" not in expanded and "filler3" not in expanded


def test_feedback_expansion_is_skipped_on_tiny_candidate_sets() -> None:
    # Two feedback documents out of five candidates: their "distinctive" terms would be noise.
    texts = {"a": "telescop saturn", "b": "saturn ring", "c": "bread", "d": "ring bell", "e": "saturn moon"}
    sparse = {"a": 1.0, "b": 0.5}
    assert expand_lexical_scores(sparse, texts, feedback=["a", "b"], query_terms={"telescop"}) == sparse


def test_memories_without_text_are_indexed_and_filterable(index: VectorIndex) -> None:
    # A KV-cache memory may carry no text at all; it must still be indexed and reachable by filters.
    blob = doc("", kind="activation", tags=["kv"])
    index.upsert([blob])
    assert index.count() == 1
    flt = IndexFilter(namespaces=[NS_A], kinds=["activation"])
    assert ids(index.search(query="anything", filters=flt, mode="hybrid")) == {blob.id}


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"tags": ["a\tb"]}, "tag"),
        ({"tags": ["new\nline"]}, "tag"),
        ({"semantic_type": "x\x1by"}, "semantic_type"),
        ({"semantic_type": "s" * 65}, "semantic_type"),
        ({"valid_from_ts": -1}, "valid_from_ts"),
        ({"valid_to_ts": -86_400}, "valid_to_ts"),
    ],
)
def test_refused_values_name_their_field(fields: dict, field: str) -> None:
    with pytest.raises(IndexValueError) as err:
        check_doc(doc("a memory", **fields))
    assert err.value.field == field


def test_the_apis_rules_are_the_indexs_rules() -> None:
    assert label_problem("fine label", MAX_TAG_LEN) is None
    assert "control" in (label_problem("a\tb", MAX_TAG_LEN) or "")
    assert "longer" in (label_problem("x" * (MAX_TAG_LEN + 1), MAX_TAG_LEN) or "")
    assert moment_problem(datetime(1970, 1, 1, tzinfo=UTC)) is None
    assert moment_problem(datetime(1969, 12, 31, 23, 59, tzinfo=UTC))


def test_settle_keeps_every_document_searchable(index: VectorIndex) -> None:
    docs = [doc(f"note {i} about the harbour ferry timetable") for i in range(30)]
    index.upsert(docs)
    index.settle()
    flt = IndexFilter(namespaces=[NS_A])
    first = index.search(query="harbour ferry", filters=flt, top_k=30)
    assert ids(first) == {d.id for d in docs}
    assert index.search(query="harbour ferry", filters=flt, top_k=30) == first
