"""The feeds API, through HTTP with real tokens: listing and reading feeds, their entries rendered for the
reader, and the publisher's memory updates and retractions."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.urls import resolve

from feeds.models import EntryKind, Feed, FeedEntry
from feeds.services.log import entry_verify
from governance.watermark.text import watermark_text
from governance.watermarking import watermark_key
from marketplace.models import PackItem

pytestmark = pytest.mark.django_db

FEEDS = ["feeds"]
PUBLISH = ["marketplace", "memories:write"]


def feed_url(world: Any, tail: str = "") -> str:
    return f"/api/v1/feeds/{world.feed.pk}{tail}"


def written(world: Any) -> tuple[int, int, int]:
    """What a refused write must leave as it was: the feed's entries, its head, the pack's items."""
    feed = Feed.objects.get(pk=world.feed.pk)
    return (
        FeedEntry.objects.filter(feed=feed).count(),
        feed.last_seq,
        PackItem.objects.filter(pack=world.pack).count(),
    )


def assert_error(resp: Any, status: int, field: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.content
    error = resp.json()["error"]
    assert error["code"] and error["message"]
    if field is not None:
        named = set((error.get("fields") or {}).keys()) | {(error.get("extra") or {}).get("field")}
        assert field in named or field in error["message"], error
    return error


# --- listing and reading ------------------------------------------------------------------------------


def test_a_licensed_subscriber_lists_the_feed_and_someone_without_a_licence_does_not(feed_world, api_for):
    resp = api_for(feed_world.subscriber, FEEDS).get("/api/v1/feeds")

    assert resp.status_code == 200, resp.content
    body = resp.json()
    assert body["count"] == 1
    (feed,) = body["results"]
    assert feed["id"] == str(feed_world.feed.pk) and feed["pack"] == "acme/facts"
    assert feed["pack_title"] == "Facts" and feed["last_seq"] == 1  # the release that made the world

    assert api_for(feed_world.other, FEEDS).get("/api/v1/feeds").json()["count"] == 0
    # The publisher reads its own feed without holding a licence.
    assert api_for(feed_world.publisher_user, FEEDS).get("/api/v1/feeds").json()["count"] == 1


def test_the_pack_filter_narrows_the_list(feed_world, api_for):
    client = api_for(feed_world.subscriber, FEEDS)

    assert client.get("/api/v1/feeds?pack=acme/facts").json()["count"] == 1
    assert client.get("/api/v1/feeds?pack=acme/other").json()["count"] == 0
    assert client.get("/api/v1/feeds?pack=nobody/facts").json()["count"] == 0


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("pack=facts", "pack"),
        ("pack=a/b/c", "pack"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("offset=-1", "offset"),
        ("colour=red", "colour"),
    ],
)
def test_a_bad_list_query_is_a_400_naming_the_parameter(feed_world, api_for, query, field):
    resp = api_for(feed_world.subscriber, FEEDS).get(f"/api/v1/feeds?{query}")

    assert_error(resp, 400, field)


def test_feed_detail_tells_the_reader_whether_they_publish_it_and_lists_their_subscriptions(
    feed_world, api_for
):
    subscription, _ = feed_world.subscribe(name="tax updates")

    mine = api_for(feed_world.subscriber, FEEDS).get(feed_url(feed_world))
    theirs = api_for(feed_world.publisher_user, FEEDS).get(feed_url(feed_world))

    assert mine.status_code == 200, mine.content
    body = mine.json()
    assert body["pack"] == "acme/facts" and body["last_seq"] == 1 and body["publishing"] is False
    assert [(s["id"], s["name"], s["status"]) for s in body["subscriptions"]] == [
        (str(subscription.pk), "tax updates", "active")
    ]
    assert theirs.status_code == 200 and theirs.json()["publishing"] is True
    assert theirs.json()["subscriptions"] == []  # the subscriber's subscription is not the publisher's


def test_a_feed_the_caller_may_not_read_is_a_404_like_one_that_does_not_exist(feed_world, api_for):
    client = api_for(feed_world.other, FEEDS)

    for path in (feed_url(feed_world), feed_url(feed_world, "/entries"), f"/api/v1/feeds/{uuid.uuid4()}"):
        assert_error(client.get(path), 404)


def test_a_token_without_the_feeds_scope_is_refused_naming_it(feed_world, api_for):
    client = api_for(feed_world.subscriber, ["marketplace", "memories:read"])

    for path in ("/api/v1/feeds", feed_url(feed_world), feed_url(feed_world, "/entries")):
        error = assert_error(client.get(path), 403)
        assert "'feeds' scope" in error["message"]


# --- entries ------------------------------------------------------------------------------------------


def test_entries_come_in_seq_order_watermarked_for_the_reader_with_a_cursor(feed_world, api_for):
    # Long enough that the watermark always has slots to mark (a short sentence may carry none).
    texts = [
        f"The speed limit on rural road number {i} is now sixty kilometres per hour; however, drivers "
        "must also slow down near schools, and the new signs will be installed before the end of the "
        "month, although some villages already have them."
        for i in range(3)
    ]
    for t in texts:
        feed_world.upsert(t)
    client = api_for(feed_world.subscriber, FEEDS)

    page = client.get(feed_url(feed_world, "/entries?since=0&limit=2")).json()
    rest = client.get(feed_url(feed_world, f"/entries?since={page['next_since']}")).json()

    assert [e["seq"] for e in page["entries"]] == [1, 2] and page["next_since"] == 2
    assert [e["seq"] for e in rest["entries"]] == [3, 4] and rest["next_since"] == 4
    assert page["last_seq"] == rest["last_seq"] == 4
    first_upsert = page["entries"][1]
    assert first_upsert["kind"] == EntryKind.MEMORY_UPSERTED and first_upsert["pack"] == "acme/facts"
    stored = FeedEntry.objects.get(feed=feed_world.feed, seq=2)
    assert first_upsert["entry_sha256"] == stored.body_sha256 and first_upsert["id"] == str(stored.pk)
    # Rendered for this reader: the memory text carries their watermark, so the document is unsigned.
    assert first_upsert["signed"] is False and "signature" not in first_upsert
    # ... with the mark of the reader's own installation, as its installed copies are marked.
    original = stored.body["data"]["text"]
    marked = watermark_text(
        original,
        key=watermark_key(feed_world.pack.publisher.namespace),
        installation_id=feed_world.installation.watermark_id,
    )
    assert first_upsert["data"]["text"] == marked != original
    # Nothing after the head: an empty page that keeps the cursor where it was.
    empty = client.get(feed_url(feed_world, "/entries?since=4")).json()
    assert empty["entries"] == [] and empty["next_since"] == 4


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=ten", "limit"),
        ("since=-1", "since"),
        ("since=x", "since"),
        (f"since={2**64}", "since"),
        ("cursor=3", "cursor"),
    ],
)
def test_bad_entry_queries_are_a_400_naming_the_parameter(feed_world, api_for, query, field):
    resp = api_for(feed_world.subscriber, FEEDS).get(feed_url(feed_world, f"/entries?{query}"))

    assert_error(resp, 400, field)


def test_the_largest_page_is_accepted(feed_world, api_for):
    resp = api_for(feed_world.subscriber, FEEDS).get(feed_url(feed_world, "/entries?limit=200"))

    assert resp.status_code == 200 and len(resp.json()["entries"]) == 1


def test_the_events_stream_is_routed_under_the_feed():
    match = resolve(f"/api/v1/feeds/{uuid.uuid4()}/events")

    assert match.view_name == "v1:feed-events"
    assert match.func.view_class.__name__ == "FeedEventsApi"


# --- publishing ---------------------------------------------------------------------------------------


def test_the_publisher_publishes_a_new_memory_and_an_update_of_it_as_signed_entries(feed_world, api_for):
    client = api_for(feed_world.publisher_user, PUBLISH)

    created = client.post(
        feed_url(feed_world, "/memories"),
        {"text": "The VAT rate on books falls to five percent.", "tags": ["tax"]},
        format="json",
    )

    assert created.status_code == 201, created.content
    doc = created.json()
    assert (
        doc["seq"] == 2
        and doc["kind"] == EntryKind.MEMORY_UPSERTED
        and doc["feed"] == str(feed_world.feed.pk)
    )
    assert doc["data"]["text"] == "The VAT rate on books falls to five percent."
    entry = FeedEntry.objects.get(pk=doc["id"])
    assert entry_verify(entry) and doc["signature"] == entry.signature  # the publisher's copy is signed
    provenance = doc["data"]["provenance_id"]
    assert PackItem.objects.filter(pack=feed_world.pack, cube__provenance_id=provenance).exists()

    updated = client.post(
        feed_url(feed_world, "/memories"),
        {"provenance_id": provenance, "text": "The VAT rate on books falls to zero."},
        format="json",
    )

    assert updated.status_code == 201, updated.content
    assert updated.json()["seq"] == 3 and updated.json()["data"]["provenance_id"] == provenance
    assert updated.json()["data"]["version"] == doc["data"]["version"] + 1
    assert Feed.objects.get(pk=feed_world.feed.pk).last_seq == 3


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": "ok", "colour": "red"}, "colour"),
        ({"text": 42}, "text"),
        ({"text": "ok", "tags": "tax"}, "tags"),
        ({"text": "ok", "provenance_id": "not-a-uuid"}, "provenance_id"),
        ({"text": "ok", "kind": "poem"}, "kind"),
        ({"text": ""}, "text"),
    ],
)
def test_a_bad_memory_is_a_400_naming_the_field_and_writes_nothing(feed_world, api_for, body, field):
    before = written(feed_world)

    resp = api_for(feed_world.publisher_user, PUBLISH).post(
        feed_url(feed_world, "/memories"), body, format="json"
    )

    assert_error(resp, 400, field)
    assert written(feed_world) == before


def test_updating_a_memory_that_is_not_the_packs_is_a_404(feed_world, api_for):
    before = written(feed_world)

    resp = api_for(feed_world.publisher_user, PUBLISH).post(
        feed_url(feed_world, "/memories"), {"provenance_id": str(uuid.uuid4()), "text": "x"}, format="json"
    )

    assert_error(resp, 404)
    assert written(feed_world) == before


def test_a_subscriber_may_read_the_feed_but_not_publish_to_it(feed_world, api_for):
    before = written(feed_world)
    client = api_for(feed_world.subscriber, [*PUBLISH, "feeds"])

    upsert = client.post(feed_url(feed_world, "/memories"), {"text": "A forged fact."}, format="json")
    retract = client.post(
        feed_url(feed_world, "/retractions"), {"provenance_id": str(uuid.uuid4())}, format="json"
    )

    assert_error(upsert, 403)
    assert_error(retract, 403)
    assert written(feed_world) == before


def test_someone_who_may_not_read_the_feed_cannot_find_it_to_publish(feed_world, api_for):
    before = written(feed_world)

    resp = api_for(feed_world.other, PUBLISH).post(
        feed_url(feed_world, "/memories"), {"text": "x"}, format="json"
    )

    assert_error(resp, 404)
    assert written(feed_world) == before


def test_publishing_needs_the_marketplace_scope_not_feeds(feed_world, api_for):
    before = written(feed_world)
    client = api_for(feed_world.publisher_user, ["feeds", "memories:write"])

    for tail, body in (("/memories", {"text": "x"}), ("/retractions", {"provenance_id": str(uuid.uuid4())})):
        error = assert_error(client.post(feed_url(feed_world, tail), body, format="json"), 403)
        assert "'marketplace' scope" in error["message"]
    assert written(feed_world) == before


def test_the_publisher_retracts_a_memory(feed_world, api_for):
    item = PackItem.objects.filter(pack=feed_world.pack).select_related("cube").first()
    provenance = str(item.cube.provenance_id)

    resp = api_for(feed_world.publisher_user, PUBLISH).post(
        feed_url(feed_world, "/retractions"),
        {"provenance_id": provenance, "reason": "superseded"},
        format="json",
    )

    assert resp.status_code == 201, resp.content
    doc = resp.json()
    assert doc["kind"] == EntryKind.MEMORY_RETRACTED and doc["seq"] == 2
    assert doc["data"]["provenance_id"] == provenance and doc["data"]["reason"] == "superseded"
    assert not PackItem.objects.filter(pk=item.pk).exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "provenance_id"),
        ({"provenance_id": "nope"}, "provenance_id"),
        ({"provenance_id": 12}, "provenance_id"),
        ({"provenance_id": str(uuid.UUID(int=1)), "reason": 7}, "reason"),
        ({"provenance_id": str(uuid.UUID(int=1)), "why": "x"}, "why"),
    ],
)
def test_a_bad_retraction_is_a_400_naming_the_field_and_writes_nothing(feed_world, api_for, body, field):
    before = written(feed_world)

    resp = api_for(feed_world.publisher_user, PUBLISH).post(
        feed_url(feed_world, "/retractions"), body, format="json"
    )

    assert_error(resp, 400, field)
    assert written(feed_world) == before
