"""The feed log: ordered, never reused `seq`, signed entries, written in the change's transaction."""

from __future__ import annotations

import copy

import pytest
from django.db import transaction

from core.errors import ApplicationError
from core.signing import instance_signer
from feeds.models import EntryKind, Feed, FeedEntry
from feeds.services.log import entry_append, entry_verify, feed_for_pack
from governance.policy import Subject
from marketplace import services as market
from marketplace.services.studio import pack_update

pytestmark = pytest.mark.django_db


def test_the_release_that_made_the_world_is_the_feeds_first_signed_entry(feed_world):
    entries = list(FeedEntry.objects.filter(feed=feed_world.feed).order_by("seq"))
    assert [(e.seq, e.kind) for e in entries] == [(1, EntryKind.RELEASE_PUBLISHED)]
    first = entries[0]
    assert first.body["data"]["version"] == "1.0.0"
    assert first.body["data"]["manifest_sha256"] == feed_world.release.manifest_sha256
    assert first.body["data"]["counts"] == {"memories": 3}
    assert first.body["pack"] == "acme/facts" and first.body["feed"] == str(feed_world.feed.pk)
    assert entry_verify(first)
    assert first.signing_key_id == instance_signer().key_id


def test_seq_is_monotonic_and_never_reused(feed_world):
    seqs = [feed_world.upsert(f"Fact number {i} about the tax code.").seq for i in range(5)]
    assert seqs == [2, 3, 4, 5, 6]
    # An append whose transaction rolls back gives its seq back only to nobody: the next one is 7 again
    # (the rolled-back entry never existed), and no seq is handed out twice.
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            entry_append(pack=feed_world.pack, kind=EntryKind.TERMS_CHANGED, data={"changed": {}})
            raise RuntimeError("the change failed")
    assert feed_for_pack(feed_world.pack).last_seq == 6
    nxt = feed_world.upsert("Another fact.")
    assert nxt.seq == 7
    all_seqs = list(FeedEntry.objects.filter(feed=feed_world.feed).values_list("seq", flat=True))
    assert sorted(all_seqs) == list(range(1, 8)) and len(set(all_seqs)) == len(all_seqs)


def test_a_tampered_entry_does_not_verify(feed_world):
    entry = feed_world.upsert("The speed limit on motorways is one hundred and twenty kilometres per hour.")
    assert entry_verify(entry)
    tampered = copy.deepcopy(entry)
    tampered.body["data"]["text"] = "The speed limit on motorways is two hundred kilometres per hour."
    assert not entry_verify(tampered)
    resigned = copy.deepcopy(tampered)
    import hashlib

    import rfc8785

    resigned.body_sha256 = hashlib.sha256(rfc8785.dumps(resigned.body)).hexdigest()
    assert not entry_verify(resigned)  # the hash matches now, the signature does not
    # Another instance's key does not verify it either.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from core.signing import b64url_encode

    other = b64url_encode(
        Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    )
    assert not entry_verify(entry, public_key_b64=other)
    assert entry_verify(entry, public_key_b64=instance_signer().public_key_b64)


def test_the_stored_entry_verifies_after_a_round_trip_through_the_database(feed_world):
    entry = feed_world.upsert("Import duties on books are zero.", tags=["customs"])
    fresh = FeedEntry.objects.get(pk=entry.pk)
    assert entry_verify(fresh)
    assert fresh.tags == ["customs"] and fresh.text == "Import duties on books are zero."


def test_a_release_that_fails_writes_no_entry(feed_world, monkeypatch):
    """The entry is written in the release's transaction: a release that fails after the hook ran
    leaves no entry behind (and no release)."""
    from marketplace.services import releases

    pub = Subject(user=feed_world.publisher_user)
    market.pack_add_memories(actor=pub, pack=feed_world.pack, items=[{"text": "A brand new fact."}])
    real = releases.run_pack_hooks

    def hook_then_fail(event):  # type: ignore[no-untyped-def]
        real(event)
        raise RuntimeError("the release failed after its entry was appended")

    monkeypatch.setattr(releases, "run_pack_hooks", hook_then_fail)
    with pytest.raises(RuntimeError):
        market.release_publish(actor=pub, pack=feed_world.pack, version="1.1.0")
    assert not feed_world.pack.releases.filter(version="1.1.0").exists()
    assert FeedEntry.objects.filter(feed=feed_world.feed).count() == 1
    assert Feed.objects.get(pk=feed_world.feed.pk).last_seq == 1
    monkeypatch.setattr(releases, "run_pack_hooks", real)
    market.release_publish(actor=pub, pack=feed_world.pack, version="1.1.0")
    last = FeedEntry.objects.filter(feed=feed_world.feed).order_by("-seq").first()
    assert (last.seq, last.kind, last.body["data"]["version"]) == (2, EntryKind.RELEASE_PUBLISHED, "1.1.0")


def test_terms_changes_and_withdrawal_are_entries(feed_world):
    pub = Subject(user=feed_world.publisher_user)
    pack_update(actor=pub, pack=feed_world.pack, seats=5, licence_days=30)
    pack_update(actor=pub, pack=feed_world.pack, listed=False)
    entries = list(FeedEntry.objects.filter(feed=feed_world.feed).order_by("seq"))
    assert [e.kind for e in entries] == [
        EntryKind.RELEASE_PUBLISHED,
        EntryKind.TERMS_CHANGED,
        EntryKind.PACK_WITHDRAWN,
    ]
    assert entries[1].body["data"]["changed"] == {"seats": 5, "licence_days": 30}
    assert all(entry_verify(e) for e in entries)


def test_an_unknown_kind_is_refused(feed_world):
    with pytest.raises(ApplicationError) as err:
        entry_append(pack=feed_world.pack, kind="memory.exploded", data={})
    assert err.value.extra == {"field": "kind"}
    assert FeedEntry.objects.filter(feed=feed_world.feed).count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_appends_get_distinct_consecutive_seqs_in_commit_order(feed_world):
    """Writers racing on one feed: the feed row's lock hands out each seq once, with no gap, and a
    higher seq never commits before a lower one (what lets readers follow `seq > cursor`)."""
    import threading

    from django.db import connection

    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def writer(n: int) -> None:
        try:
            barrier.wait()
            for i in range(5):
                entry_append(pack=feed_world.pack, kind=EntryKind.TERMS_CHANGED, data={"writer": n, "i": i})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    rows = list(
        FeedEntry.objects.filter(feed=feed_world.feed).order_by("seq").values_list("seq", "created_at")
    )
    assert [s for s, _ in rows] == list(range(1, 22))
    assert [c for _, c in rows] == sorted(c for _, c in rows)  # seq order is commit order
    assert Feed.objects.get(pk=feed_world.feed.pk).last_seq == 21
    # Each writer's own entries are in its order.
    for n in range(4):
        mine = [
            e.body["data"]["i"]
            for e in FeedEntry.objects.filter(feed=feed_world.feed, kind=EntryKind.TERMS_CHANGED).order_by(
                "seq"
            )
            if e.body["data"]["writer"] == n
        ]
        assert mine == list(range(5))


def test_the_document_a_subscriber_receives_is_signed_or_watermarked_for_them(feed_world):
    from feeds.render import entry_document, subscription_watermark_id, viewer_watermark_id
    from governance.watermark import watermark_text
    from governance.watermarking import watermark_key

    text = (
        "The warehouse opens at seven in the morning and closes early on public holidays. Large orders "
        "must be confirmed by the regional manager before they are shipped abroad. Returned goods are "
        "inspected within three working days and refunded if they are undamaged."
    )
    entry = feed_world.upsert(text)
    doc = entry_document(entry)
    assert doc["signed"] is True and doc["signature"] == entry.signature and doc["data"]["text"] == text
    assert (doc["seq"], doc["kind"], doc["entry_sha256"]) == (entry.seq, "memory.upserted", entry.body_sha256)
    assert set(doc) >= {"id", "feed", "pack", "seq", "kind", "at", "data", "entry_sha256", "signing_key_id"}

    sub, _ = feed_world.subscribe()
    mark = subscription_watermark_id(sub)
    assert mark == feed_world.installation.watermark_id  # the same marks as the subscriber's installed copies
    marked = entry_document(entry, watermark_id=mark)
    key = watermark_key(feed_world.pack.publisher.namespace)
    assert marked["data"]["text"] == watermark_text(text, key=key, installation_id=mark) != text
    assert marked["signed"] is False and "signature" not in marked
    assert entry.body["data"]["text"] == text  # the stored, signed body is untouched
    # Someone without an installation gets a stable id of their own.
    first = viewer_watermark_id(user=feed_world.other, pack=feed_world.pack)
    assert first == viewer_watermark_id(user=feed_world.other, pack=feed_world.pack) != mark
