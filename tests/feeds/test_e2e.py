"""The subscribe path end to end, through the API as its users call it, with every transaction committed
(deliveries go out after commit, as in production; Celery is eager in tests):

a licensed buyer subscribes with a webhook (a real HTTP server on loopback) and its vault; the publisher
pushes a revision through the feed API; the webhook request verifies with the `standardwebhooks`
package, the buyer's installed copy has a new (watermarked) version and search finds the new fact; the
publisher retracts it; the buyer's copy is archived and neither search nor chat return it; the entries
verify against the instance key.
"""

from __future__ import annotations

import unicodedata

import pytest
from standardwebhooks.webhooks import Webhook

from feeds.models import Delivery, DeliveryStatus, FeedEntry
from feeds.services.log import entry_verify
from tests.feeds.receiver import Receiver
from tests.inference.django_fixtures import chat
from vault.models import MemCube, MemoryState
from vault.services import index_outbox_process

pytestmark = pytest.mark.django_db(transaction=True)

REVISED = "A refund request must now be filed within thirty days of the original purchase date."
QUERY = "How many days do I have to file a refund request?"


def visible(text: str) -> str:
    """The text without format characters (the watermark's zero-width layer)."""
    return "".join(c for c in text if unicodedata.category(c) != "Cf")


def search(client, query: str) -> list[dict]:  # type: ignore[no-untyped-def]
    resp = client.post("/api/v1/memories/search", {"query": query, "top_k": 10}, format="json")
    assert resp.status_code == 200, resp.json()
    return [r["memory"] for r in resp.json()["results"]]


def test_a_subscriber_gets_a_revision_then_a_retraction_by_webhook_and_in_its_vault(
    feed_world, api_for, settings
):
    settings.MEMHUB_OUTBOUND_ALLOW_PRIVATE = True  # the receiver is on loopback
    settings.MEMHUB_MODEL_PATH = ""  # chat answers in retrieval-only mode
    buyer = api_for(feed_world.subscriber, scopes=["feeds", "memories:read", "inference"])
    publisher = api_for(feed_world.publisher_user, scopes=["marketplace", "memories:write", "memories:read"])
    feed = str(feed_world.feed.pk)
    origin = MemCube.objects.get(pack_items__pack=feed_world.pack, text__startswith="A refund request")
    copy = MemCube.objects.get(
        namespace=feed_world.installation.namespace, provenance_id=origin.provenance_id, is_canary=False
    )

    with Receiver() as rx:
        rx.respond("/memhub", [200] * 10)
        # Given a licensed buyer subscribed with a webhook and its vault
        resp = buyer.post(
            "/api/v1/subscriptions", {"feed": feed, "webhook_url": rx.url("/memhub")}, format="json"
        )
        assert resp.status_code == 201, resp.json()
        sub = resp.json()
        secret = sub["webhook_secret"]
        assert secret.startswith("whsec_")
        assert "webhook_secret" not in buyer.get(f"/api/v1/subscriptions/{sub['id']}").json()

        # When the publisher pushes a revision through the feed
        resp = publisher.post(
            f"/api/v1/feeds/{feed}/memories",
            {"provenance_id": str(origin.provenance_id), "text": REVISED},
            format="json",
        )
        assert resp.status_code == 201, resp.json()
        revision = resp.json()
        index_outbox_process()

        # Then the webhook got it, signed as Standard Webhooks says
        [request] = rx.requests_to("/memhub")
        payload = Webhook(secret).verify(request.body, request.headers)
        assert payload["type"] == "memory.upserted"
        assert payload["data"]["seq"] == revision["seq"]
        assert payload["data"]["data"]["provenance_id"] == str(origin.provenance_id)
        # ... and the buyer's copy is a new version (the old one kept) that search finds
        copy.refresh_from_db()
        assert copy.version == 2 and copy.versions.count() == 2
        # (watermarked for this installation: format characters and number words may differ)
        assert "must now be filed within" in visible(copy.text)
        hits = [r for r in search(buyer, QUERY) if r["id"] == str(copy.id)]
        assert hits and "must now be filed within" in visible(hits[0]["text"])

        # When the publisher retracts it
        resp = publisher.post(
            f"/api/v1/feeds/{feed}/retractions",
            {"provenance_id": str(origin.provenance_id), "reason": "The refund rule was withdrawn."},
            format="json",
        )
        assert resp.status_code == 201, resp.json()
        index_outbox_process()

    # Then the webhook got the retraction, after the revision, and the copy is archived
    received = [Webhook(secret).verify(r.body, r.headers)["type"] for r in rx.requests_to("/memhub")]
    assert received == ["memory.upserted", "memory.retracted"]
    copy.refresh_from_db()
    assert copy.state == MemoryState.ARCHIVED
    assert str(copy.id) not in {r["id"] for r in search(buyer, QUERY)}
    resp = chat(buyer, QUERY, memhub={"namespaces": [feed_world.installation.namespace.key]})
    assert resp.status_code == 200, resp.json()
    assert str(copy.id) not in {m["id"] for m in resp.json()["memhub"]["memories"]}
    # Every delivery went through once, and the subscription's cursor is at the feed's head
    subscription = buyer.get(f"/api/v1/subscriptions/{sub['id']}").json()
    assert (
        subscription["cursor"]
        == subscription["enqueued_seq"]
        == FeedEntry.objects.filter(feed=feed_world.feed).count()
    )
    assert set(
        Delivery.objects.filter(destination__subscription_id=sub["id"]).values_list("status", flat=True)
    ) == {DeliveryStatus.DELIVERED}
    # The log is signed by the instance key: every entry verifies
    assert all(entry_verify(e) for e in FeedEntry.objects.filter(feed=feed_world.feed))
