"""Licences: granting them on a pack's terms, their lifecycle, and seats of organization licences.

A licence is the right of a user or an organization to install and use a pack. Its terms (seats, expiry,
retrieval quota per period, allowed forms, federation) are copied from the pack when it is granted, so a
later change of the listing never changes what a buyer already holds. Payments call `licence_grant`,
`licence_end`, `licence_past_due` and `licence_renew` from verified webhook events; free packs get a
licence from the install. Whenever a licence stops (or starts again) being usable, every live installation
of it is suspended (or resumed) at once: its namespace carries `suspended_reason`, which the policy treats
as "nobody reads this", and the installation hooks tell inference to drop (or reload) adapters and KV.
Use-time checks (expiry passing between sweeps, quota, seats, forms) are `marketplace.enforcement`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import Membership, Namespace, Organization, Role, User
from core.errors import ApplicationError, Conflict, NotFound, PermissionDenied
from governance.audit import audit_record
from governance.policy import Subject, SubjectKind
from marketplace.hooks import InstallationEvent, run_installation_hooks
from marketplace.models import (
    USABLE_LICENCE_STATES,
    Installation,
    Licence,
    LicenceStatus,
    Order,
    Pack,
    SeatAssignment,
)
from marketplace.services.common import require_marketplace

SYSTEM = Subject.system("marketplace.licences")
# Why an installation is suspended, per licence state: the sentence its namespace carries.
_SUSPENDED_BECAUSE = {
    LicenceStatus.EXPIRED: "expired",
    LicenceStatus.CANCELLED: "was cancelled",
    LicenceStatus.REFUNDED: "was refunded",
    LicenceStatus.REVOKED: "was revoked",
    LicenceStatus.SUSPENDED: "is suspended: payment failed",
    LicenceStatus.PAST_DUE: "is past due and its grace period is over",
}
ENDING_STATES = (
    LicenceStatus.EXPIRED,
    LicenceStatus.CANCELLED,
    LicenceStatus.REFUNDED,
    LicenceStatus.REVOKED,
    LicenceStatus.SUSPENDED,
)


def pack_label(pack: Pack) -> str:
    return f"{pack.publisher.slug}/{pack.slug}"


def licence_is_usable(licence: Licence, *, now: datetime | None = None) -> bool:
    """Status and dates as of `now` (the sweep may not have run yet: expiry counts from the clock)."""
    now = now or timezone.now()
    if licence.status not in USABLE_LICENCE_STATES:
        return False
    if licence.expires_at is not None and licence.expires_at <= now:
        return False
    return not (
        licence.status == LicenceStatus.PAST_DUE
        and licence.grace_until is not None
        and licence.grace_until <= now
    )


def suspension_reason(licence: Licence, *, now: datetime | None = None) -> str:
    """The sentence an installation namespace carries while its licence is not usable ('' if it is)."""
    now = now or timezone.now()
    if licence_is_usable(licence, now=now):
        return ""
    status = licence.status
    if status in USABLE_LICENCE_STATES and licence.expires_at is not None and licence.expires_at <= now:
        status = LicenceStatus.EXPIRED
    because = _SUSPENDED_BECAUSE.get(status, f"is {status}")  # type: ignore[call-overload]
    return f"The licence for {pack_label(licence.pack)} {because}."[:300]


def _live_installations(licence: Licence) -> list[Installation]:
    return list(
        Installation.objects.filter(licence=licence, removed_at__isnull=True).select_related("namespace")
    )


def _suspend(installations: list[Installation], reason: str, *, audit_reason: str) -> None:
    """Suspend (reason non-empty) or resume (reason '') each installation whose namespace is not already
    in that state; the hooks run after commit, once the change is visible to the workers they wake."""
    changed = [i for i in installations if i.namespace.suspended_reason != reason]
    if not changed:
        return
    Namespace.objects.filter(pk__in=[i.namespace_id for i in changed]).update(suspended_reason=reason)
    kind = "suspended" if reason else "resumed"
    events = [
        InstallationEvent(
            kind=kind,
            installation_id=str(i.id),
            namespace_id=str(i.namespace_id),
            reason=reason or audit_reason,
        )
        for i in changed
    ]
    for i in changed:
        i.namespace.suspended_reason = reason

    def run() -> None:
        for event in events:
            run_installation_hooks(event)

    transaction.on_commit(run)


def _unseated_reason(licence: Licence) -> str:
    return f"Your seat of the licence for {pack_label(licence.pack)} was unassigned."


def installations_sync(*, licence: Licence, reason: str = "") -> None:
    """Bring every live installation of `licence` in step with whether it is usable now: the licence's
    own state, and for an organization licence whether the installer still holds a seat."""
    installations = _live_installations(licence)
    licence_reason = suspension_reason(licence)
    if licence_reason or licence.holder_org_id is None:
        _suspend(installations, licence_reason, audit_reason=reason)
        return
    seated = set(SeatAssignment.objects.filter(licence=licence).values_list("user_id", flat=True))
    _suspend([i for i in installations if i.user_id in seated], "", audit_reason=reason)
    _suspend(
        [i for i in installations if i.user_id not in seated], _unseated_reason(licence), audit_reason=reason
    )


def _audit(licence: Licence, operation: str, actor: Subject | None = None, **details: Any) -> None:
    audit_record(
        actor=actor or SYSTEM,
        operation=operation,
        namespace=licence.pack.publisher.namespace,
        object_type="licence",
        object_ids=[str(licence.id)],
        details={"pack": pack_label(licence.pack), "status": licence.status, **details},
    )


def _locked(licence: Licence) -> Licence:
    return Licence.objects.select_for_update().select_related("pack__publisher__namespace").get(pk=licence.pk)


# --- grant --------------------------------------------------------------------------------------------


@transaction.atomic
def licence_grant(
    *,
    pack: Pack,
    holder_user: User | None = None,
    holder_org: Organization | None = None,
    order: Order | None = None,
    reason: str = "",
    order_is_locked: bool = False,
) -> Licence:
    """The licence `order` paid for (or, without an order, a free pack's), on the pack's terms.

    Idempotent per order: a second call for an order that already has its licence returns it. A holder
    never gets two usable licences for one pack: a usable one is extended instead (expiry moves on by
    `licence_days` from the later of now and its current end; an order's seats are added), so renewals
    and top-ups keep their seats, usage and installations. Installations of an earlier, unusable licence
    of the same holder and pack move to the new one and are resumed.

    `order_is_locked`: the caller already holds `order`'s row lock in this transaction and read it under
    that lock (the webhook path), so it is not locked and read a second time."""
    if (holder_user is None) == (holder_org is None):
        raise ApplicationError("A licence has exactly one holder: a user or an organization.")
    if order is not None:
        if not order_is_locked:
            order = Order.objects.select_for_update().get(pk=order.pk)
        if order.licence_id is not None:
            return Licence.objects.select_related("pack__publisher").get(pk=order.licence_id)
        if order.pack_id != pack.pk:
            raise ApplicationError("The order is for another pack.", code="order_mismatch")
    # One grant at a time per pack: concurrent grants to the same holder must find each other's licence.
    pack = Pack.objects.select_for_update().select_related("publisher__namespace").get(pk=pack.pk)
    now = timezone.now()
    seats = pack.seats * (order.seats if order is not None else 1)
    days = timedelta(days=pack.licence_days) if pack.licence_days else None
    moved = 0  # installations of lapsed licences moved onto a new one
    holder_q = Q(holder_user=holder_user) if holder_user is not None else Q(holder_org=holder_org)
    held = list(Licence.objects.select_for_update().filter(holder_q, pack=pack).order_by("-created_at"))
    current = next((lic for lic in held if licence_is_usable(lic, now=now)), None)
    if current is not None and (order is not None or pack.is_free):
        if days is not None and current.expires_at is not None:
            current.expires_at = max(current.expires_at, now) + days
        if order is not None:
            current.seats += seats
            current.meta = {**current.meta, "orders": [*current.meta.get("orders", []), str(order.pk)]}
        current.full_clean()
        current.save()
        licence, created = current, False
    elif current is not None:
        licence, created = current, False  # a free re-grant of a usable licence changes nothing
    else:
        licence = Licence(
            pack=pack,
            holder_user=holder_user,
            holder_org=holder_org,
            status=LicenceStatus.ACTIVE,
            price_model=pack.price_model,
            licence=pack.licence,
            seats=seats,
            quota_per_period=pack.quota_per_period,
            forms=list(pack.forms or []),
            federation_allowed=pack.federation_allowed,
            starts_at=now,
            expires_at=now + days if days is not None else None,
            status_reason=reason[:300],
            meta={"orders": [str(order.pk)]} if order is not None else {},
        )
        # The foreign keys are rows this transaction just read (the pack under its lock, the holder the
        # caller passed), the one-holder constraint is checked above, and the database enforces both
        # anyway: checking them again here costs a query each on the webhook's hot path.
        licence.full_clean(
            exclude=["pack", "holder_user", "holder_org"], validate_unique=False, validate_constraints=False
        )
        licence.save(force_insert=True)
        created = True
        # A lapsed licence's installations belong to the new one now, and come back.
        stale = [lic.pk for lic in held if lic.pk != licence.pk]
        if stale:
            moved = Installation.objects.filter(licence_id__in=stale, removed_at__isnull=True).update(
                licence=licence
            )
    if order is not None:
        Order.objects.filter(pk=order.pk).update(licence=licence)
        order.licence = licence
    # A brand-new licence has no installations unless some were just moved onto it.
    if not created or moved:
        installations_sync(licence=licence, reason=reason)
    _audit(
        licence,
        "licence.grant" if created else "licence.extend",
        order=str(order.pk) if order is not None else None,
        seats=licence.seats,
        expires_at=licence.expires_at.isoformat() if licence.expires_at else None,
        reason=reason,
    )
    return licence


# --- lifecycle ----------------------------------------------------------------------------------------


@transaction.atomic
def licence_end(*, licence: Licence, status: str, reason: str) -> Licence:
    """Refund, dispute, cancellation, revocation or expiry: the licence stops, and every installation of
    it is suspended (search, lists, reads, chat, KV and adapters lose it at once)."""
    if status not in ENDING_STATES:
        raise ApplicationError(
            f"'{status}' does not end a licence; expected one of {', '.join(ENDING_STATES)}.",
            code="invalid_status",
        )
    licence = _locked(licence)
    if licence.status == status:
        return licence  # a replayed event
    previous = licence.status
    licence.status = status
    licence.status_reason = reason[:300]
    licence.full_clean()
    licence.save()
    installations_sync(licence=licence, reason=reason)
    _audit(licence, "licence.end", previous=previous, reason=reason)
    # A refunded or revoked licence's review stops counting towards the pack's rating.
    from marketplace.services.reviews import pack_rating_recompute

    pack_rating_recompute(pack_id=licence.pack_id)
    return licence


@transaction.atomic
def licence_past_due(*, licence: Licence, grace_until: datetime, reason: str) -> Licence:
    """A payment failed: the licence stays usable until `grace_until`, then the sweep suspends it."""
    licence = _locked(licence)
    if licence.status not in USABLE_LICENCE_STATES:
        return licence  # already ended or suspended: a late failure notice changes nothing
    licence.status = LicenceStatus.PAST_DUE
    licence.grace_until = grace_until
    licence.status_reason = reason[:300]
    licence.full_clean()
    licence.save()
    installations_sync(licence=licence, reason=reason)
    _audit(licence, "licence.past_due", grace_until=grace_until.isoformat(), reason=reason)
    return licence


@transaction.atomic
def licence_renew(*, licence: Licence, until: datetime | None, reason: str) -> Licence:
    """A period was paid: the licence runs until `until` (None: no end) and, if it had been past due,
    suspended for non-payment or had expired, is active again with its installations resumed. Refunded,
    revoked and cancelled licences stay ended (a new purchase grants a new licence)."""
    licence = _locked(licence)
    if licence.status in (LicenceStatus.REFUNDED, LicenceStatus.REVOKED, LicenceStatus.CANCELLED):
        raise Conflict(
            f"The licence for {pack_label(licence.pack)} was {licence.status}; it cannot be renewed.",
            code="licence_ended",
        )
    if until is not None and licence.expires_at is not None and until < licence.expires_at:
        until = licence.expires_at  # an out-of-order older renewal never shortens the licence
    previous = licence.status
    licence.status = LicenceStatus.ACTIVE
    licence.expires_at = until
    licence.grace_until = None
    licence.status_reason = reason[:300]
    licence.full_clean()
    licence.save()
    installations_sync(licence=licence, reason=reason)
    _audit(licence, "licence.renew", previous=previous, until=until.isoformat() if until else None)
    return licence


def licence_sweep(*, now: datetime | None = None) -> dict[str, int]:
    """Expired licences become EXPIRED; past-due ones past their grace become SUSPENDED. Each licence in
    its own transaction, so one failure does not hold back the rest. Idempotent."""
    now = now or timezone.now()
    expired = list(
        Licence.objects.filter(status__in=USABLE_LICENCE_STATES, expires_at__lte=now).values_list(
            "pk", flat=True
        )
    )
    overdue = list(
        Licence.objects.filter(status=LicenceStatus.PAST_DUE, grace_until__lte=now)
        .exclude(pk__in=expired)
        .values_list("pk", flat=True)
    )
    for pk in expired:
        lic = Licence.objects.get(pk=pk)
        licence_end(licence=lic, status=LicenceStatus.EXPIRED, reason="The licence period ended.")
    for pk in overdue:
        lic = Licence.objects.get(pk=pk)
        licence_end(
            licence=lic, status=LicenceStatus.SUSPENDED, reason="Payment failed and the grace period ended."
        )
    return {"expired": len(expired), "suspended": len(overdue)}


# --- who may use a pack -------------------------------------------------------------------------------


def _refusal(code: str, message: str, licence: Licence | None = None) -> ApplicationError:
    extra = {"licence": str(licence.id)} if licence is not None else {}
    return ApplicationError(message, extra=extra, status=402, code=code)


def licence_refusal(
    *,
    licence: Licence,
    user: User,
    form: str | None = None,
    now: datetime | None = None,
    seated: bool | None = None,
    retrievals: int | None = None,
) -> ApplicationError | None:
    """Why `user` may not use `licence` now in `form` (None: any form), as the 402 to raise; None if they
    may. `seated` and `retrievals` may be passed in by a caller that read them in bulk."""
    now = now or timezone.now()
    name = pack_label(licence.pack)
    if not licence_is_usable(licence, now=now):
        if licence.status == LicenceStatus.EXPIRED or (
            licence.status in USABLE_LICENCE_STATES
            and licence.expires_at is not None
            and licence.expires_at <= now
        ):
            return _refusal(
                "licence_expired",
                f"Your licence for {name} expired; renew it or buy the pack again to keep using it.",
                licence,
            )
        return _refusal(
            "licence_required",
            f"{suspension_reason(licence, now=now)} Buy the pack again (or settle the payment) to use it.",
            licence,
        )
    if licence.holder_org_id is not None:
        if seated is None:
            seated = (
                SeatAssignment.objects.filter(licence=licence, user=user).exists()
                and Membership.objects.filter(organization_id=licence.holder_org_id, user=user).exists()
            )
        if not seated:
            return _refusal(
                "seat_required",
                f"{name} is licensed to your organization, but no seat is assigned to you; "
                "ask an organization admin to assign you one.",
                licence,
            )
    if form and licence.forms and form not in licence.forms:
        return _refusal(
            "form_not_licensed",
            f"The licence for {name} does not cover the '{form}' form "
            f"(it covers: {', '.join(licence.forms)}).",
            licence,
        )
    if licence.quota_per_period is not None:
        if retrievals is None:
            from marketplace.services.metering import period_start, usage_retrievals

            retrievals = usage_retrievals(licence=licence, period=period_start(now))
        if retrievals >= licence.quota_per_period:
            return _refusal(
                "quota_exhausted",
                f"The retrieval quota of {name} for this period is used up "
                f"({retrievals} of {licence.quota_per_period}); it renews at the start of next month.",
                licence,
            )
    return None


def licences_of(*, user: User, pack: Pack) -> list[Licence]:
    """Licences through which `user` might use `pack`: their own and their organizations', newest first."""
    org_ids = list(Membership.objects.filter(user=user).values_list("organization_id", flat=True))
    return list(
        Licence.objects.filter(Q(holder_user=user) | Q(holder_org_id__in=org_ids), pack=pack)
        .select_related("pack__publisher")
        .order_by("-created_at")
    )


def licence_usable(*, user: User, pack: Pack, form: str | None = None) -> Licence:
    """The licence that lets `user` use or install `pack` now (their own, or an organization licence with
    a seat assigned to them); else the 402 explaining what is missing (the most helpful refusal: one for
    a licence the user could fix beats 'no licence')."""
    candidates = licences_of(user=user, pack=pack)
    now = timezone.now()
    refusals = []
    for lic in candidates:
        refusal = licence_refusal(licence=lic, user=user, form=form, now=now)
        if refusal is None:
            return lic
        refusals.append(refusal)
    if refusals:
        order = [
            "quota_exhausted",
            "form_not_licensed",
            "seat_required",
            "licence_expired",
            "licence_required",
        ]
        raise min(refusals, key=lambda e: order.index(e.code) if e.code in order else len(order))
    raise _refusal(
        "licence_required",
        f"{pack_label(pack)} needs a licence; buy it from its pack page first.",
    )


# --- seats --------------------------------------------------------------------------------------------


def _require_org_admin(actor: Subject, licence: Licence) -> None:
    require_marketplace(actor)
    if licence.holder_org_id is None:
        raise ApplicationError(
            "This licence belongs to a user; only organization licences have seats to assign.",
            code="not_an_organization_licence",
        )
    if actor.kind == SubjectKind.SYSTEM:
        return
    if actor.roles.get(licence.holder_org_id) not in (Role.OWNER, Role.ADMIN):
        raise PermissionDenied("Only the organization's owners and admins assign its seats.")


@transaction.atomic
def seat_assign(*, actor: Subject, licence: Licence, user: User) -> SeatAssignment:
    """Give one of an organization licence's seats to a member. Assigning a seat already held returns it;
    beyond `licence.seats` is a 409 naming the numbers."""
    licence = _locked(licence)
    _require_org_admin(actor, licence)
    if not Membership.objects.filter(organization=licence.holder_org, user=user).exists():
        raise ApplicationError(
            f"'{user.username}' is not a member of the organization that holds this licence.",
            extra={"field": "username"},
            code="not_a_member",
        )
    existing = SeatAssignment.objects.filter(licence=licence, user=user).first()
    if existing is not None:
        return existing
    taken = SeatAssignment.objects.filter(licence=licence).count()
    if taken >= licence.seats:
        raise Conflict(
            f"All {licence.seats} seats of this licence are assigned ({taken} of {licence.seats}); "
            "unassign one or buy more seats.",
            extra={"seats": licence.seats, "assigned": taken},
            code="seats_exhausted",
        )
    seat = SeatAssignment(licence=licence, user=user, assigned_by=actor.user if actor.is_user else None)
    seat.full_clean()
    seat.save()
    # The member's installations of this licence come back (if the licence itself is usable).
    mine = [i for i in _live_installations(licence) if i.user_id == user.pk]
    _suspend(mine, suspension_reason(licence), audit_reason="seat assigned")
    _audit(licence, "licence.seat_assign", actor, user=user.username)
    return seat


@transaction.atomic
def seat_unassign(*, actor: Subject, licence: Licence, user: User) -> None:
    """Take a seat back: that member's installations of this licence are suspended at once."""
    licence = _locked(licence)
    _require_org_admin(actor, licence)
    deleted, _ = SeatAssignment.objects.filter(licence=licence, user=user).delete()
    if not deleted:
        raise NotFound(f"'{user.username}' holds no seat of this licence.")
    mine = [i for i in _live_installations(licence) if i.user_id == user.pk]
    _suspend(mine, _unseated_reason(licence), audit_reason="seat unassigned")
    _audit(licence, "licence.seat_unassign", actor, user=user.username)


@transaction.atomic
def licence_seats_set(*, actor: Subject, licence: Licence, seats: int) -> Licence:
    """Change how many seats a licence has (payments on a seat change, or the platform). Never below the
    seats already assigned: that is a 409 naming both numbers, and nothing changes."""
    licence = _locked(licence)
    require_marketplace(actor)
    if actor.kind != SubjectKind.SYSTEM:
        raise PermissionDenied("Seats change only through a purchase.")
    if seats < 1:
        raise ApplicationError("'seats' must be at least 1.", extra={"field": "seats"})
    assigned = SeatAssignment.objects.filter(licence=licence).count()
    if seats < assigned:
        raise Conflict(
            f"This licence has {assigned} seats assigned; it cannot have fewer seats ({seats}). "
            "Unassign seats first.",
            extra={"seats": seats, "assigned": assigned},
            code="seats_below_assigned",
        )
    licence.seats = seats
    licence.full_clean()
    licence.save()
    _audit(licence, "licence.seats_set", actor, seats=seats)
    return licence
