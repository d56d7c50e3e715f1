"""Publishing memory updates and retractions to a pack's feed: who may, what the entry says, bad input
writes nothing, and the change and its entry commit together."""

from __future__ import annotations

import pytest

from core.errors import ApplicationError, NotFound, PermissionDenied
from feeds.models import EntryKind, FeedEntry
from feeds.services import fanout
from feeds.services.log import entry_verify
from feeds.services.publish import feed_memory_retract, feed_memory_upsert
from governance.policy import Subject
from marketplace.models import PackItem
from vault.models import MemCube, MemCubeVersion, MemoryState

pytestmark = pytest.mark.django_db


def counts(world) -> tuple[int, int, int, int]:  # type: ignore[no-untyped-def]
    return (
        FeedEntry.objects.filter(feed=world.feed).count(),
        MemCube.objects.filter(namespace=world.pack.publisher.namespace).count(),
        MemCubeVersion.objects.filter(cube__namespace=world.pack.publisher.namespace).count(),
        PackItem.objects.filter(pack=world.pack).count(),
    )


def test_a_new_memory_becomes_a_pack_item_and_a_signed_upsert_entry(feed_world):
    entry = feed_world.upsert(
        "Diesel costs one euro sixty per litre.",
        title="Fuel",
        tags=["prices"],
        metadata={"region": "north"},
        valid_from="2026-01-01T00:00:00Z",
    )
    assert (entry.seq, entry.kind) == (2, EntryKind.MEMORY_UPSERTED)
    cube = MemCube.objects.get(
        provenance_id=entry.provenance_id, namespace=feed_world.pack.publisher.namespace
    )
    assert PackItem.objects.filter(pack=feed_world.pack, cube=cube).exists()
    data = entry.body["data"]
    assert data["provenance_id"] == str(cube.provenance_id) and data["version"] == 1
    assert (data["text"], data["title"], data["tags"], data["metadata"]) == (
        "Diesel costs one euro sixty per litre.",
        "Fuel",
        ["prices"],
        {"region": "north"},
    )
    assert data["source"]["pack"] == "facts" and data["content_sha256"] == cube.content_sha256
    assert data["valid_from"].startswith("2026-01-01") and data["valid_to"] is None
    assert data["kind"] == "plaintext"
    assert entry.tags == ["prices"] and entry.text == cube.text
    assert entry_verify(entry)


def test_an_update_of_an_item_is_a_new_version_and_keeps_the_old_one(feed_world):
    cube = MemCube.objects.get(pack_items__pack=feed_world.pack, text__startswith="The list price")
    entry = feed_world.upsert(
        "The list price of the standard widget is thirteen dollars per unit.",
        provenance_id=str(cube.provenance_id),
    )
    cube.refresh_from_db()
    assert cube.version == 2 and "thirteen" in cube.text
    assert list(
        MemCubeVersion.objects.filter(cube=cube).order_by("version").values_list("text", flat=True)
    ) == [
        "The list price of the standard widget is twelve dollars and fifty cents per unit.",
        "The list price of the standard widget is thirteen dollars per unit.",
    ]
    assert entry.body["data"]["version"] == 2 and entry.provenance_id == cube.provenance_id
    # Only some fields: the others are kept.
    feed_world.upsert(cube.text, provenance_id=str(cube.provenance_id), tags=["prices"])
    cube.refresh_from_db()
    assert cube.version == 3 and cube.tags == ["prices"] and "thirteen" in cube.text


@pytest.mark.parametrize(
    ("memory", "field"),
    [
        ({"text": ""}, "text"),
        ({"text": "   "}, "text"),
        ({"text": "ok", "colour": "red"}, "colour"),
        ({"text": "ok", "provenance_id": "not-a-uuid"}, "provenance_id"),
        ({"text": "ok", "source": "somewhere"}, "source"),
        (
            {"text": "ok", "valid_from": "2026-02-01T00:00:00Z", "valid_to": "2026-01-01T00:00:00Z"},
            "valid_to",
        ),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_writes_nothing(feed_world, memory, field):
    before = counts(feed_world)
    with pytest.raises(ApplicationError) as err:
        feed_memory_upsert(actor=Subject(user=feed_world.publisher_user), pack=feed_world.pack, memory=memory)
    assert err.value.status == 400 and err.value.extra.get("field") == field, (
        err.value.message,
        err.value.extra,
    )
    assert counts(feed_world) == before


def test_a_bad_update_of_an_existing_item_writes_nothing(feed_world):
    cube = MemCube.objects.filter(pack_items__pack=feed_world.pack).first()
    before = counts(feed_world)
    with pytest.raises(ApplicationError) as err:
        feed_memory_upsert(
            actor=Subject(user=feed_world.publisher_user),
            pack=feed_world.pack,
            memory={"provenance_id": str(cube.provenance_id), "text": ""},
        )
    assert err.value.status == 400 and err.value.extra.get("field") == "text"
    assert counts(feed_world) == before
    with pytest.raises(ApplicationError) as err:
        feed_memory_upsert(actor=Subject(user=feed_world.publisher_user), pack=feed_world.pack, memory="text")
    assert err.value.extra == {"field": "memory"}


def test_only_the_publisher_publishes_and_an_unknown_memory_is_not_found(feed_world):
    before = counts(feed_world)
    for user in (feed_world.other, feed_world.subscriber):
        with pytest.raises(PermissionDenied):
            feed_memory_upsert(actor=Subject(user=user), pack=feed_world.pack, memory={"text": "Mine now."})
    with pytest.raises(NotFound):
        feed_world.upsert("x", provenance_id="00000000-0000-4000-8000-000000000000")
    with pytest.raises(PermissionDenied):
        feed_memory_retract(
            actor=Subject(user=feed_world.other),
            pack=feed_world.pack,
            provenance_id=MemCube.objects.filter(pack_items__pack=feed_world.pack).first().provenance_id,
        )
    assert counts(feed_world) == before


def test_a_change_whose_fan_out_fails_leaves_neither_the_memory_nor_the_entry(feed_world, monkeypatch):
    before = counts(feed_world)

    def broken(entry):  # type: ignore[no-untyped-def]
        raise RuntimeError("the outbox is unavailable")

    monkeypatch.setattr(fanout, "entry_fanout", broken)
    with pytest.raises(RuntimeError):
        feed_world.upsert("A memory that must not half-exist.")
    assert counts(feed_world) == before


def test_a_retraction_archives_the_memory_takes_it_out_of_the_pack_and_says_why(feed_world):
    cube = MemCube.objects.get(pack_items__pack=feed_world.pack, text__startswith="A refund request")
    with pytest.raises(ApplicationError) as err:
        feed_world.retract(cube.provenance_id, reason="x" * 301)
    assert err.value.extra == {"field": "reason"}
    entry = feed_world.retract(cube.provenance_id, reason="The refund window changed.")
    cube.refresh_from_db()
    assert cube.state == MemoryState.ARCHIVED and cube.version == 2  # archived, with its history
    assert not PackItem.objects.filter(pack=feed_world.pack, cube=cube).exists()
    assert entry.kind == EntryKind.MEMORY_RETRACTED
    assert entry.body["data"] == {
        "provenance_id": str(cube.provenance_id),
        "reason": "The refund window changed.",
    }
    assert entry_verify(entry)
    with pytest.raises(NotFound):  # no longer an item of the pack
        feed_world.retract(cube.provenance_id)
