"""Feeds API: the feeds you may read, their entries (rendered for you), and the publisher's writes."""

from __future__ import annotations

from typing import Any, cast

from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from core.pagination import page_parameters, paginated, paginated_response
from core.requests import current_user
from core.serializers import StrictCharField, StrictSerializer, validated
from feeds import render, selectors
from feeds.apis.base import (
    MAX_SEQ,
    FeedsApi,
    PageQuery,
    PublisherFeedApi,
    StrictUUIDField,
    actor_of,
    error_responses,
    query_validated,
)
from feeds.apis.serializers import EntryDocumentOutput, EntryPageOutput, FeedDetailOutput, FeedOutput
from feeds.models import Feed
from feeds.services import publish
from marketplace.services.common import publisher_role
from vault.apis import MemoryFieldsInput

TAGS = ["feeds"]
MAX_ENTRIES_PAGE = 200
DEFAULT_ENTRIES_PAGE = 100


def _feed(request: Request, feed_id: Any, operation: str) -> Feed:
    """The feed, or 404 when it does not exist or the caller may not read it (never 403: whether a
    feed exists is not the business of someone who may not read it)."""
    return selectors.feed_get(actor=actor_of(request, operation), feed_id=feed_id)


class FeedListApi(FeedsApi):
    @extend_schema_serializer(component_name="FeedListQuery")
    class ListQuery(PageQuery):
        pack = serializers.RegexField(
            r"^[-a-zA-Z0-9_]+/[-a-zA-Z0-9_]+$",
            required=False,
            max_length=150,
            error_messages={"invalid": "Must be '<publisher>/<slug>'."},
        )

    @extend_schema(
        parameters=[
            OpenApiParameter("pack", str, description="Only this pack's feed: `<publisher>/<slug>`."),
            *page_parameters(),
        ],
        responses={200: paginated(FeedOutput), **error_responses(400, 403)},
        operation_id="api_v1_feeds_list",
        tags=TAGS,
        description="The feeds you may read: those of packs you (or an organization of yours) hold a "
        "usable licence for, and those you publish. Oldest first.",
    )
    def get(self, request: Request) -> Response:
        query = query_validated(self.ListQuery, request)
        feeds = selectors.feeds_visible(actor=actor_of(request, "feed.list")).select_related(
            "pack__publisher"
        )
        if "pack" in query:
            publisher_slug, slug = query["pack"].split("/", 1)
            feeds = feeds.filter(pack__publisher__slug=publisher_slug, pack__slug=slug)
        feeds = feeds.order_by("created_at", "id")
        return paginated_response(request=request, view=self, items=feeds, serializer=FeedOutput)


class FeedDetailApi(FeedsApi):
    @extend_schema(
        responses={200: FeedDetailOutput, **error_responses(403, 404)},
        tags=TAGS,
        description="One feed: its pack, its newest `seq`, whether you publish it, and your "
        "subscriptions to it (yours and those of organizations you administer).",
    )
    def get(self, request: Request, feed_id: str) -> Response:
        actor = actor_of(request, "feed.get")
        feed = selectors.feed_get(actor=actor, feed_id=feed_id)
        subscriptions = (
            selectors.subscriptions_of(actor=actor)
            .filter(feed=feed)
            .select_related("organization")
            .order_by("created_at", "id")
        )
        context = {
            "publishing": publisher_role(actor=actor, publisher=feed.pack.publisher) is not None,
            "subscriptions": subscriptions,
        }
        return Response(FeedDetailOutput(feed, context=context).data)


class FeedEntriesApi(FeedsApi):
    @extend_schema_serializer(component_name="FeedEntriesQuery")
    class EntriesQuery(StrictSerializer):
        since = serializers.IntegerField(required=False, min_value=0, max_value=MAX_SEQ, default=0)
        limit = serializers.IntegerField(
            required=False, min_value=1, max_value=MAX_ENTRIES_PAGE, default=DEFAULT_ENTRIES_PAGE
        )

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "since", int, description="Entries after this `seq` (default 0: from the start)."
            ),
            OpenApiParameter(
                "limit",
                int,
                description=f"At most this many (1..{MAX_ENTRIES_PAGE}, default {DEFAULT_ENTRIES_PAGE}).",
            ),
        ],
        responses={200: EntryPageOutput, **error_responses(400, 403, 404)},
        tags=TAGS,
        description="The feed's entries after `since`, in `seq` order, as subscribers receive them: "
        "memory text is watermarked for you (your installation's watermark when you have one), so these "
        "documents are unsigned (`signed: false`); `entry_sha256` is the signed body's hash. Follow "
        "`next_since` for the next page; live updates: `GET feeds/{id}/events` or the WebSocket.",
    )
    def get(self, request: Request, feed_id: str) -> Response:
        query = query_validated(self.EntriesQuery, request)
        feed = _feed(request, feed_id, "feed.entries")
        entries = selectors.entries_after(feed=feed, cursor=query["since"], limit=query["limit"])
        watermark = render.viewer_watermark_id(user=current_user(request), pack=feed.pack)
        documents = [render.entry_document(e, watermark_id=watermark) for e in entries]
        page = {
            "feed": feed.id,
            "last_seq": feed.last_seq,
            "next_since": entries[-1].seq if entries else query["since"],
            "entries": documents,
        }
        return Response(EntryPageOutput(page).data)


class FeedMemoriesApi(PublisherFeedApi):
    @extend_schema_serializer(component_name="FeedMemoryUpsertInput")
    class MemoryUpsertInput(MemoryFieldsInput):
        provenance_id = StrictUUIDField(
            required=False,
            help_text="An existing item of the pack: the update is a new version of it. Omit for a new "
            "memory.",
        )

    @extend_schema(
        request=MemoryUpsertInput,
        responses={201: EntryDocumentOutput, **error_responses(400, 403, 404, 409)},
        tags=TAGS,
        description="Publisher: add a memory to the pack, or (with `provenance_id`) update one of its "
        "items, and append the signed `memory.upserted` entry to the feed in the same transaction; every "
        "subscriber gets it. Needs the `marketplace` and `memories:write` scopes and a role for the "
        "publisher (403 otherwise, for a subscriber who may read the feed; 404 for anyone else).",
    )
    def post(self, request: Request, feed_id: str) -> Response:
        data = validated(self.MemoryUpsertInput, request.data)
        actor = actor_of(request, "feed.memory.upsert")
        feed = selectors.feed_get(actor=actor, feed_id=feed_id)
        # The publish service reads memories as pack items are authored (JSON values, as sent), so it gets
        # the caller's own values for the fields that validated here.
        sent = cast("dict[str, Any]", request.data)  # an object: it validated
        memory = {key: sent[key] for key in data}
        entry = publish.feed_memory_upsert(actor=actor, pack=feed.pack, memory=memory)
        return Response(
            EntryDocumentOutput(render.entry_document(entry)).data, status=status.HTTP_201_CREATED
        )


class FeedRetractionsApi(PublisherFeedApi):
    @extend_schema_serializer(component_name="FeedRetractionInput")
    class RetractionInput(StrictSerializer):
        provenance_id = StrictUUIDField(help_text="The pack item to retract.")
        reason = StrictCharField(required=False, allow_blank=True, max_length=500)

    @extend_schema(
        request=RetractionInput,
        responses={201: EntryDocumentOutput, **error_responses(400, 403, 404, 409)},
        tags=TAGS,
        description="Publisher: retract a memory of the pack (it leaves the pack's content) and append the "
        "signed `memory.retracted` entry; subscribers' vaults archive their copy, and it no longer comes "
        "back from search or chat.",
    )
    def post(self, request: Request, feed_id: str) -> Response:
        data = validated(self.RetractionInput, request.data)
        actor = actor_of(request, "feed.memory.retract")
        feed = selectors.feed_get(actor=actor, feed_id=feed_id)
        entry = publish.feed_memory_retract(
            actor=actor, pack=feed.pack, provenance_id=data["provenance_id"], reason=data.get("reason", "")
        )
        return Response(
            EntryDocumentOutput(render.entry_document(entry)).data, status=status.HTTP_201_CREATED
        )
