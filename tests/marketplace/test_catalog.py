"""Browsing the catalog: listing entries in the vault index, search, facets, filters, sorts, pack pages,
and that a listing entry is never anybody's memory."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from accounts import services as accounts
from accounts.models import Namespace, NamespaceKind
from governance.policy import Subject
from marketplace import services as market
from marketplace.models import Pack, PackRelease
from marketplace.selectors.catalog import catalog_browse, forms_offered
from marketplace.services.catalog import catalog_reindex, catalog_sync, catalog_sync_enqueue
from vault.models import MemCube, MemoryState
from vault.services import index_outbox_process

pytestmark = pytest.mark.django_db

URL = "/api/v1/marketplace/packs"


def _list(pack: Pack, **fields: Any) -> Pack:
    """Set listing fields directly (the studio's validation is tested there), then sync the entry."""
    Pack.objects.filter(pk=pack.pk).update(**fields)
    catalog_sync(pack_id=pack.pk)
    return Pack.objects.select_related("publisher").get(pk=pack.pk)


@pytest.fixture
def globex(make_user):  # type: ignore[no-untyped-def]
    """A second publisher, `globex`, owned by `gwen`."""
    gwen = make_user("gwen")
    org = accounts.organization_create(owner=gwen, slug="globex")
    pub = market.publisher_create(
        actor=Subject(user=gwen), organization=org, slug="globex", display_name="Globex"
    )
    return gwen, pub


@pytest.fixture
def shelf(make_pack, globex):  # type: ignore[no-untyped-def]
    """Three released packs that differ in every facet, indexed."""
    gwen, gpub = globex
    bread = _list(
        make_pack("sourdough", title="Sourdough handbook", release=True),
        summary="Everything about baking sourdough loaves at home.",
        category="food",
        tags=["bread", "baking"],
        readme="# Starters\n\nFeed the **levain** twice a day; see [the guide](https://x.test/g).",
        base_models=["llama-3-8b"],
        rating_avg=4.5,
        rating_count=2,
        install_count=5,
    )
    k8s = _list(
        make_pack("k8s", title="Kubernetes operations", release=True),
        summary="Runbooks for upgrades, incidents and autoscaling in production.",
        category="devops",
        tags=["sre"],
        price_model="subscription",
        price_cents=900,
        base_models=["llama-3-8b", "mistral-7b"],
        forms=["plaintext"],
        rating_avg=3.2,
        rating_count=5,
        install_count=50,
    )
    tax = market.pack_create(actor=Subject(user=gwen), publisher=gpub, slug="tax", title="German tax law")
    market.pack_add_memories(
        actor=Subject(user=gwen), pack=tax, items=[{"text": "Freelancers file quarterly."}]
    )
    market.release_publish(actor=Subject(user=gwen), pack=tax, version="1.0.0")
    tax = _list(
        tax,
        summary="Income tax rules and deductions for freelancers in Germany.",
        category="legal",
        price_model="one_time",
        price_cents=2500,
    )
    # Release dates in a known order: tax newest, then k8s, then sourdough.
    now = timezone.now()
    for i, pack in enumerate((bread, k8s, tax)):
        PackRelease.objects.filter(pack=pack).update(created_at=now - timedelta(days=3 - i))
    index_outbox_process()
    return bread, k8s, tax


def _slugs(resp: Any) -> list[str]:
    assert resp.status_code == 200, resp.content
    return [p["slug"] for p in resp.json()["results"]]


# --- the listing entry ------------------------------------------------------------------------------------


def test_sync_writes_one_plaintext_entry_in_the_publishers_catalog_namespace(make_pack, publisher):
    pack = _list(
        make_pack("tips", title="Tips", release=True),
        summary="Short tips.",
        category="how-to",
        tags=["quick"],
        readme="## Intro\n\nRead **this** first.",
    )
    cube = MemCube.objects.select_related("namespace").get(pk=pack.catalog_cube_id)
    assert cube.namespace.kind == NamespaceKind.CATALOG
    assert cube.namespace.key == f"catalog:{publisher.id}"
    assert cube.namespace.organization_id == publisher.organization_id
    assert cube.kind == "plaintext" and cube.frozen  # sweeps (cold archival) leave it alone
    for part in ("Tips", "Short tips.", "Category: how to", "Tags: quick", "Read this first."):
        assert part in cube.text
    assert "**" not in cube.text and "##" not in cube.text
    assert cube.metadata == {"pack_id": str(pack.id)}
    # Idempotent: a second sync writes nothing.
    catalog_sync(pack_id=pack.pk)
    catalog_sync(pack_id=pack.pk)
    again = MemCube.objects.get(pk=cube.pk)
    assert again.version == cube.version
    assert MemCube.objects.filter(namespace__kind=NamespaceKind.CATALOG).count() == 1


def test_a_listing_change_rewrites_the_entry_and_search_follows(make_pack, api_for, alice):
    pack = _list(make_pack("tips", title="Tips", release=True), summary="Gardening advice.")
    index_outbox_process()
    client = api_for(alice)
    assert _slugs(client.get(URL, {"q": "gardening"})) == ["tips"]
    version = MemCube.objects.get(pk=pack.catalog_cube_id).version
    pack = _list(pack, summary="Beekeeping advice.")
    cube = MemCube.objects.get(pk=pack.catalog_cube_id)
    assert cube.version == version + 1 and "Beekeeping" in cube.text
    index_outbox_process()
    assert _slugs(client.get(URL, {"q": "beekeeping"})) == ["tips"]
    assert _slugs(client.get(URL, {"q": "gardening"})) == []


def test_unlisting_deletes_the_entry_and_relisting_brings_one_back(make_pack, api_for, alice):
    pack = _list(make_pack("tips", title="Tips", release=True), summary="Gardening advice.")
    first = pack.catalog_cube_id
    index_outbox_process()
    pack = _list(pack, listed=False)
    assert pack.catalog_cube_id is None
    assert MemCube.objects.get(pk=first).state == MemoryState.DELETED
    index_outbox_process()
    client = api_for(alice)
    assert _slugs(client.get(URL, {"q": "gardening"})) == []
    assert client.get(f"{URL}/acme/tips").status_code == 404
    pack = _list(pack, listed=True)
    assert pack.catalog_cube_id not in (None, first)
    index_outbox_process()
    assert _slugs(client.get(URL, {"q": "gardening"})) == ["tips"]


def test_a_pack_without_a_release_has_no_entry_and_is_not_browsable(make_pack, api_for, alice):
    draft = _list(make_pack("draft", title="Draft", release=False), summary="Unreleased gardening.")
    assert draft.catalog_cube_id is None
    assert not MemCube.objects.filter(namespace__kind=NamespaceKind.CATALOG).exists()
    client = api_for(alice)
    assert _slugs(client.get(URL)) == []
    # Its page still answers (the publisher previews it), with no release.
    page = client.get(f"{URL}/acme/draft").json()
    assert page["releases"] == [] and page["latest_release"] is None and page["card"] == {}


def test_yanking_the_only_release_takes_the_pack_out_of_the_catalog(make_pack):
    pack = _list(make_pack("tips", title="Tips", release=True), summary="Tips.")
    assert pack.catalog_cube_id is not None
    PackRelease.objects.filter(pack=pack).update(yanked=True)
    pack = _list(pack)
    assert pack.catalog_cube_id is None
    assert catalog_browse().packs == []


def test_enqueue_runs_the_sync_once_the_transaction_commits(make_pack, django_capture_on_commit_callbacks):
    pack = make_pack("tips", title="Tips", release=True)
    Pack.objects.filter(pk=pack.pk).update(catalog_cube_id=None)
    MemCube.objects.filter(namespace__kind=NamespaceKind.CATALOG).delete()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        catalog_sync_enqueue(pack.pk)
    assert Pack.objects.get(pk=pack.pk).catalog_cube_id is None  # nothing before the commit
    with django_capture_on_commit_callbacks(execute=True):
        for cb in callbacks:
            cb()  # the commit: Celery is eager in tests, so the task runs here
    assert Pack.objects.get(pk=pack.pk).catalog_cube_id is not None


def test_reindex_repairs_missing_and_stale_entries(make_pack):
    kept = _list(make_pack("kept", title="Kept", release=True), summary="Kept.")
    gone = _list(make_pack("gone", title="Gone", release=True), summary="Gone.")
    # Changes made behind the catalog's back: an entry lost, a pack unlisted without a sync.
    MemCube.objects.filter(pk=kept.catalog_cube_id).update(state=MemoryState.ARCHIVED)
    Pack.objects.filter(pk=gone.pk).update(listed=False)
    result = catalog_reindex()
    assert result == {"synced": 2, "browsable": 1}
    kept.refresh_from_db()
    gone.refresh_from_db()
    live = MemCube.objects.filter(namespace__kind=NamespaceKind.CATALOG, state__in=["generated", "activated"])
    assert list(live.values_list("pk", flat=True)) == [kept.catalog_cube_id]
    assert gone.catalog_cube_id is None
    assert catalog_reindex() == {"synced": 2, "browsable": 1}  # and again: nothing more to do
    assert live.count() == 1


# --- search -----------------------------------------------------------------------------------------------


def test_full_text_search_matches_title_summary_tags_and_readme(shelf, api_for, alice):
    client = api_for(alice)
    assert _slugs(client.get(URL, {"q": "sourdough"})) == ["sourdough"]
    assert _slugs(client.get(URL, {"q": "levain"})) == ["sourdough"]  # from the readme excerpt
    assert _slugs(client.get(URL, {"q": "freelancers deductions"})) == ["tax"]
    body = client.get(URL, {"q": "runbooks"}).json()
    assert body["sort"] == "relevance" and body["query"] == "runbooks"
    assert body["results"][0]["slug"] == "k8s" and 0 < body["results"][0]["score"] <= 1


def test_semantic_search_finds_a_listing_with_no_word_in_common(shelf, api_for, alice):
    slugs = _slugs(api_for(alice).get(URL, {"q": "container orchestration clusters"}))
    assert slugs[:1] == ["k8s"]
    assert _slugs(api_for(alice).get(URL, {"q": "zebra migration"})) == []  # unrelated: nothing


def test_search_hits_are_rechecked_against_the_database(shelf, api_for, alice):
    bread, _, _ = shelf
    Pack.objects.filter(pk=bread.pk).update(listed=False)  # no sync: the index still has it
    assert _slugs(api_for(alice).get(URL, {"q": "sourdough"})) == []


# --- facets, filters, sorting, pages -------------------------------------------------------------------


def _facet(body: dict, name: str) -> dict[str, int]:
    return {v["value"]: v["count"] for v in body["facets"][name]}


def test_facets_count_every_dimension(shelf, api_for, alice):
    body = api_for(alice).get(URL).json()
    assert body["count"] == 3
    assert _facet(body, "category") == {"food": 1, "devops": 1, "legal": 1}
    assert _facet(body, "price_model") == {"free": 1, "subscription": 1, "one_time": 1}
    assert _facet(body, "form") == {"plaintext": 3, "kv": 2}  # k8s allows plaintext only
    assert _facet(body, "base_model") == {"llama-3-8b": 2, "mistral-7b": 1}
    assert _facet(body, "publisher") == {"acme": 2, "globex": 1}
    assert {v["value"]: v["label"] for v in body["facets"]["publisher"]} == {
        "acme": "Acme",
        "globex": "Globex",
    }
    assert _facet(body, "rating") == {"4": 1, "3": 2, "2": 2, "1": 2}
    assert [v["label"] for v in body["facets"]["rating"]] == ["4+", "3+", "2+", "1+"]


def test_each_filter_narrows_and_facets_stay_disjunctive(shelf, api_for, alice):
    client = api_for(alice)
    assert _slugs(client.get(URL, {"category": "food"})) == ["sourdough"]
    assert sorted(_slugs(client.get(URL, {"category": ["food", "legal"]}))) == ["sourdough", "tax"]
    assert _slugs(client.get(URL, {"price_model": "subscription"})) == ["k8s"]
    assert _slugs(client.get(URL, {"price_model": "free"})) == ["sourdough"]
    assert sorted(_slugs(client.get(URL, {"form": "kv"}))) == ["sourdough", "tax"]
    assert _slugs(client.get(URL, {"base_model": "mistral-7b"})) == ["k8s"]
    assert _slugs(client.get(URL, {"publisher": "globex"})) == ["tax"]
    assert _slugs(client.get(URL, {"rating": 4})) == ["sourdough"]
    assert sorted(_slugs(client.get(URL, {"rating": 3}))) == ["k8s", "sourdough"]
    assert _slugs(client.get(URL, {"tag": "bread"})) == ["sourdough"]
    assert _slugs(client.get(URL, {"publisher": "acme", "category": "legal"})) == []
    body = client.get(URL, {"category": "food"}).json()
    # The category facet ignores its own filter (other categories stay countable); others apply it.
    assert _facet(body, "category") == {"food": 1, "devops": 1, "legal": 1}
    assert _facet(body, "publisher") == {"acme": 1}
    # A query and filters together.
    assert _slugs(client.get(URL, {"q": "sourdough", "price_model": "subscription"})) == []


def test_sorting(shelf, api_for, alice):
    client = api_for(alice)
    assert _slugs(client.get(URL)) == ["tax", "k8s", "sourdough"]  # newest release first (the default)
    assert _slugs(client.get(URL, {"sort": "newest"})) == ["tax", "k8s", "sourdough"]
    assert _slugs(client.get(URL, {"sort": "rating"})) == ["sourdough", "k8s", "tax"]  # unrated last
    assert _slugs(client.get(URL, {"sort": "installs"})) == ["k8s", "sourdough", "tax"]
    assert _slugs(client.get(URL, {"q": "tax freelancers sourdough", "sort": "installs"}))[-1] == "tax"


def test_pagination(shelf, api_for, alice):
    client = api_for(alice)
    first = client.get(URL, {"limit": 2}).json()
    assert first["count"] == 3 and len(first["results"]) == 2 and first["next"]
    rest = client.get(URL, {"limit": 2, "offset": 2}).json()
    assert [p["slug"] for p in rest["results"]] == ["sourdough"] and rest["next"] is None


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"sort": "cheapest"}, "sort"),
        ({"sort": "relevance"}, "sort"),  # relevance needs a query
        ({"price_model": "barter"}, "price_model"),
        ({"form": "hologram"}, "form"),
        ({"rating": 0}, "rating"),
        ({"rating": 6}, "rating"),
        ({"rating": "four"}, "rating"),
        ({"q": "x" * 201}, "q"),
        ({"limit": 0}, "limit"),
        ({"offset": -1}, "offset"),
        ({"categroy": "food"}, "categroy"),
        ({"category": "x" * 101}, "category"),
    ],
)
def test_bad_browse_input_is_a_400_naming_it(shelf, api_for, alice, params, named):
    before = MemCube.objects.count()
    resp = api_for(alice).get(URL, params)
    assert resp.status_code == 400, resp.content
    assert named in resp.json()["error"]["message"]
    assert MemCube.objects.count() == before


def test_bad_input_to_the_selector_names_it():
    from core.errors import ApplicationError

    for kwargs, named in (
        ({"sort": "cheapest"}, "sort"),
        ({"filters": {"price_model": ["barter"]}}, "price_model"),
        ({"filters": {"form": "hologram"}}, "form"),
        ({"filters": {"rating": True}}, "rating"),
        ({"query": "x" * 201}, "q"),
    ):
        with pytest.raises(ApplicationError) as exc:
            catalog_browse(**kwargs)
        assert exc.value.status == 400 and exc.value.extra["field"] == named


def test_pack_page(shelf, api_for, alice):
    _, k8s, _ = shelf
    page = api_for(alice).get(f"{URL}/acme/k8s").json()
    assert page["title"] == "Kubernetes operations" and page["summary"].startswith("Runbooks")
    assert page["price_display"] == "9.00 USD / month" and page["is_free"] is False
    assert page["price_model"] == "subscription" and page["forms"] == ["plaintext"]
    assert page["forms_offered"] == ["plaintext"]
    assert page["rating_avg"] == 3.2 and page["rating_count"] == 5 and page["install_count"] == 50
    [release] = page["releases"]
    assert release["version"] == "1.0.0" and release["memories"] == 2
    assert release["release_id"] == k8s.releases.get().manifest_sha256
    assert page["latest_release"]["version"] == "1.0.0"
    assert page["card"] == (k8s.releases.get().card or {})
    assert page["review_summary"] == {
        "count": 0,
        "average": 0.0,
        "histogram": {"1": 0, "2": 0, "3": 0, "4": 0, "5": 0},
    }
    assert api_for(alice).get(f"{URL}/acme/nope").status_code == 404


def test_forms_offered_follow_content_and_terms():
    pack = Pack(forms=[])
    assert forms_offered(pack, {"plaintext"}) == ["plaintext", "kv"]
    assert forms_offered(pack, {"parameter"}) == ["lora"]
    assert forms_offered(pack, {"activation", "parameter"}) == ["kv", "lora"]
    assert forms_offered(Pack(forms=["lora"]), {"plaintext"}) == []


def test_the_web_page_still_lists_browsable_packs(shelf, make_pack):
    from marketplace.selectors import pack_catalog

    make_pack("draft", title="Draft")  # no release: not on the page either
    assert sorted(p.slug for p in pack_catalog()) == ["k8s", "sourdough", "tax"]
    assert [p.slug for p in pack_catalog(query="kubernetes")] == ["k8s"]


# --- a listing entry is nobody's memory ------------------------------------------------------------------


def test_catalog_entries_never_show_in_anyones_memories_or_search(shelf, api_for, alice, expert):
    bread, _, _ = shelf
    catalog_ids = {
        str(c)
        for c in MemCube.objects.filter(namespace__kind=NamespaceKind.CATALOG).values_list("pk", flat=True)
    }
    assert len(catalog_ids) == 3
    ns = Namespace.objects.get(key=f"catalog:{bread.publisher_id}")
    for user in (alice, expert):  # expert owns the organization that owns the catalog namespace
        client = api_for(user)
        listed = client.get("/api/v1/memories", {"limit": 200}).json()["results"]
        assert not catalog_ids & {m["id"] for m in listed}
        hits = client.post(
            "/api/v1/memories/search", {"query": "sourdough baking loaves", "top_k": 50}, format="json"
        ).json()
        assert not catalog_ids & {h["memory"]["id"] for h in hits["results"]}
        assert ns.key not in hits["namespaces"]
        assert client.get("/api/v1/memories", {"namespace": ns.key}).status_code == 404
        assert client.get(f"/api/v1/memories/{bread.catalog_cube_id}").status_code == 404
        cube = MemCube.objects.get(pk=bread.catalog_cube_id)
        assert client.get(f"/api/v1/memories/provenance/{cube.provenance_id}").status_code == 404
        keys = {n["key"] for n in client.get("/api/v1/namespaces").json()}
        assert not any(k.startswith("catalog:") for k in keys)
        search_ns = client.post(
            "/api/v1/memories/search", {"query": "sourdough", "namespaces": [ns.key]}, format="json"
        )
        assert search_ns.status_code == 404


def test_browsing_needs_the_marketplace_scope(shelf, api_for, alice):
    client = api_for(alice, scopes=["memories:read"])
    for resp in (client.get(URL), client.get(f"{URL}/acme/k8s"), client.get(f"{URL}/acme/k8s/reviews")):
        assert resp.status_code == 403 and "'marketplace' scope" in resp.json()["error"]["message"]
