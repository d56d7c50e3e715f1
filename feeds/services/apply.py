"""The vault transport: a subscriber's installations apply a feed entry, exactly once.

At-least-once delivery, exactly-once effect: for each installation the entry applies to, the change and
the installation's `AppliedCursor` move in one transaction (the installation row locked), and an entry
at or below the cursor is passed over. So a delivery sent twice (a worker killed after applying but
before recording the delivery) changes nothing the second time.

What applies where: a personal subscription updates its owner's live installations of the pack; an
organization's updates the installations made under the organization's licence. An upsert is a new
version of the installation's copy (the old one stays in its history), watermarked for that
installation exactly as an install or an upgrade marks it; a copy the installation lacks is created as
the installer creates copies. A retraction archives the copy (a new version, out of the index: search
and chat no longer find it). A release upgrades the installation when it is newer. After the commit the
touched copies are indexed now and the installation hooks (`ready`) let inference rebuild its KV
prefixes and adapters.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from django.db import transaction
from django.utils.dateparse import parse_datetime

from core.errors import ApplicationError
from feeds.delivery.transports import Outcome
from feeds.models import AppliedCursor, Delivery, EntryKind, FeedEntry, Subscription
from governance.audit import audit_record
from governance.policy import Subject
from marketplace.models import Installation, InstallationStatus, PackRelease
from vault.models import IndexOp, MemCube, MemoryKind, MemoryState, VersionOperation

logger = logging.getLogger(__name__)

PENDING_STATES = (InstallationStatus.PENDING, InstallationStatus.INSTALLING)
DATETIME_FIELDS = ("valid_from", "valid_to")


def installations_for(subscription: Subscription) -> list[Installation]:
    """The live installations a subscription's entries apply to (ready or still being installed)."""
    pack_id = subscription.feed.pack_id
    qs = Installation.objects.filter(pack_id=pack_id, removed_at__isnull=True).exclude(
        status__in=(InstallationStatus.FAILED, InstallationStatus.REMOVED)
    )
    if subscription.organization_id is not None:
        qs = qs.filter(licence__holder_org_id=subscription.organization_id)
    else:
        qs = qs.filter(user_id=subscription.owner_user_id)
    return list(qs.order_by("created_at", "id"))


def vault_send(delivery: Delivery) -> Outcome:
    """Apply the delivery's entry to the subscriber's installations; the transport of `vault`
    destinations. `retry` while an installation is still being installed (its copies are not all there
    yet); `dead` for an entry that cannot apply (its release is gone); else `delivered`."""
    entry = delivery.entry
    destination = delivery.destination
    subscription = destination.subscription if destination is not None else None
    if entry is None or subscription is None:
        return Outcome("dead", error="A vault destination takes feed entries of a subscription.")
    entry = FeedEntry.objects.select_related("feed__pack__publisher__namespace").get(pk=entry.pk)
    subscription = Subscription.objects.select_related("feed__pack").get(pk=subscription.pk)
    installations = installations_for(subscription)
    waiting = [i for i in installations if i.status in PENDING_STATES]
    errors: list[str] = []
    for installation in installations:
        if installation.status in PENDING_STATES:
            continue
        try:
            entry_apply(installation_id=installation.pk, entry=entry)
        except ApplicationError as exc:
            logger.warning("feed entry %s does not apply to %s: %s", entry, installation.pk, exc.message)
            errors.append(f"installation {installation.pk}: {exc.message}")
    if waiting:
        return Outcome(
            "retry",
            error=f"{len(waiting)} installation(s) of the pack are still being installed.",
        )
    if errors:
        return Outcome("dead", error="; ".join(errors)[:2000])
    Subscription.objects.filter(pk=subscription.pk, cursor__lt=entry.seq).update(cursor=entry.seq)
    return Outcome.delivered()


def entry_apply(*, installation_id: Any, entry: FeedEntry) -> str:
    """Apply one entry to one installation, once. Returns what happened: `applied`, `unchanged`,
    `skipped` (at or below its cursor), `not_ready`."""
    touched: list[MemCube] = []
    with transaction.atomic():
        installation = (
            Installation.objects.select_for_update(of=("self",))
            .select_related("namespace", "release__pack__publisher__namespace", "user")
            .get(pk=installation_id)
        )
        if installation.status != InstallationStatus.READY or installation.removed_at is not None:
            return "not_ready"
        cursor, _ = AppliedCursor.objects.select_for_update().get_or_create(
            installation=installation, defaults={"feed": entry.feed}
        )
        if cursor.seq >= entry.seq:
            return "skipped"
        actor = Subject(user=installation.user).with_context(
            operation="feed.apply", installation_id=installation.watermark_id
        )
        result = "unchanged"
        if entry.kind == EntryKind.MEMORY_UPSERTED:
            touched = _upsert(installation, entry, actor)
        elif entry.kind == EntryKind.MEMORY_RETRACTED:
            touched = _retract(installation, entry, actor)
        elif entry.kind == EntryKind.RELEASE_PUBLISHED:
            result = _release(installation, entry, actor)
        if touched:
            result = "applied"
        cursor.seq = entry.seq
        cursor.feed = entry.feed
        cursor.save(update_fields=["seq", "feed", "updated_at"])
        audit_record(
            actor=actor,
            operation="pack.feed.apply",
            namespace=installation.namespace,
            object_type="installation",
            object_ids=[str(installation.pk), *(str(c.id) for c in touched)],
            details={
                "feed": str(entry.feed_id),
                "seq": entry.seq,
                "kind": entry.kind,
                "provenance_id": str(entry.provenance_id) if entry.provenance_id else None,
                "result": result,
            },
        )
        if touched:
            ids = [c.id for c in touched]
            transaction.on_commit(lambda: _after_commit(installation, ids, entry), robust=True)
    return result


def retraction_apply_paused(*, subscription: Subscription, entry: FeedEntry) -> int:
    """A retraction reaches a paused subscriber's installations at once (in the retraction's transaction):
    pausing must not be a way to keep using what the publisher withdrew. The copies are archived without
    moving the cursor, so on resume the entries before it still apply in order (an earlier upsert of the
    same memory revives it for that moment) and the retraction itself, applied in its turn, archives it
    again or finds it archived. Returns the number of copies archived."""
    archived = 0
    for installation in installations_for(subscription):
        if installation.status != InstallationStatus.READY:
            continue
        actor = Subject(user=installation.user).with_context(
            operation="feed.apply", installation_id=installation.watermark_id
        )
        touched = _retract(installation, entry, actor)
        if touched:
            archived += len(touched)
            ids = [c.id for c in touched]
            transaction.on_commit(functools.partial(_after_commit, installation, ids, entry), robust=True)
    return archived


def _after_commit(installation: Installation, cube_ids: list[Any], entry: FeedEntry) -> None:
    """Index the touched copies now (an archived one leaves the index) and tell inference."""
    from marketplace.services.installs import installation_hooks_run, installed_copies_index

    cubes = list(MemCube.objects.filter(pk__in=cube_ids))
    installed_copies_index(cubes, _vector_sources(installation, entry, cubes))
    installation_hooks_run(installation, "ready", reason=f"feed update #{entry.seq}")


def _vector_sources(installation: Installation, entry: FeedEntry, cubes: list[MemCube]) -> dict[Any, Any]:
    """The publisher's memory as the vector source of an upserted copy (reused if the index has it)."""
    from vault.services import VectorSource

    if entry.kind != EntryKind.MEMORY_UPSERTED or entry.provenance_id is None:
        return {}
    data = entry.body.get("data", {})
    origin = (
        MemCube.objects.filter(
            namespace=installation.release.pack.publisher.namespace, provenance_id=entry.provenance_id
        )
        .values_list("id", flat=True)
        .first()
    )
    if origin is None:
        return {}
    source = VectorSource(cube_id=origin, version=int(data.get("version", 0)), text=str(data.get("text", "")))
    return {c.provenance_id: source for c in cubes}


def _copy(installation: Installation, provenance_id: Any) -> MemCube | None:
    return (
        MemCube.objects.select_for_update()
        .filter(namespace=installation.namespace, provenance_id=provenance_id, is_canary=False)
        .exclude(state=MemoryState.DELETED)
        .first()
    )


def _item(installation: Installation, entry: FeedEntry) -> dict[str, Any]:
    """The entry's memory as the installation's copy (before the watermark), as installs build copies."""
    from marketplace.services.installs import COPIED_FIELDS

    data = entry.body.get("data", {})
    item: dict[str, Any] = {f: data[f] for f in COPIED_FIELDS if f in data}
    for f in DATETIME_FIELDS:
        if isinstance(item.get(f), str):
            item[f] = parse_datetime(item[f])
    item["kind"] = data.get("kind", MemoryKind.PLAINTEXT)
    item["text"] = data.get("text", "")
    item["source"] = {
        **(data.get("source") or {}),
        "release": installation.release.version,
        "installation": str(installation.id),
    }
    item["provenance_id"] = entry.provenance_id
    item["licence"] = installation.release.pack.licence
    return item


def _marked(installation: Installation, text: str, kind: str) -> str:
    """The text as this installation's copies carry it (the same marks `installation_upgrade` makes)."""
    if kind != MemoryKind.PLAINTEXT or not text:
        return text
    from governance.watermark import watermark_text
    from governance.watermarking import watermark_key

    key = watermark_key(installation.release.pack.publisher.namespace)
    return str(watermark_text(text, key=key, installation_id=installation.watermark_id))


def _upsert(installation: Installation, entry: FeedEntry, actor: Subject) -> list[MemCube]:
    from marketplace.services.installs import COPIED_FIELDS, INDEX_DEFER_S
    from vault.services import index_enqueue_deferred, memory_import_batch, memory_version_write

    item = _item(installation, entry)
    item["text"] = _marked(installation, item["text"], item["kind"])
    reason = f"feed update #{entry.seq}"
    cube = _copy(installation, entry.provenance_id)
    if cube is None:
        return memory_import_batch(
            actor=actor,
            namespace=installation.namespace,
            items=[item],
            watermark_id=installation.watermark_id,
            reason=reason,
            defer_index_s=INDEX_DEFER_S,
        )
    fields = [f for f in (*COPIED_FIELDS, "text") if f in item and f != "source"]
    revive = cube.state not in (MemoryState.GENERATED, MemoryState.ACTIVATED)
    if not revive and all(getattr(cube, f) == item[f] for f in fields):
        return []  # the same content: no new version
    for f in fields:
        setattr(cube, f, item[f])
    cube.source = item["source"]
    if revive:
        cube.state = MemoryState.ACTIVATED
    memory_version_write(cube, actor=actor, operation=VersionOperation.OVERWRITE, reason=reason)
    index_enqueue_deferred([cube.id], IndexOp.UPSERT, delay_s=INDEX_DEFER_S)
    return [cube]


def _retract(installation: Installation, entry: FeedEntry, actor: Subject) -> list[MemCube]:
    from vault.services import memory_state_set

    cube = _copy(installation, entry.provenance_id)
    if cube is None or cube.state == MemoryState.ARCHIVED:
        return []
    reason = (entry.body.get("data", {}).get("reason") or "").strip()
    memory_state_set(
        actor=actor,
        cube=cube,
        state=MemoryState.ARCHIVED,
        reason=f"retracted by the publisher (feed #{entry.seq})" + (f": {reason}" if reason else ""),
    )
    return [cube]


def _release(installation: Installation, entry: FeedEntry, actor: Subject) -> str:
    """Upgrade to the entry's release when it is newer than the installed one."""
    from marketplace.manifest import semver_key
    from marketplace.services.installs import installation_upgrade

    data = entry.body.get("data", {})
    release = (
        PackRelease.objects.filter(pk=data.get("release")).first() if data.get("release") else None
    ) or PackRelease.objects.filter(pack_id=entry.feed.pack_id, version=data.get("version", "")).first()
    if release is None:
        raise ApplicationError(
            f"Release {data.get('version')} of the pack no longer exists.", code="release_gone"
        )
    try:
        newer = semver_key(release.version) > semver_key(installation.release.version)
    except ValueError:
        newer = False
    if not newer or release.yanked:
        return "unchanged"
    installation_upgrade(actor=actor, installation=installation, version=release.version)
    return "upgraded"
