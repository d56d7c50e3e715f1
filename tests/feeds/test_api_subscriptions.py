"""The subscriptions API, through HTTP with real tokens: subscribing (filters, webhook, SSRF guard), reading
and changing a subscription, pause and resume, rotating the webhook secret, and following deliveries,
dead letters included, and retrying them."""

from __future__ import annotations

import http.server
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from feeds.models import Delivery, DeliveryStatus, Destination, Subscription, SubscriptionStatus
from marketplace.models import Pack

pytestmark = pytest.mark.django_db

FEEDS = ["feeds"]
SUBS = "/api/v1/subscriptions"


def sub_url(subscription: Any, tail: str = "") -> str:
    return f"{SUBS}/{subscription.pk if hasattr(subscription, 'pk') else subscription}{tail}"


def assert_error(resp: Any, status: int, field: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.content
    error = resp.json()["error"]
    assert error["code"] and error["message"]
    if field is not None:
        extra = error.get("extra") or {}
        named = set((error.get("fields") or {}).keys()) | set(extra.keys()) | {extra.get("field")}
        assert field in named or field in error["message"], error
    return error


def subscription_rows() -> list[tuple[Any, ...]]:
    """Everything a refused subscription write must leave as it was."""
    return (
        sorted(
            Subscription.objects.values_list(
                "id",
                "name",
                "status",
                "filter_tags",
                "filter_kinds",
                "filter_query",
                "filter_threshold",
                "webhook_url",
                "webhook_secret",
                "apply_to_vault",
                "enqueued_seq",
            )
        )
        + sorted(Destination.objects.values_list("id", "kind", "url", "active"))
        + sorted(Delivery.objects.values_list("id", "status", "next_attempt_at"))
    )


@pytest.fixture
def allow_loopback(settings):  # type: ignore[no-untyped-def]
    """These tests' webhook receivers live on 127.0.0.1: the instance setting that allows it, on."""
    settings.MEMHUB_OUTBOUND_ALLOW_PRIVATE = True


class _Answer(http.server.BaseHTTPRequestHandler):
    status = 200
    bodies: list[bytes]

    def do_POST(self) -> None:
        self.bodies.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def refusing_receiver() -> Iterator[Any]:
    """A real HTTP server on loopback that answers 400 to everything (a delivery it gets is dead)."""
    handler = type("Refuse", (_Answer,), {"status": 400, "bodies": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}/hook"  # type: ignore[attr-defined]
    server.handler = handler  # type: ignore[attr-defined]
    yield server
    server.shutdown()
    server.server_close()


def run_deliveries() -> None:
    from feeds.delivery.engine import deliveries_run_due

    deliveries_run_due()


# --- subscribing --------------------------------------------------------------------------------------


def test_subscribing_with_filters_answers_the_subscription_from_now(feed_world, api_for):
    client = api_for(feed_world.subscriber, FEEDS)

    resp = client.post(
        SUBS,
        {
            "feed": str(feed_world.feed.pk),
            "name": "tax",
            "filter": {
                "tags": ["tax", "vat"],
                "kinds": ["memory.upserted"],
                "query": "tax rates",
                "threshold": 0.5,
            },
        },
        format="json",
    )

    assert resp.status_code == 201, resp.content
    body = resp.json()
    assert body["feed"] == str(feed_world.feed.pk) and body["pack"] == "acme/facts"
    assert body["owner"] == "subscriber" and body["organization"] is None and body["status"] == "active"
    assert body["filter"] == {
        "tags": ["tax", "vat"],
        "kinds": ["memory.upserted"],
        "query": "tax rates",
        "threshold": 0.5,
    }
    assert body["apply_to_vault"] is True and body["webhook_url"] == "" and body["webhook_secret"] is None
    assert body["enqueued_seq"] == 1  # from now: the release entry that was already there is not replayed
    sub = Subscription.objects.get(pk=body["id"])
    assert sub.owner_user == feed_world.subscriber and sub.filter_tags == ["tax", "vat"]


def test_since_replays_from_that_entry(feed_world, api_for):
    resp = api_for(feed_world.subscriber, FEEDS).post(
        SUBS, {"feed": str(feed_world.feed.pk), "since": 0}, format="json"
    )

    assert resp.status_code == 201, resp.content
    sub = Subscription.objects.get(pk=resp.json()["id"])
    assert Delivery.objects.filter(destination__subscription=sub, seq=1).exists()


def test_a_webhook_subscription_shows_its_secret_once_and_never_again(feed_world, api_for, allow_loopback):
    client = api_for(feed_world.subscriber, FEEDS)

    resp = client.post(
        SUBS, {"feed": str(feed_world.feed.pk), "webhook_url": "http://127.0.0.1:9/hook"}, format="json"
    )

    assert resp.status_code == 201, resp.content
    secret = resp.json()["webhook_secret"]
    assert secret.startswith("whsec_")
    sub = Subscription.objects.get(pk=resp.json()["id"])
    assert sub.webhook_url == "http://127.0.0.1:9/hook"
    assert Destination.objects.filter(
        subscription=sub, kind="webhook", url="http://127.0.0.1:9/hook"
    ).exists()
    feed_world.upsert("The filing deadline moves to the thirtieth of April.")
    for path in (SUBS, sub_url(sub), sub_url(sub, "/deliveries"), f"/api/v1/feeds/{feed_world.feed.pk}"):
        got = client.get(path)
        assert got.status_code == 200, (path, got.content)
        assert secret not in got.content.decode() and "webhook_secret" not in got.json(), path


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://10.0.0.5/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
    ],
)
def test_a_webhook_on_a_private_address_is_refused_and_nothing_is_written(feed_world, api_for, settings, url):
    settings.MEMHUB_OUTBOUND_ALLOW_PRIVATE = False
    before = subscription_rows()

    resp = api_for(feed_world.subscriber, FEEDS).post(
        SUBS, {"feed": str(feed_world.feed.pk), "webhook_url": url}, format="json"
    )

    error = assert_error(resp, 400, "webhook_url")
    assert error["code"] == "url_not_allowed"
    assert subscription_rows() == before


@pytest.mark.parametrize(
    "url", ["ftp://example.com/hook", "http://user:pw@example.com/hook", "not a url", "javascript:alert(1)"]
)
def test_a_webhook_url_that_is_no_http_url_is_refused(feed_world, api_for, url):
    before = subscription_rows()

    resp = api_for(feed_world.subscriber, FEEDS).post(
        SUBS, {"feed": str(feed_world.feed.pk), "webhook_url": url}, format="json"
    )

    assert_error(resp, 400, "webhook_url")
    assert subscription_rows() == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"colour": "red"}, "colour"),
        ({"feed": "not-a-uuid"}, "feed"),
        ({"feed": 12}, "feed"),
        ({"name": 5}, "name"),
        ({"name": "x" * 121}, "name"),
        ({"filter": {"threshold": 1.5}}, "threshold"),
        ({"filter": {"threshold": -0.1}}, "threshold"),
        ({"filter": {"threshold": "0.5"}}, "threshold"),
        ({"filter": {"tags": [f"t{i}" for i in range(51)]}}, "tags"),
        ({"filter": {"tags": "tax"}}, "tags"),
        ({"filter": {"tags": [7]}}, "tags"),
        ({"filter": {"kinds": ["memory.sung"]}}, "kinds"),
        ({"filter": {"query": "q" * 2001}}, "query"),
        ({"filter": {"mood": "happy"}}, "mood"),
        ({"filter": "tax"}, "filter"),
        ({"apply_to_vault": "yes"}, "apply_to_vault"),
        ({"since": -1}, "since"),
        ({"since": "3"}, "since"),
        ({"since": 2**64}, "since"),
        ({"webhook_url": 3}, "webhook_url"),
        ({"organization": "nowhere"}, "organization"),
    ],
)
def test_bad_subscription_input_is_a_400_naming_the_field_and_writes_nothing(
    feed_world, api_for, body, field
):
    before = subscription_rows()
    body = {"feed": str(feed_world.feed.pk), **body}

    resp = api_for(feed_world.subscriber, FEEDS).post(SUBS, body, format="json")

    assert_error(resp, 400, field)
    assert subscription_rows() == before


def test_an_organization_the_caller_is_not_in_is_refused_like_one_that_does_not_exist(feed_world, api_for):
    before = subscription_rows()

    resp = api_for(feed_world.subscriber, FEEDS).post(
        SUBS, {"feed": str(feed_world.feed.pk), "organization": "acme"}, format="json"
    )

    error = assert_error(resp, 400, "organization")
    assert "not a member" in error["message"]
    assert subscription_rows() == before


def test_subscribing_without_a_licence_is_a_402_for_a_listed_pack_and_a_404_otherwise(feed_world, api_for):
    before = subscription_rows()
    client = api_for(feed_world.other, FEEDS)
    # The catalog shows the pack, so its feed is no secret: the answer says what is missing.
    resp = client.post(SUBS, {"feed": str(feed_world.feed.pk)}, format="json")
    assert assert_error(resp, 402)["code"] == "licence_required"
    # An unlisted pack's feed, and a feed that does not exist, are both just not found.
    Pack.objects.filter(pk=feed_world.pack.pk).update(listed=False)
    for feed_id in (feed_world.feed.pk, uuid.uuid4()):
        resp = client.post(SUBS, {"feed": str(feed_id)}, format="json")
        assert_error(resp, 404)
    assert subscription_rows() == before


def test_a_token_without_the_feeds_scope_is_refused_and_writes_nothing(feed_world, api_for):
    sub, _ = feed_world.subscribe()
    before = subscription_rows()
    client = api_for(feed_world.subscriber, ["marketplace", "memories:read", "memories:write", "account"])

    calls = [
        client.get(SUBS),
        client.post(SUBS, {"feed": str(feed_world.feed.pk)}, format="json"),
        client.get(sub_url(sub)),
        client.patch(sub_url(sub), {"name": "renamed"}, format="json"),
        client.delete(sub_url(sub)),
        client.post(sub_url(sub, "/pause")),
        client.post(sub_url(sub, "/resume")),
        client.post(sub_url(sub, "/rotate-secret")),
        client.get(sub_url(sub, "/deliveries")),
        client.get(sub_url(sub, "/dead-letters")),
        client.get(sub_url(sub, f"/deliveries/{uuid.uuid4()}")),
        client.post(sub_url(sub, f"/deliveries/{uuid.uuid4()}/retry")),
    ]

    for resp in calls:
        error = assert_error(resp, 403)
        assert "'feeds' scope" in error["message"]
    assert subscription_rows() == before


# --- reading and changing -----------------------------------------------------------------------------


def test_the_list_holds_your_subscriptions_newest_first_and_not_others(feed_world, api_for):
    first, _ = feed_world.subscribe(name="first")
    feed_world.subscribe(name="second")

    mine = api_for(feed_world.subscriber, FEEDS).get(SUBS).json()
    theirs = api_for(feed_world.publisher_user, FEEDS).get(SUBS).json()

    assert mine["count"] == 2 and [s["name"] for s in mine["results"]] == ["second", "first"]
    assert theirs == {"count": 0, "next": None, "previous": None, "results": []}
    paged = api_for(feed_world.subscriber, FEEDS).get(f"{SUBS}?limit=1&offset=1").json()
    assert [s["id"] for s in paged["results"]] == [str(first.pk)] and paged["count"] == 2


def test_the_list_filters_by_feed_and_status(feed_world, api_for):
    sub, _ = feed_world.subscribe()
    client = api_for(feed_world.subscriber, FEEDS)

    assert client.get(f"{SUBS}?feed={feed_world.feed.pk}").json()["count"] == 1
    assert client.get(f"{SUBS}?feed={uuid.uuid4()}").json()["count"] == 0
    assert client.get(f"{SUBS}?status=active").json()["count"] == 1
    assert client.get(f"{SUBS}?status=paused").json()["count"] == 0
    for query, field in (
        ("status=sleeping", "status"),
        ("feed=nope", "feed"),
        ("limit=500", "limit"),
        ("x=1", "x"),
    ):
        assert_error(client.get(f"{SUBS}?{query}"), 400, field)
    assert sub.pk


def test_someone_elses_subscription_is_a_404_and_stays_as_it_was(feed_world, api_for):
    sub, _ = feed_world.subscribe()
    before = subscription_rows()
    client = api_for(feed_world.other, FEEDS)

    calls = [
        client.get(sub_url(sub)),
        client.patch(sub_url(sub), {"name": "mine now"}, format="json"),
        client.delete(sub_url(sub)),
        client.post(sub_url(sub, "/pause")),
        client.post(sub_url(sub, "/resume")),
        client.post(sub_url(sub, "/rotate-secret")),
        client.get(sub_url(sub, "/deliveries")),
        client.get(sub_url(sub, "/dead-letters")),
        client.get(sub_url(uuid.uuid4())),
    ]

    for resp in calls:
        assert_error(resp, 404)
    assert subscription_rows() == before


def test_patch_changes_the_name_and_the_filters_sent(feed_world, api_for):
    sub, _ = feed_world.subscribe(name="before", filter_tags=["tax"], filter_query="tax rates")

    resp = api_for(feed_world.subscriber, FEEDS).patch(
        sub_url(sub), {"name": "after", "filter": {"tags": ["vat"], "threshold": 0.6}}, format="json"
    )

    assert resp.status_code == 200, resp.content
    body = resp.json()
    assert body["name"] == "after"
    assert body["filter"]["tags"] == ["vat"] and body["filter"]["threshold"] == 0.6
    assert body["filter"]["query"] == "tax rates"  # not sent, so kept
    sub.refresh_from_db()
    assert (sub.name, sub.filter_tags, sub.filter_threshold) == ("after", ["vat"], 0.6)


def test_a_webhook_added_later_gets_its_secret_in_that_answer_only(feed_world, api_for, allow_loopback):
    sub, secret = feed_world.subscribe()
    client = api_for(feed_world.subscriber, FEEDS)
    assert secret is None

    added = client.patch(sub_url(sub), {"webhook_url": "http://127.0.0.1:9/later"}, format="json")
    renamed = client.patch(sub_url(sub), {"name": "renamed"}, format="json")

    assert added.status_code == 200, added.content
    new_secret = added.json()["webhook_secret"]
    assert new_secret.startswith("whsec_") and added.json()["webhook_url"] == "http://127.0.0.1:9/later"
    assert renamed.status_code == 200 and renamed.json()["webhook_secret"] is None
    assert new_secret not in client.get(sub_url(sub)).content.decode()
    assert Destination.objects.filter(subscription=sub, kind="webhook", active=True).exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, None),
        ({"name": ["x"]}, "name"),
        ({"filter": {"threshold": 2}}, "threshold"),
        ({"filter": {"tags": [f"t{i}" for i in range(51)]}}, "tags"),
        ({"feed": str(uuid.UUID(int=3))}, "feed"),
        ({"apply_to_vault": 1}, "apply_to_vault"),
        ({"webhook_url": "http://192.168.1.1/hook"}, "webhook_url"),
    ],
)
def test_a_bad_patch_is_a_400_and_changes_nothing(feed_world, api_for, settings, body, field):
    settings.MEMHUB_OUTBOUND_ALLOW_PRIVATE = False
    sub, _ = feed_world.subscribe(name="kept")
    before = subscription_rows()

    resp = api_for(feed_world.subscriber, FEEDS).patch(sub_url(sub), body, format="json")

    assert_error(resp, 400, field)
    assert subscription_rows() == before


def test_delete_cancels_and_the_cancelled_subscription_stays_readable(feed_world, api_for):
    sub, _ = feed_world.subscribe()
    feed_world.upsert("Parking fines double from next month.")
    client = api_for(feed_world.subscriber, FEEDS)

    resp = client.delete(sub_url(sub))

    assert resp.status_code == 200, resp.content
    assert resp.json()["status"] == SubscriptionStatus.CANCELLED
    assert client.get(sub_url(sub)).json()["status"] == "cancelled"
    assert not Delivery.objects.filter(destination__subscription=sub, status=DeliveryStatus.PENDING).exists()
    feed_world.upsert("Parking fines triple the month after.")
    assert not Delivery.objects.filter(destination__subscription=sub, seq=3).exists()


# --- pause and resume ---------------------------------------------------------------------------------


def test_pause_holds_entries_back_and_resume_enqueues_them_in_order(feed_world, api_for):
    sub, _ = feed_world.subscribe()
    client = api_for(feed_world.subscriber, FEEDS)

    paused = client.post(sub_url(sub, "/pause"))
    for i in range(3):
        feed_world.upsert(f"Amendment {i} to the building code takes effect in spring.")

    assert paused.status_code == 200, paused.content
    assert paused.json()["status"] == "paused"
    assert not Delivery.objects.filter(destination__subscription=sub).exists()

    resumed = client.post(sub_url(sub, "/resume"))

    assert resumed.status_code == 200, resumed.content
    assert resumed.json()["status"] == "active" and resumed.json()["enqueued_seq"] == 4
    seqs = list(
        Delivery.objects.filter(destination__subscription=sub)
        .order_by("created_at", "seq")
        .values_list("seq", flat=True)
    )
    assert seqs == [2, 3, 4]
    listed = client.get(sub_url(sub, "/deliveries?status=pending")).json()
    assert [d["seq"] for d in listed["results"]] == [4, 3, 2]  # newest first


def test_actions_refuse_a_body_with_fields(feed_world, api_for):
    sub, _ = feed_world.subscribe()
    before = subscription_rows()

    resp = api_for(feed_world.subscriber, FEEDS).post(
        sub_url(sub, "/pause"), {"until": "tomorrow"}, format="json"
    )

    assert_error(resp, 400, "until")
    assert subscription_rows() == before


# --- the webhook secret -------------------------------------------------------------------------------


def test_rotating_the_secret_shows_the_new_one_once_and_keeps_the_old_one_valid_for_the_grace(
    feed_world, api_for, allow_loopback, settings
):
    settings.MEMHUB_WEBHOOK_ROTATION_GRACE_S = 3600
    sub, first_secret = feed_world.subscribe(webhook_url="http://127.0.0.1:9/hook")
    client = api_for(feed_world.subscriber, FEEDS)

    resp = client.post(sub_url(sub, "/rotate-secret"))

    assert resp.status_code == 200, resp.content
    body = resp.json()
    new_secret = body["webhook_secret"]
    assert new_secret.startswith("whsec_") and new_secret != first_secret
    until = parse_datetime(body["previous_secret_valid_until"])
    assert until is not None
    assert abs((until - (timezone.now() + timedelta(seconds=3600))).total_seconds()) < 60
    assert body["subscription"]["webhook_previous_secret_expires_at"] == body["previous_secret_valid_until"]
    sub.refresh_from_db()
    assert (sub.webhook_secret, sub.webhook_previous_secret) == (new_secret, first_secret)
    got = client.get(sub_url(sub))
    assert new_secret not in got.content.decode() and str(first_secret) not in got.content.decode()
    assert got.json()["webhook_previous_secret_expires_at"] == body["previous_secret_valid_until"]


def test_rotating_without_a_webhook_is_refused_naming_it(feed_world, api_for):
    sub, _ = feed_world.subscribe()
    before = subscription_rows()

    resp = api_for(feed_world.subscriber, FEEDS).post(sub_url(sub, "/rotate-secret"))

    assert_error(resp, 400, "webhook_url")
    assert subscription_rows() == before


# --- deliveries, dead letters, retry ------------------------------------------------------------------


def test_bad_delivery_queries_are_a_400(feed_world, api_for):
    sub, _ = feed_world.subscribe()
    client = api_for(feed_world.subscriber, FEEDS)

    for query, field in (
        ("status=lost", "status"),
        ("limit=0", "limit"),
        ("offset=x", "offset"),
        ("seq=1", "seq"),
    ):
        assert_error(client.get(sub_url(sub, f"/deliveries?{query}")), 400, field)
    assert_error(client.get(sub_url(sub, "/dead-letters?limit=1000")), 400, "limit")


def test_a_refused_webhook_delivery_becomes_a_dead_letter_its_owner_sees_and_retries(
    feed_world, api_for, allow_loopback, refusing_receiver
):
    sub, _ = feed_world.subscribe(webhook_url=refusing_receiver.url, apply_to_vault=False)
    feed_world.upsert("The minimum wage rises to fifteen dollars an hour.")
    run_deliveries()
    client = api_for(feed_world.subscriber, FEEDS)

    dead = client.get(sub_url(sub, "/dead-letters")).json()
    listed = client.get(sub_url(sub, "/deliveries?status=dead")).json()

    assert refusing_receiver.handler.bodies, "the receiver was called"
    assert dead["count"] == 1 and listed == dead
    (letter,) = dead["results"]
    assert letter["seq"] == 2 and letter["status"] == "dead" and letter["event_type"] == "memory.upserted"
    assert letter["attempts"] >= 1 and letter["last_status_code"] == 400 and letter["dead_at"]
    assert (
        letter["destination"]["kind"] == "webhook" and letter["destination"]["url"] == refusing_receiver.url
    )

    detail = client.get(sub_url(sub, f"/deliveries/{letter['id']}"))

    assert detail.status_code == 200, detail.content
    log = detail.json()["attempt_log"]
    assert [a["number"] for a in log] == list(range(1, letter["attempts"] + 1))
    assert log[-1]["status_code"] == 400 and log[-1]["outcome"] == "dead"

    retried = client.post(sub_url(sub, f"/deliveries/{letter['id']}/retry"))

    assert retried.status_code == 200, retried.content
    assert retried.json()["status"] == "pending"
    due = parse_datetime(retried.json()["next_attempt_at"])
    assert due is not None and due <= timezone.now() + timedelta(seconds=1)
    assert Delivery.objects.get(pk=letter["id"]).status == DeliveryStatus.PENDING
    assert client.get(sub_url(sub, "/dead-letters")).json()["count"] == 0
    # Only a dead letter can be retried: the same delivery, pending now, is a conflict.
    assert_error(client.post(sub_url(sub, f"/deliveries/{letter['id']}/retry")), 409)


def test_another_subscriptions_delivery_is_a_404_under_yours(feed_world, api_for, make_user):
    mine, _ = feed_world.subscribe()
    theirs, _ = feed_world.subscribe(name="second")
    feed_world.upsert("Speed cameras are added on the ring road.")
    delivery = Delivery.objects.filter(destination__subscription=theirs).first()
    assert delivery is not None
    before = subscription_rows()
    client = api_for(feed_world.subscriber, FEEDS)

    assert_error(client.get(sub_url(mine, f"/deliveries/{delivery.pk}")), 404)
    assert_error(client.post(sub_url(mine, f"/deliveries/{delivery.pk}/retry")), 404)
    assert_error(api_for(feed_world.other, FEEDS).get(sub_url(theirs, f"/deliveries/{delivery.pk}")), 404)
    assert subscription_rows() == before
    assert client.get(sub_url(theirs, f"/deliveries/{delivery.pk}")).status_code == 200
