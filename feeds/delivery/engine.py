"""The delivery engine: drains each destination's outbox in order, with backoff, a circuit breaker and a
record of every attempt.

Order per destination comes from a lease: a worker takes a destination with one conditional UPDATE on
`Destination.lease_owner`/`lease_until` (no row lock held, so it works the same on SQLite and PostgreSQL)
and only the holder sends. It sends the pending delivery with the lowest `seq` (the head) and nothing
after it until the head is delivered, dead-lettered or cancelled: a later entry never overtakes an earlier
one. No database transaction is open during the network call; the outcome is written afterwards, and only
if the delivery is still as the worker read it (a worker whose lease ran out while it waited on a slow
receiver cannot record the same attempt twice).

Delivery is at least once: a worker killed between the receiver's answer and the write of the outcome
leaves the delivery pending, and the next worker (once the lease expires) sends it again with the same
`webhook-id`, which is how receivers recognise the redelivery. Celery runs drains with `acks_late` and
`reject_on_worker_lost`, and the beat sweep (`deliveries_sweep`) sends a drain to every destination with
due work and no live lease, so a lost task or a killed worker only delays a delivery.

Outcomes (`feeds.delivery.transports.Outcome`): delivered; retry (exponential backoff with jitter, or the
receiver's `Retry-After`; a dead letter after MEMHUB_DELIVERY_MAX_ATTEMPTS); dead (a 4xx: a dead letter
now, the queue moves on; the owner can requeue it); gone (a 410: the destination is switched off, the
subscription stopped and what was pending for it cancelled). MEMHUB_DELIVERY_CIRCUIT_FAILURES failures in
a row open the destination's circuit: nothing is sent until `circuit_retry_at`, then one probe (the head);
its success closes the circuit, its failure opens it again for twice as long (up to the maximum).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Max, OuterRef, Q, QuerySet, Subquery
from django.utils import timezone

from core.errors import Conflict
from feeds.delivery.backoff import circuit_open_s, retry_delay_s
from feeds.delivery.transports import Outcome, transport_for
from feeds.models import (
    CircuitState,
    Delivery,
    DeliveryAttempt,
    DeliveryStatus,
    Destination,
    Subscription,
    SubscriptionStatus,
)

logger = logging.getLogger(__name__)

# After releasing its lease a drain looks again this many times for work that became due meanwhile (a
# nudge that arrived while it held the lease found the lease taken and did nothing).
_RECHECKS = 3
# A drain schedules the next one itself when the next due time is at most this far away; beyond that
# the periodic sweep picks the destination up (a long countdown would outlive the broker's visibility
# timeout and be delivered twice anyway).
_SELF_SCHEDULE_MAX_S = 300.0
_HEAD_ORDER = ("seq", "created_at", "id")


@dataclass
class DrainReport:
    destination: str
    leased: bool = False
    attempts: int = 0
    delivered: int = 0
    retried: int = 0
    dead: int = 0
    gone: bool = False
    next_due_at: str | None = None


# --- The lease -------------------------------------------------------------------------------------


def _lease_owner() -> str:
    return f"{socket.gethostname()[:28]}:{os.getpid()}:{uuid.uuid4().hex[:16]}"


def _lease_until() -> datetime:
    return timezone.now() + timedelta(seconds=float(settings.MEMHUB_DELIVERY_LEASE_S))


def _lease_free(now: datetime) -> Q:
    return Q(lease_owner="") | Q(lease_until__isnull=True) | Q(lease_until__lte=now)


def _lease_take(destination_id: Any, owner: str) -> bool:
    """Take the destination if nobody holds it (or the holder's lease ran out): one conditional UPDATE,
    so exactly one of two workers racing for it wins."""
    now = timezone.now()
    taken = Destination.objects.filter(
        _lease_free(now) | Q(lease_owner=owner), pk=destination_id, active=True
    ).update(lease_owner=owner, lease_until=_lease_until())
    return taken == 1


def _lease_renew(destination_id: Any, owner: str) -> bool:
    return (
        Destination.objects.filter(pk=destination_id, lease_owner=owner).update(lease_until=_lease_until())
        == 1
    )


def _lease_release(destination_id: Any, owner: str) -> None:
    Destination.objects.filter(pk=destination_id, lease_owner=owner).update(lease_owner="", lease_until=None)


# --- Reading the queue -----------------------------------------------------------------------------


# A paused subscription still receives what was enqueued before the pause (it stops being fanned out
# to); a stopped or cancelled one receives nothing more.
_SILENT = (SubscriptionStatus.STOPPED, SubscriptionStatus.CANCELLED)


def _deliverable(destination: Destination) -> bool:
    if not destination.active:
        return False
    subscription = destination.subscription
    return subscription is None or subscription.status not in _SILENT


def _pending(destination_id: Any) -> QuerySet[Delivery]:
    return Delivery.objects.filter(destination_id=destination_id, status=DeliveryStatus.PENDING).order_by(
        *_HEAD_ORDER
    )


def _head(destination_id: Any) -> Delivery | None:
    return _pending(destination_id).select_related("destination__subscription", "entry__feed").first()


def _next_due_at(destination_id: Any) -> datetime | None:
    """When the destination next has something to send (its head, and its circuit allowing), or None."""
    destination = Destination.objects.select_related("subscription").filter(pk=destination_id).first()
    if destination is None or not _deliverable(destination):
        return None
    head_due = _pending(destination_id).values_list("next_attempt_at", flat=True).first()
    if head_due is None:
        return None
    if destination.circuit_state == CircuitState.OPEN and destination.circuit_retry_at is not None:
        return max(head_due, destination.circuit_retry_at)
    return head_due


def _due_destinations(*, now: datetime, free_lease_only: bool = True) -> list[str]:
    """Destinations whose head delivery is due, whose circuit lets it go, and (by default) that no
    worker holds."""
    head_due = Subquery(
        Delivery.objects.filter(destination=OuterRef("pk"), status=DeliveryStatus.PENDING)
        .order_by(*_HEAD_ORDER)
        .values("next_attempt_at")[:1]
    )
    some_due = Delivery.objects.filter(status=DeliveryStatus.PENDING, next_attempt_at__lte=now).values(
        "destination_id"
    )
    qs = (
        Destination.objects.filter(pk__in=some_due, active=True)
        .exclude(subscription__status__in=_SILENT)
        .exclude(circuit_state=CircuitState.OPEN, circuit_retry_at__gt=now)
        .annotate(head_due=head_due)
        .filter(head_due__lte=now)
    )
    if free_lease_only:
        qs = qs.filter(_lease_free(now))
    return [str(pk) for pk in qs.values_list("pk", flat=True)]


# --- One attempt -----------------------------------------------------------------------------------


def _attempt(delivery: Delivery) -> tuple[Outcome, datetime, float]:
    """Call the destination's transport. An exception is a failure of this attempt, retried like any."""
    at = timezone.now()
    started = time.perf_counter()
    try:
        outcome = transport_for(delivery.destination.kind)(delivery)
        if not isinstance(outcome, Outcome):
            outcome = Outcome("retry", error=f"The transport returned {outcome!r}, not an Outcome.")
    except Exception as exc:
        logger.exception("delivery %s: the %s transport raised", delivery.pk, delivery.destination.kind)
        outcome = Outcome("retry", error=f"{type(exc).__name__}: {exc}"[:500])
    return outcome, at, (time.perf_counter() - started) * 1000.0


def _circuit_closed(now: datetime) -> dict[str, Any]:
    return {
        "circuit_state": CircuitState.CLOSED,
        "consecutive_failures": 0,
        "circuit_opens": 0,
        "circuit_retry_at": None,
        "last_success_at": now,
        "updated_at": now,
    }


def _record(
    *,
    delivery: Delivery,
    destination: Destination,
    outcome: Outcome,
    at: datetime,
    duration_ms: float,
    probe: bool,
) -> str:
    """Write what the attempt means. Returns the delivery's state afterwards ("stale" when another
    worker recorded this attempt first: then nothing is written)."""
    now = timezone.now()
    attempts = delivery.attempts + 1
    fields: dict[str, Any] = {
        "attempts": attempts,
        "last_status_code": outcome.status_code,
        "last_error": outcome.error[:2000],
        "updated_at": now,
    }
    destination_fields: dict[str, Any] = {}
    result = outcome.result
    if result == "delivered":
        fields.update(status=DeliveryStatus.DELIVERED, delivered_at=now, last_error="")
        destination_fields = _circuit_closed(now)
    elif result == "dead":
        # The receiver answered, and refused this message: a dead letter, and the endpoint is up.
        fields.update(status=DeliveryStatus.DEAD, dead_at=now)
        destination_fields = _circuit_closed(now)
    elif result == "gone":
        fields.update(status=DeliveryStatus.CANCELLED)
    else:
        if attempts >= int(settings.MEMHUB_DELIVERY_MAX_ATTEMPTS):
            fields.update(
                status=DeliveryStatus.DEAD,
                dead_at=now,
                last_error=f"Gave up after {attempts} attempts; the last: {outcome.error}"[:2000],
            )
        else:
            delay = retry_delay_s(attempts, retry_after_s=outcome.retry_after_s)
            fields["next_attempt_at"] = now + timedelta(seconds=delay)
        failures = destination.consecutive_failures + 1
        destination_fields = {"consecutive_failures": failures, "last_failure_at": now, "updated_at": now}
        if probe or failures >= int(settings.MEMHUB_DELIVERY_CIRCUIT_FAILURES):
            opens = destination.circuit_opens + 1
            destination_fields.update(
                circuit_state=CircuitState.OPEN,
                circuit_opens=opens,
                circuit_retry_at=now + timedelta(seconds=circuit_open_s(opens)),
            )
    with transaction.atomic():
        written = Delivery.objects.filter(
            pk=delivery.pk, status=DeliveryStatus.PENDING, attempts=delivery.attempts
        ).update(**fields)
        if not written:
            return "stale"
        number = (DeliveryAttempt.objects.filter(delivery=delivery).aggregate(n=Max("number"))["n"] or 0) + 1
        DeliveryAttempt.objects.create(
            delivery=delivery,
            number=number,
            at=at,
            outcome=result,
            status_code=outcome.status_code,
            error=outcome.error[:500],
            duration_ms=round(duration_ms, 3),
            response_excerpt=outcome.response_excerpt[:500],
        )
        if destination_fields:
            Destination.objects.filter(pk=destination.pk).update(**destination_fields)
        if result == "gone":
            _destination_gone(destination, outcome, now=now)
    return str(fields.get("status", DeliveryStatus.PENDING))


def _destination_gone(destination: Destination, outcome: Outcome, *, now: datetime) -> None:
    """A 410: the receiver asked never to be called again. Switch the destination off; stop its
    subscription and cancel what was pending for any of its destinations (a stopped subscription
    receives nothing more)."""
    Destination.objects.filter(pk=destination.pk).update(active=False, updated_at=now)
    subscription = destination.subscription
    url = (destination.url or "")[:120]
    note = f"Cancelled: the destination answered {outcome.status_code or 410} Gone."
    if subscription is None:
        Delivery.objects.filter(destination=destination, status=DeliveryStatus.PENDING).update(
            status=DeliveryStatus.CANCELLED, last_error=note, updated_at=now
        )
        return
    Delivery.objects.filter(destination__subscription=subscription, status=DeliveryStatus.PENDING).update(
        status=DeliveryStatus.CANCELLED, last_error=note, updated_at=now
    )
    reason = (
        f"The webhook endpoint {url} answered 410 Gone on {now:%Y-%m-%d %H:%M} UTC: "
        "the subscription was stopped and its pending deliveries cancelled."
    )[:300]
    Subscription.objects.filter(pk=subscription.pk).exclude(status=SubscriptionStatus.CANCELLED).update(
        status=SubscriptionStatus.STOPPED, status_reason=reason, updated_at=now
    )


# --- Draining --------------------------------------------------------------------------------------


def _drain_pass(destination_id: Any, owner: str, budget: int, report: DrainReport) -> bool:
    """Hold the lease and send due deliveries in order. Returns True when it stopped on `budget` with
    due work left. Sets `report.leased` when it got the lease."""
    if not _lease_take(destination_id, owner):
        return False
    report.leased = True
    sent = 0
    try:
        while True:
            destination = Destination.objects.select_related("subscription").filter(pk=destination_id).first()
            if destination is None or not _deliverable(destination):
                return False
            head = _head(destination_id)
            if head is None:
                return False
            now = timezone.now()
            probe = destination.circuit_state != CircuitState.CLOSED
            if destination.circuit_state == CircuitState.OPEN and (destination.circuit_retry_at or now) > now:
                return False
            if head.next_attempt_at > now:
                return False
            if sent >= budget:
                return True
            if not _lease_renew(destination_id, owner):
                return False  # lost it (it ran out); the new holder carries on
            if probe and destination.circuit_state == CircuitState.OPEN:
                Destination.objects.filter(pk=destination_id).update(
                    circuit_state=CircuitState.HALF_OPEN, updated_at=now
                )
            outcome, at, duration_ms = _attempt(head)
            sent += 1
            report.attempts += 1
            state = _record(
                delivery=head,
                destination=destination,
                outcome=outcome,
                at=at,
                duration_ms=duration_ms,
                probe=probe,
            )
            if state == "stale":
                return False
            if outcome.result == "delivered":
                report.delivered += 1
            elif outcome.result == "gone":
                report.gone = True
                return False
            elif outcome.result == "dead" or state == DeliveryStatus.DEAD:
                report.dead += 1
            else:
                report.retried += 1
            if probe and outcome.result not in ("delivered", "dead"):
                return False  # the probe failed: the circuit is open again
    finally:
        _lease_release(destination_id, owner)


def _eager() -> bool:
    from feeds.tasks import delivery_drain_task

    return bool(delivery_drain_task.app.conf.task_always_eager)


def _schedule_next(destination_id: Any, *, more_now: bool, next_due: datetime | None) -> None:
    """In a real worker, plan the next drain of this destination at its next due time (the sweep is the
    safety net). Never in eager mode: the "later" task would run now, inside this one."""
    if _eager() or (not more_now and next_due is None):
        return
    from feeds.tasks import delivery_drain_task

    try:
        if more_now:
            delivery_drain_task.apply_async((str(destination_id),), countdown=0)
            return
        assert next_due is not None
        countdown = max(0.0, (next_due - timezone.now()).total_seconds())
        if countdown > _SELF_SCHEDULE_MAX_S:
            return
        # One planned drain per due time: a drain that finds the head not yet due and a drain already
        # planned for it must not become two chains of drains that each plan the next one.
        row = Destination.objects.filter(pk=destination_id).values("meta").first()
        if row is None:
            return
        meta = row["meta"] if isinstance(row["meta"], dict) else {}
        planned = meta.get("drain_at")
        stamp = round(next_due.timestamp(), 3)
        if isinstance(planned, int | float) and time.time() < planned <= stamp + 0.001:
            return
        changed = Destination.objects.filter(pk=destination_id, meta=row["meta"]).update(
            meta={**meta, "drain_at": stamp}
        )
        if changed:
            delivery_drain_task.apply_async((str(destination_id),), countdown=countdown)
    except Exception:
        logger.exception("could not plan the next drain of %s; the sweep will", destination_id)


def destination_drain(*, destination_id: Any, max_items: int = 1000, schedule: bool = True) -> dict[str, Any]:
    """Send what is due for one destination, in order, if no other worker is on it. Idempotent: a
    second drain of the same destination finds the lease taken or nothing due. Returns what it did."""
    owner = _lease_owner()
    report = DrainReport(destination=str(destination_id))
    more_now = False
    leased = False
    for _ in range(_RECHECKS):
        report.leased = False
        more_now = _drain_pass(destination_id, owner, max_items - report.attempts, report)
        took, leased = report.leased, leased or report.leased
        if not took or more_now:
            break
        due = _next_due_at(destination_id)
        if due is None or due > timezone.now():
            break
    report.leased = leased
    if not leased:
        return asdict(report)  # another worker holds it: that one carries on and plans what follows
    next_due = _next_due_at(destination_id)
    report.next_due_at = next_due.isoformat() if next_due else None
    if schedule:
        _schedule_next(destination_id, more_now=more_now, next_due=next_due)
    return asdict(report)


# --- Entry points ----------------------------------------------------------------------------------


def _drain_tasks_send(destination_ids: Iterable[Any]) -> int:
    """Hand the destinations to the workers: alone, one drain task; many (a fan-out to a thousand
    subscribers), batches of `MEMHUB_DELIVERY_DRAIN_BATCH` per message, because a message costs the
    publisher's request milliseconds and a thousand of them cost seconds. Returns the messages sent."""
    from feeds.tasks import delivery_drain_batch_task, delivery_drain_task

    ids = [str(d) for d in destination_ids]
    size = max(1, int(getattr(settings, "MEMHUB_DELIVERY_DRAIN_BATCH", 25)))
    sent = 0
    # One producer (one broker connection) for the whole hand-off.
    with delivery_drain_task.app.producer_or_acquire() as producer:
        for start in range(0, len(ids), size):
            part = ids[start : start + size]
            try:
                if len(part) == 1:
                    delivery_drain_task.apply_async((part[0],), producer=producer)
                else:
                    delivery_drain_batch_task.apply_async((part,), producer=producer)
                sent += 1
            except Exception:  # the deliveries stay pending; the sweep sends the drains later
                logger.exception("could not send the drain of destinations %s now", part)
    return sent


def deliveries_enqueue(destination_ids: Iterable[Any]) -> None:
    """Once the caller's transaction commits, one drain task per destination (the deliveries are in
    the outbox already; a broker outage here only delays them until the sweep)."""
    ids = list(dict.fromkeys(str(i) for i in destination_ids))
    if ids:
        transaction.on_commit(lambda: _drain_tasks_send(ids), robust=True)


def deliveries_sweep() -> int:
    """The safety net (Celery beat): a drain task for every destination with due work that no worker
    holds (a lost task, a killed worker whose lease ran out, a retry whose time came). Returns how many
    destinations it handed out."""
    due = [str(d) for d in _due_destinations(now=timezone.now())]
    _drain_tasks_send(due)
    return len(due)


def deliveries_run_due(*, rounds: int = 50) -> int:
    """Drain everything that is due now, inline, until nothing is (tests, the bench). Returns the number
    of attempts made."""
    total = 0
    for _ in range(rounds):
        made = 0
        for destination_id in _due_destinations(now=timezone.now()):
            made += int(destination_drain(destination_id=destination_id, schedule=False)["attempts"])
        total += made
        if made == 0:
            break
    return total


@transaction.atomic
def delivery_requeue(*, delivery: Delivery) -> Delivery:
    """A dead letter back to pending, due now, with a fresh retry budget (its earlier attempts stay in
    the log). Its destination must still be active (a 410 switched it off for good)."""
    locked = Delivery.objects.select_for_update().select_related("destination").get(pk=delivery.pk)
    if locked.status != DeliveryStatus.DEAD:
        raise Conflict(
            f"Only a dead letter can be retried; this delivery is {locked.status}.",
            extra={"status": locked.status},
        )
    if not locked.destination.active:
        raise Conflict(
            "This delivery's destination was switched off (it answered 410 Gone); it cannot be retried.",
            extra={"destination": str(locked.destination_id)},
        )
    now = timezone.now()
    locked.status = DeliveryStatus.PENDING
    locked.attempts = 0
    locked.next_attempt_at = now
    locked.dead_at = None
    locked.save(update_fields=["status", "attempts", "next_attempt_at", "dead_at", "updated_at"])
    deliveries_enqueue([locked.destination_id])
    return locked
