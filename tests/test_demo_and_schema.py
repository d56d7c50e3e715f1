import pytest
from django.core.management import call_command

from accounts.models import User
from feeds.models import Delivery, Subscription
from marketplace.models import Installation, Order, Pack, PackRelease, PackUpload, Review

pytestmark = pytest.mark.django_db


def test_seed_demo_is_idempotent():
    call_command("seed_demo")
    call_command("seed_demo")
    assert User.objects.filter(username="demo").count() == 1
    # Every price model is on show, one pack was authored from an uploaded document, and each has a
    # signed release with its card.
    assert sorted(Pack.objects.values_list("price_model", flat=True)) == [
        "free",
        "metered",
        "one_time",
        "subscription",
    ]
    assert PackUpload.objects.filter(kind="document", status="done").count() == 1
    assert all(r.signature and r.card for r in PackRelease.objects.all())
    recall = PackRelease.objects.get(pack__slug="python-pitfalls").card["evaluation"]
    assert recall, "the demo pack's card reports recall on its evaluation questions"
    # The demo user installed a free pack, bought a paid one through the ledger's signed webhook,
    # and reviewed one.
    demo = User.objects.get(username="demo")
    assert Installation.objects.filter(user=demo).count() == 2
    order = Order.objects.get(buyer=demo)
    assert order.status == "paid" and order.licence and order.events.count() >= 3
    assert Review.objects.filter(author=demo).count() == 1
    # The demo user follows the free pack's feed: a revision, an addition and a retraction (plus the
    # retracted memory's own upsert) wait as deliveries to the demo user's vault.
    sub = Subscription.objects.get(owner_user=demo)
    kinds = list(sub.feed.entries.filter(seq__gt=1).values_list("kind", flat=True))
    assert kinds == ["memory.upserted"] * 3 + ["memory.retracted"]
    assert Delivery.objects.filter(destination__subscription=sub).count() == 4


def test_openapi_schema_documents_the_memory_api(client):
    resp = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert resp.status_code == 200
    paths = resp.json()["paths"]
    for p in (
        "/api/v1/memories",
        "/api/v1/memories/search",
        "/api/v1/memories/{cube_id}/history",
        "/api/v1/memories/provenance/{provenance_id}",
        "/api/v1/marketplace/packs",
    ):
        assert p in paths


def test_unknown_route_answers_json_404(client):
    resp = client.get("/api/v1/nothing-here")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
