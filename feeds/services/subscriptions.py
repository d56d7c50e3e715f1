"""Subscription writes: create, change, pause, resume, cancel, rotate the webhook secret, retry a dead
letter. Every write is audited.

Who may subscribe is the licence's question: a user subscribes personally with a licence they may use
now (their own, or a seat of an organization licence), else the licence refusal (402) says what is
missing; an organization subscribes through one of its owners or admins, with a usable licence of the
organization's. Someone else's subscription is not found (404), never forbidden.

A subscription starts at the feed's head (`since` replays from an earlier seq). Pausing stops its
fan-out at `enqueued_seq`; resuming fans out what it missed, in order, under the feed row's lock
(`feeds.services.fanout.subscription_backfill`), before any entry appended after it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import Organization, Role, TokenScope
from core.errors import ApplicationError, Conflict, NotFound, PermissionDenied
from feeds.models import (
    Delivery,
    DeliveryStatus,
    Destination,
    DestinationKind,
    EntryKind,
    Feed,
    Subscription,
    SubscriptionStatus,
)
from governance.audit import audit_record
from governance.policy import Subject, SubjectKind

MAX_NAME_CHARS = 120
MAX_QUERY_CHARS = 2_000
MAX_FILTER_TAGS = 50
MAX_TAG_CHARS = 128
UPDATABLE = (
    "name",
    "filter_tags",
    "filter_query",
    "filter_threshold",
    "filter_kinds",
    "webhook_url",
    "apply_to_vault",
)


def _invalid(field: str, message: str, code: str = "invalid") -> ApplicationError:
    return ApplicationError(message, extra={"field": field}, code=code)


def _require_feeds(actor: Subject) -> None:
    if actor.kind != SubjectKind.SYSTEM:
        actor.require_scope(TokenScope.FEEDS.value)
    if not actor.is_user and actor.kind != SubjectKind.SYSTEM:
        raise PermissionDenied("Only a user subscribes to feeds.")


# --- checks -----------------------------------------------------------------------------------------------


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS or any(ord(c) < 32 for c in name):
        raise _invalid("name", f"'name' is printable text of at most {MAX_NAME_CHARS} characters.")
    return name.strip()


def _check_tags(tags: Any) -> list[str]:
    if tags is None:
        return []
    if (
        not isinstance(tags, list | tuple)
        or len(tags) > MAX_FILTER_TAGS
        or any(not isinstance(t, str) or not t.strip() or len(t) > MAX_TAG_CHARS for t in tags)
    ):
        raise _invalid(
            "filter_tags",
            f"'filter_tags' is a list of at most {MAX_FILTER_TAGS} non-empty tags of up to "
            f"{MAX_TAG_CHARS} characters.",
        )
    return list(dict.fromkeys(t.strip() for t in tags))


def _check_kinds(kinds: Any) -> list[str]:
    if kinds is None:
        return []
    if not isinstance(kinds, list | tuple) or any(k not in EntryKind.values for k in kinds):
        raise _invalid(
            "filter_kinds", f"'filter_kinds' is a list of entry kinds: {', '.join(EntryKind.values)}."
        )
    return list(dict.fromkeys(kinds))


def _check_query(query: Any) -> str:
    if not isinstance(query, str) or len(query) > MAX_QUERY_CHARS:
        raise _invalid("filter_query", f"'filter_query' is text of at most {MAX_QUERY_CHARS} characters.")
    return query.strip()


def _check_threshold(threshold: Any) -> float | None:
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not -1.0 <= threshold <= 1.0:
        raise _invalid("filter_threshold", "'filter_threshold' is a cosine similarity between -1 and 1.")
    return float(threshold)


def _check_url(url: Any) -> str:
    if not isinstance(url, str):
        raise _invalid("webhook_url", "'webhook_url' must be a URL string.")
    url = url.strip()
    if not url:
        return ""
    if len(url) > 2000:
        raise _invalid("webhook_url", "'webhook_url' takes at most 2,000 characters.")
    from core.outbound import outbound_url_check

    return str(outbound_url_check(url, field="webhook_url"))


def _check_bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _invalid(field, f"'{field}' must be true or false.")
    return value


def _holder_check(*, actor: Subject, feed: Feed, organization: Organization | None) -> None:
    """402 (with the licence refusal) unless the holder may use the pack now; for an organization, the
    actor must be one of its owners or admins (a non-member does not see it: 404)."""
    pack = feed.pack
    if organization is None:
        if actor.kind == SubjectKind.SYSTEM:
            raise PermissionDenied("The platform does not subscribe for itself.")
        from marketplace.services.licences import licence_usable

        licence_usable(user=actor.user, pack=pack)
        return
    if actor.kind != SubjectKind.SYSTEM:
        role = actor.roles.get(organization.pk)
        if role is None:
            raise NotFound("Organization not found.")
        if role not in (Role.OWNER, Role.ADMIN):
            raise PermissionDenied("Only the organization's owners and admins subscribe for it.")
    if not _org_licensed(organization=organization, pack=pack):
        raise ApplicationError(
            f"{pack} needs a licence held by {organization.slug}; buy it for the organization first.",
            status=402,
            code="licence_required",
        )


def _org_licensed(*, organization: Organization, pack: Any) -> bool:
    from marketplace.models import Licence
    from marketplace.services.licences import licence_is_usable

    return any(licence_is_usable(lic) for lic in Licence.objects.filter(pack=pack, holder_org=organization))


def _audit(actor: Subject, operation: str, sub: Subscription, **details: Any) -> None:
    audit_record(
        actor=actor,
        operation=operation,
        namespace=None,  # the actor's own chain: a subscription lives in no namespace
        object_type="subscription",
        object_ids=[str(sub.pk)],
        details={"feed": str(sub.feed_id), "pack": str(sub.feed.pack), **details},
    )


def _owned(actor: Subject, subscription: Subscription) -> Subscription:
    """The subscription, locked, if the actor may manage it; else 404."""
    from feeds.selectors.subscriptions import subscription_manageable

    sub = (
        Subscription.objects.select_for_update(of=("self",))
        .select_related("feed__pack__publisher", "organization", "owner_user")
        .filter(pk=subscription.pk)
        .first()
    )
    if sub is None or not subscription_manageable(actor=actor, subscription=sub):
        raise NotFound("Subscription not found.")
    return sub


def _embed(query: str) -> list[float] | None:
    if not query:
        return None
    from feeds.services.fanout import query_embedding

    return query_embedding(query) or None


def _secret() -> str:
    from feeds.delivery.webhooks import webhook_secret_generate

    return str(webhook_secret_generate())


def _destinations_sync(sub: Subscription) -> list[Destination]:
    """A vault destination while `apply_to_vault`, a webhook destination while there is a URL; a
    destination that is no longer wanted is deactivated (its history stays), pending work cancelled."""
    wanted = {DestinationKind.VAULT: sub.apply_to_vault, DestinationKind.WEBHOOK: bool(sub.webhook_url)}
    # A paused subscription keeps its destinations: what was enqueued before the pause still goes out.
    active = sub.status in (SubscriptionStatus.ACTIVE, SubscriptionStatus.PAUSED)
    out = []
    for kind, want in wanted.items():
        dest = Destination.objects.filter(subscription=sub, kind=kind).first()
        if want:
            url = sub.webhook_url if kind == DestinationKind.WEBHOOK else ""
            if dest is None:
                dest = Destination.objects.create(subscription=sub, kind=kind, url=url, active=active)
            elif dest.url != url or dest.active != active:
                Destination.objects.filter(pk=dest.pk).update(
                    url=url, active=active, updated_at=timezone.now()
                )
                dest.url, dest.active = url, active
            out.append(dest)
        elif dest is not None and dest.active:
            Destination.objects.filter(pk=dest.pk).update(active=False, updated_at=timezone.now())
            Delivery.objects.filter(destination=dest, status=DeliveryStatus.PENDING).update(
                status=DeliveryStatus.CANCELLED, updated_at=timezone.now()
            )
    return out


# --- writes -----------------------------------------------------------------------------------------------


@transaction.atomic
def subscription_create(
    *,
    actor: Subject,
    feed: Feed,
    organization: Organization | None = None,
    name: str = "",
    filter_tags: Sequence[str] | None = None,
    filter_query: str = "",
    filter_threshold: float | None = None,
    filter_kinds: Sequence[str] | None = None,
    webhook_url: str = "",
    apply_to_vault: bool = True,
    since: int | None = None,
) -> tuple[Subscription, str | None]:
    """Subscribe the actor (or `organization`) to `feed`. Returns the subscription and, when it has a
    webhook, its signing secret (shown this once). `since`: replay the entries after that seq (default:
    only what comes next)."""
    _require_feeds(actor)
    feed = Feed.objects.select_related("pack__publisher").get(pk=feed.pk)
    name = _check_name(name)
    tags = _check_tags(filter_tags)
    kinds = _check_kinds(filter_kinds)
    query = _check_query(filter_query)
    threshold = _check_threshold(filter_threshold)
    apply_to_vault = _check_bool("apply_to_vault", apply_to_vault)
    if since is not None and (isinstance(since, bool) or not isinstance(since, int) or since < 0):
        raise _invalid("since", "'since' is a seq of the feed (0 replays it from the start).")
    url = _check_url(webhook_url)
    if not url and not apply_to_vault:
        raise _invalid(
            "webhook_url", "A subscription goes somewhere: give a 'webhook_url' or apply it to the vault."
        )
    _holder_check(actor=actor, feed=feed, organization=organization)
    # The feed row's lock: the starting point is the head as of this instant, and no entry appended
    # concurrently is fanned out before the subscription exists nor skipped.
    locked = Feed.objects.select_for_update().get(pk=feed.pk)
    start = locked.last_seq if since is None else min(since, locked.last_seq)
    secret = _secret() if url else ""
    sub = Subscription(
        feed=feed,
        owner_user=actor.user,
        organization=organization,
        name=name,
        filter_tags=tags,
        filter_query=query,
        filter_vector=_embed(query),
        filter_kinds=kinds,
        apply_to_vault=apply_to_vault,
        webhook_url=url,
        webhook_secret=secret,
        enqueued_seq=start,
        cursor=start,
    )
    if threshold is not None:
        sub.filter_threshold = threshold
    sub.save()
    _destinations_sync(sub)
    _audit(
        actor,
        "feed.subscription.create",
        sub,
        organization=str(organization.pk) if organization else None,
        since=start,
        webhook=bool(url),
        apply_to_vault=apply_to_vault,
    )
    if start < locked.last_seq:
        from feeds.services.fanout import subscription_backfill

        subscription_backfill(sub)
        sub.refresh_from_db()
    return sub, secret or None


@transaction.atomic
def subscription_update(*, actor: Subject, subscription: Subscription, **fields: Any) -> Subscription:
    """Change a subscription's name, filters, webhook URL or vault application; they apply to the entries
    fanned out from now on."""
    _require_feeds(actor)
    unknown = sorted(set(fields) - set(UPDATABLE))
    if unknown:
        raise _invalid(unknown[0], f"'{unknown[0]}' cannot be changed here.")
    sub = _owned(actor, subscription)
    if sub.status == SubscriptionStatus.CANCELLED:
        raise Conflict("The subscription is cancelled; create a new one.", code="cancelled")
    checks = {
        "name": _check_name,
        "filter_tags": _check_tags,
        "filter_kinds": _check_kinds,
        "filter_query": _check_query,
        "filter_threshold": _check_threshold,
        "webhook_url": _check_url,
        "apply_to_vault": lambda v: _check_bool("apply_to_vault", v),
    }
    values: dict[str, Any] = {k: checks[k](v) for k, v in fields.items()}
    if "filter_threshold" in values and values["filter_threshold"] is None:
        values["filter_threshold"] = Subscription._meta.get_field("filter_threshold").default
    url = values.get("webhook_url", sub.webhook_url)
    if not url and not values.get("apply_to_vault", sub.apply_to_vault):
        raise _invalid(
            "webhook_url", "A subscription goes somewhere: give a 'webhook_url' or apply it to the vault."
        )
    secret_new = None
    if url and not sub.webhook_secret:
        secret_new = _secret()
        values["webhook_secret"] = secret_new
    if "filter_query" in values and values["filter_query"] != sub.filter_query:
        values["filter_vector"] = _embed(str(values["filter_query"]))
    for k, v in values.items():
        setattr(sub, k, v)
    sub.save()
    _destinations_sync(sub)
    _audit(actor, "feed.subscription.update", sub, fields=sorted(fields))
    if secret_new:
        sub._new_webhook_secret = secret_new  # type: ignore[attr-defined]
    return sub


@transaction.atomic
def subscription_pause(*, actor: Subject, subscription: Subscription) -> Subscription:
    """Stop fanning out to the subscription; what arrives meanwhile waits in the log for the resume."""
    _require_feeds(actor)
    sub = _owned(actor, subscription)
    if sub.status == SubscriptionStatus.PAUSED:
        return sub
    if sub.status != SubscriptionStatus.ACTIVE:
        raise Conflict(f"The subscription is {sub.status}; only an active one is paused.", code="not_active")
    sub.status = SubscriptionStatus.PAUSED
    sub.status_reason = "paused by its owner"
    sub.save(update_fields=["status", "status_reason", "updated_at"])
    _audit(actor, "feed.subscription.pause", sub, enqueued_seq=sub.enqueued_seq)
    return sub


@transaction.atomic
def subscription_resume(*, actor: Subject, subscription: Subscription) -> Subscription:
    """Make a paused (or stopped) subscription active again and deliver what it missed, in order. A
    stopped one resumes only while its holder may use the pack (else the licence refusal, 402)."""
    _require_feeds(actor)
    sub = _owned(actor, subscription)
    if sub.status == SubscriptionStatus.CANCELLED:
        raise Conflict("The subscription is cancelled; create a new one.", code="cancelled")
    if sub.status == SubscriptionStatus.ACTIVE:
        return sub
    holder = Subject(user=sub.owner_user) if actor.kind == SubjectKind.SYSTEM else actor
    if sub.organization_id is None:
        from marketplace.services.licences import licence_usable

        licence_usable(user=sub.owner_user, pack=sub.feed.pack)
    else:
        _holder_check(actor=holder, feed=sub.feed, organization=sub.organization)
    sub.status = SubscriptionStatus.ACTIVE
    sub.status_reason = ""
    sub.save(update_fields=["status", "status_reason", "updated_at"])
    _destinations_sync(sub)  # the wanted destinations are active again
    from feeds.services.fanout import subscription_backfill

    written = subscription_backfill(sub)
    _audit(actor, "feed.subscription.resume", sub, backfilled=written, enqueued_seq=sub.enqueued_seq)
    sub.refresh_from_db()
    return sub


@transaction.atomic
def subscription_cancel(*, actor: Subject, subscription: Subscription) -> Subscription:
    """End the subscription: nothing more is fanned out, pending deliveries are cancelled (what its vault
    applied stays applied)."""
    _require_feeds(actor)
    sub = _owned(actor, subscription)
    if sub.status == SubscriptionStatus.CANCELLED:
        return sub
    sub.status = SubscriptionStatus.CANCELLED
    sub.status_reason = "cancelled by its owner"
    sub.save(update_fields=["status", "status_reason", "updated_at"])
    Destination.objects.filter(subscription=sub).update(active=False, updated_at=timezone.now())
    cancelled = Delivery.objects.filter(destination__subscription=sub, status=DeliveryStatus.PENDING).update(
        status=DeliveryStatus.CANCELLED, updated_at=timezone.now()
    )
    _audit(actor, "feed.subscription.cancel", sub, pending_cancelled=cancelled)
    return sub


@transaction.atomic
def subscription_rotate_secret(*, actor: Subject, subscription: Subscription) -> tuple[Subscription, str]:
    """A new webhook signing secret; the previous one keeps signing alongside it for
    `MEMHUB_WEBHOOK_ROTATION_GRACE_S`, so the receiver can switch without losing a request."""
    _require_feeds(actor)
    sub = _owned(actor, subscription)
    if not sub.webhook_url:
        raise _invalid("webhook_url", "The subscription has no webhook; there is no secret to rotate.")
    if sub.status == SubscriptionStatus.CANCELLED:
        raise Conflict("The subscription is cancelled; create a new one.", code="cancelled")
    secret = _secret()
    grace = int(getattr(settings, "MEMHUB_WEBHOOK_ROTATION_GRACE_S", 86400))
    sub.webhook_previous_secret = sub.webhook_secret
    sub.webhook_previous_expires_at = timezone.now() + timedelta(seconds=grace)
    sub.webhook_secret = secret
    sub.save(
        update_fields=[
            "webhook_secret",
            "webhook_previous_secret",
            "webhook_previous_expires_at",
            "updated_at",
        ]
    )
    _audit(
        actor,
        "feed.subscription.rotate_secret",
        sub,
        previous_valid_until=sub.webhook_previous_expires_at.isoformat(),
    )
    return sub, secret


@transaction.atomic
def subscription_delivery_retry(*, actor: Subject, subscription: Subscription, delivery_id: Any) -> Delivery:
    """Send a dead letter again (it goes back in line: in order with the destination's other work)."""
    _require_feeds(actor)
    sub = _owned(actor, subscription)
    try:
        delivery_id = uuid.UUID(str(delivery_id))
    except ValueError:
        raise NotFound("Delivery not found.") from None
    delivery = (
        Delivery.objects.select_for_update(of=("self",))
        .select_related("destination")
        .filter(pk=delivery_id, destination__subscription=sub)
        .first()
    )
    if delivery is None:
        raise NotFound("Delivery not found.")
    if delivery.status != DeliveryStatus.DEAD:
        raise Conflict(f"The delivery is {delivery.status}; only a dead letter is retried.", code="not_dead")
    from feeds.delivery.engine import delivery_requeue

    delivery = delivery_requeue(delivery=delivery)
    _audit(actor, "feed.delivery.retry", sub, delivery=str(delivery.pk), seq=delivery.seq)
    return delivery
