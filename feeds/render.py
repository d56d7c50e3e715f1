"""What a subscriber receives for an entry: the signed document, or its copy watermarked for them.

A document carries the entry's signed body fields and its signature, so a relay (MIP) passes it on
unchanged and a receiver verifies it against the instance key. A copy for one subscriber (a webhook, a
WebSocket or SSE follower) has the memory's text watermarked for them, as their installation's copies
are, so a leak names its source; the signature covers the unwatermarked body, so it is left out of such
a copy (`"signed": false`) instead of being sent with a body it does not match.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from accounts.models import Namespace, User
from feeds.models import EntryKind, FeedEntry, Subscription
from marketplace.models import Installation, Pack
from vault.models import MemoryKind


def _watermarked(text: str, *, key: bytes, watermark_id: str) -> str:
    from governance.watermark import watermark_text

    return str(watermark_text(text, key=key, installation_id=watermark_id)) if text else text


def entry_document(
    entry: FeedEntry,
    *,
    watermark_id: str = "",
    key_namespace: Namespace | None = None,
    key: bytes | None = None,
) -> dict[str, Any]:
    """The entry as subscribers receive it. With `watermark_id`, the memory's text is watermarked with
    the key of `key_namespace` (default: the pack publisher's namespace), or with `key` when the caller
    already holds it (live followers: no query per viewer), and the document is unsigned."""
    body = entry.body
    doc: dict[str, Any] = {
        "id": str(entry.pk),
        "feed": body.get("feed", str(entry.feed_id)),
        "pack": body.get("pack", ""),
        "seq": entry.seq,
        "kind": entry.kind,
        "at": body.get("at", ""),
        "data": copy.deepcopy(body.get("data", {})),
        "entry_sha256": entry.body_sha256,
        "signing_key_id": entry.signing_key_id,
    }
    data = doc["data"]
    marks = (
        bool(watermark_id)
        and entry.kind == EntryKind.MEMORY_UPSERTED
        and isinstance(data, dict)
        and data.get("kind", MemoryKind.PLAINTEXT) == MemoryKind.PLAINTEXT
        and isinstance(data.get("text"), str)
        and bool(data.get("text"))
    )
    if marks:
        if key is None:
            from governance.watermarking import watermark_key

            key = watermark_key(key_namespace or entry.feed.pack.publisher.namespace)
        data["text"] = _watermarked(data["text"], key=key, watermark_id=watermark_id)
        doc["signed"] = False
    else:
        doc["signature"] = entry.signature
        doc["signed"] = True
    return doc


def _stable_id(*parts: Any) -> str:
    return hashlib.sha256(":".join(str(p) for p in ("feed-watermark", *parts)).encode()).hexdigest()[:32]


def viewer_watermark_id(*, user: User, pack: Pack) -> str:
    """The watermark id of what `user` reads of the pack's feed: their live installation's (so a leak of
    a feed copy and of an installed copy name the same installation), else one derived from the user and
    the pack (stable: the same viewer always gets the same marks)."""
    installation = (
        Installation.objects.filter(pack=pack, user=user, removed_at__isnull=True, workspace="")
        .order_by("created_at")
        .first()
        or Installation.objects.filter(pack=pack, user=user, removed_at__isnull=True)
        .order_by("created_at")
        .first()
    )
    if installation is not None:
        return installation.watermark_id
    return _stable_id("user", user.pk, pack.pk)


def subscription_watermark_id(subscription: Subscription) -> str:
    """The watermark id of a subscription's copies: its owner's (a personal subscription), or one derived
    from the organization and the pack (an organization's, shared by its members)."""
    pack = subscription.feed.pack
    if subscription.organization_id is not None:
        return _stable_id("org", subscription.organization_id, pack.pk)
    return viewer_watermark_id(user=subscription.owner_user, pack=pack)
