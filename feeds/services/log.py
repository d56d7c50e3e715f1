"""The feed log: one ordered, signed log of entries per pack.

`seq` is handed out under the feed row's lock (`Feed.last_seq + 1`), in the transaction that makes the
change the entry describes: the entry commits with the change or not at all, and an entry with a higher
`seq` always commits after every lower one, so a reader following `seq > cursor` never skips one. The
body is canonical JSON (RFC 8785) signed with the instance key, the same signing as release manifests,
so a peer (MIP) can relay an entry unchanged and its receiver can verify it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import rfc8785
from django.db import IntegrityError, transaction
from django.utils import timezone

from core.errors import ApplicationError
from core.signing import b64url_encode, ed25519_verify, instance_signer
from feeds.models import EntryKind, Feed, FeedEntry
from marketplace.models import Pack

logger = logging.getLogger(__name__)

BODY_VERSION = 1
MAX_TEXT_CHARS = 200_000


def feed_for_pack(pack: Pack, *, lock: bool = False) -> Feed:
    """The pack's feed, created with its first use. `lock`: the row is locked for the caller's
    transaction (what hands out `seq`)."""
    feed = Feed.objects.filter(pack=pack).first()
    if feed is None:
        try:
            with transaction.atomic():
                feed = Feed.objects.create(pack=pack)
        except IntegrityError:  # created concurrently: theirs stands
            feed = Feed.objects.get(pack=pack)
    if lock:
        feed = Feed.objects.select_for_update().get(pk=feed.pk)
    return feed


def entry_canonical(body: dict[str, Any]) -> bytes:
    """The bytes that are hashed and signed (RFC 8785)."""
    try:
        return rfc8785.dumps(body)
    except rfc8785.CanonicalizationError as exc:
        raise ApplicationError(
            f"The entry is not canonicalizable JSON: {exc}", code="invalid_entry", status=500
        ) from exc


def entry_append(
    *,
    pack: Pack,
    kind: str,
    data: dict[str, Any],
    provenance_id: Any = None,
    tags: Sequence[str] = (),
    text: str = "",
) -> FeedEntry:
    """Append an entry to the pack's feed, in the caller's transaction, and write its deliveries.

    The caller must be inside a transaction (the change the entry describes): the feed row's lock is
    held until it commits, which is what keeps `seq` order equal to commit order."""
    if kind not in EntryKind.values:
        raise ApplicationError(f"Unknown feed entry kind {kind!r}.", extra={"field": "kind"})
    from feeds.services.fanout import entry_fanout

    with transaction.atomic():
        feed = feed_for_pack(pack, lock=True)
        seq = feed.last_seq + 1
        at = timezone.now()
        body = {
            "v": BODY_VERSION,
            "feed": str(feed.pk),
            "pack": f"{pack.publisher.slug}/{pack.slug}",
            "seq": seq,
            "kind": kind,
            "at": at.isoformat(),
            "data": data,
        }
        canonical = entry_canonical(body)
        signer = instance_signer()
        entry = FeedEntry.objects.create(
            feed=feed,
            seq=seq,
            kind=kind,
            provenance_id=provenance_id,
            tags=[str(t) for t in tags],
            text=(text or "")[:MAX_TEXT_CHARS],
            body=body,
            body_sha256=hashlib.sha256(canonical).hexdigest(),
            signature=b64url_encode(signer.sign(canonical)),
            signing_key_id=signer.key_id,
        )
        Feed.objects.filter(pk=feed.pk).update(last_seq=seq, updated_at=at)
        feed.last_seq = seq
        entry.feed = feed
        # The nudge first: on-commit callbacks run in order, and live followers should not wait behind
        # the hand-off of a thousand deliveries to the broker.
        _nudge(feed_id=str(feed.pk), seq=seq)
        entry_fanout(entry)
    return entry


def _nudge(*, feed_id: str, seq: int) -> None:
    """Tell live listeners (WebSocket/SSE) after commit; only a nudge, the log is the truth."""
    try:
        from feeds.live import nudge_on_commit
    except ImportError:  # pragma: no cover - the live layer is optional
        return
    nudge_on_commit(feed_id=feed_id, seq=seq)


def entry_verify(entry: FeedEntry, *, public_key_b64: str | None = None) -> bool:
    """True when the entry's body hashes to `body_sha256` and its signature verifies under the
    instance key (or `public_key_b64`, a peer's). A verifier answers, it does not raise."""
    try:
        canonical = rfc8785.dumps(entry.body)
    except rfc8785.CanonicalizationError:
        return False
    if hashlib.sha256(canonical).hexdigest() != entry.body_sha256:
        return False
    if public_key_b64 is None:
        try:
            public_key_b64 = instance_signer().public_key_b64
        except ApplicationError:
            return False
    return ed25519_verify(data=canonical, signature_b64=entry.signature, public_key_b64=public_key_b64)
