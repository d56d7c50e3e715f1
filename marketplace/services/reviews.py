"""Ratings and reviews of packs, by licence holders only: one review per licence, editable by its author,
reportable by other users, hidden for moderation after enough reports.

Who may review: a user holding a licence of the pack, or a member given a seat of an organization's
licence (`SeatAssignment`), whatever the licence's state now (active, past due, suspended, expired,
cancelled: they used the pack) except `refunded` and `revoked` (the money went back, or the right was
taken away). A review of a licence that is later refunded or revoked stops counting and is shown to
nobody but its author and staff. The publisher's own people (anyone with a role for the publisher) do
not review their own packs.

`Pack.rating_avg` / `rating_count` are recomputed from the counted reviews (visible, licence not
refunded or revoked) in the transaction of every change, under a lock on the pack row, so concurrent
reviews serialise on that row and the aggregate always matches the rows.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Avg, Count, F, Q, QuerySet

from core.errors import ApplicationError, Conflict, NotFound, PermissionDenied
from governance.audit import audit_record
from governance.policy import Subject
from marketplace.models import Licence, Pack, Review, ReviewReport
from marketplace.selectors.catalog import NOT_REVIEWABLE, counted_reviews_q, review_visible
from marketplace.services.common import publisher_role, require_marketplace

RATING_MIN, RATING_MAX = 1, 5
TITLE_MAX = 200
BODY_MAX = 5000
REPORT_REASON_MAX = 500
DEFAULT_REPORTS_TO_HIDE = 3


def reports_to_hide() -> int:
    """How many reports (by different users) hide a review pending moderation (setting
    `MARKETPLACE_REVIEW_REPORTS_TO_HIDE`, default 3)."""
    return max(1, int(getattr(settings, "MARKETPLACE_REVIEW_REPORTS_TO_HIDE", DEFAULT_REPORTS_TO_HIDE)))


def _is_staff(actor: Subject) -> bool:
    return actor.is_user and bool(actor.user.is_staff)


def _require_user(actor: Subject) -> None:
    require_marketplace(actor)
    if not actor.is_user:
        raise PermissionDenied("Only a signed-in user writes or reports reviews.")


def _check_rating(rating: Any) -> int:
    if isinstance(rating, bool) or not isinstance(rating, int) or not RATING_MIN <= rating <= RATING_MAX:
        raise ApplicationError(
            f"'rating' must be a whole number from {RATING_MIN} to {RATING_MAX}, not {rating!r}.",
            extra={"field": "rating"},
            code="invalid_rating",
        )
    return rating


def _check_text(name: str, value: Any, limit: int) -> str:
    if not isinstance(value, str):
        raise ApplicationError(f"'{name}' must be a string.", extra={"field": name})
    if len(value) > limit:
        raise ApplicationError(
            f"'{name}' is {len(value)} characters; the limit is {limit}.",
            extra={"field": name},
            code="too_large",
        )
    return value


def _lock_pack(pack: Pack) -> Pack:
    return Pack.objects.select_for_update(of=("self",)).select_related("publisher").get(pk=pack.pk)


def pack_rating_recompute(*, pack_id: Any) -> tuple[float, int]:
    """Recompute a pack's rating aggregates from its counted reviews, under a lock on the pack row (call
    it inside the transaction that changed a review or a licence's state; it opens one otherwise)."""
    with transaction.atomic():
        locked = Pack.objects.select_for_update(of=("self",)).filter(pk=pack_id).values_list("pk", flat=True)
        if not list(locked):
            return 0.0, 0
        agg = Review.objects.filter(counted_reviews_q(), pack_id=pack_id).aggregate(
            avg=Avg("rating"), n=Count("id")
        )
        avg, count = round(float(agg["avg"] or 0.0), 4), int(agg["n"] or 0)
        # update(), not save(): only the aggregates change, never a listing field another write holds.
        Pack.objects.filter(pk=pack_id).update(rating_avg=avg, rating_count=count)
        return avg, count


def reviewable_licences(*, user: Any, pack: Pack) -> QuerySet[Licence]:
    """The user's licences of the pack that give a say: their own first, then organization licences
    whose seat they were given; oldest first."""
    return (
        Licence.objects.filter(pack=pack)
        .exclude(status__in=list(NOT_REVIEWABLE))
        .filter(Q(holder_user=user) | Q(holder_org__isnull=False, seat_assignments__user=user))
        .distinct()
        .order_by(F("holder_user").asc(nulls_last=True), "created_at", "id")
    )


def _audit(actor: Subject, pack: Pack, operation: str, review: Review, **details: Any) -> None:
    audit_record(
        actor=actor,
        operation=operation,
        namespace=pack.publisher.namespace,
        object_type="review",
        object_ids=[str(review.id)],
        details={"pack": str(pack.id), **details},
    )


@transaction.atomic
def review_create(*, actor: Subject, pack: Pack, rating: Any, title: Any = "", body: Any = "") -> Review:
    """Rate and review a pack with one of your licences (one review per licence). Without a licence that
    gives a say: 403 `licence_required`, nothing written; already reviewed: 409."""
    _require_user(actor)
    rating = _check_rating(rating)
    title = _check_text("title", title, TITLE_MAX).strip()
    body = _check_text("body", body, BODY_MAX).strip()
    pack = _lock_pack(pack)  # every review change of this pack queues here, so the aggregate is exact
    name = f"{pack.publisher.slug}/{pack.slug}"
    user = actor.user
    if publisher_role(actor=actor, publisher=pack.publisher) is not None:
        raise PermissionDenied(
            f"You publish '{name}'; publishers do not review their own packs.", code="own_pack"
        )
    licences = list(reviewable_licences(user=user, pack=pack).select_related("review"))
    if not licences:
        ended = (
            Licence.objects.filter(pack=pack, status__in=list(NOT_REVIEWABLE))
            .filter(Q(holder_user=user) | Q(seat_assignments__user=user))
            .exists()
        )
        why = "your licence was refunded or revoked; " if ended else ""
        raise PermissionDenied(
            f"Only licence holders may review '{name}': {why}get a licence (install a free pack, buy a paid "
            "one, or ask your organization for a seat) first.",
            code="licence_required",
        )
    free = [lic for lic in licences if not hasattr(lic, "review")]
    if not free:
        mine = next((lic.review for lic in licences if lic.review.author_id == user.pk), None)
        if mine is not None:
            raise Conflict(
                f"You have already reviewed '{name}'; edit that review instead.",
                extra={"review": str(mine.id)},
                code="already_reviewed",
            )
        raise Conflict(
            f"Your organization's licence of '{name}' has been reviewed by another member: one review per "
            "licence.",
            code="already_reviewed",
        )
    review = Review(pack=pack, licence=free[0], author=user, rating=rating, title=title, body=body)
    review.full_clean()
    try:
        with transaction.atomic():
            review.save()
    except IntegrityError as exc:  # the one-to-one on the licence: a review landed first
        raise Conflict(f"That licence of '{name}' already has a review.", code="already_reviewed") from exc
    pack_rating_recompute(pack_id=pack.pk)
    _audit(actor, pack, "pack.review.create", review, rating=rating, licence=str(free[0].id))
    return review


def _lock_review(review: Review) -> Review:
    return Review.objects.select_for_update(of=("self",)).select_related("licence").get(pk=review.pk)


@transaction.atomic
def review_update(
    *,
    actor: Subject,
    review: Review,
    rating: Any = None,
    title: Any = None,
    body: Any = None,
    hidden: Any = None,
) -> Review:
    """Its author edits rating, title and body; staff hide or unhide it (`hidden`). Unhiding clears the
    reports that hid it (they stay in the audit log), so it takes fresh reports to hide it again."""
    _require_user(actor)
    pack = _lock_pack(review.pack)
    review = _lock_review(review)
    is_author = review.author_id == actor.user.pk
    if not review_visible(actor=actor, review=review):
        raise NotFound("Review not found.")
    changes = {k: v for k, v in (("rating", rating), ("title", title), ("body", body)) if v is not None}
    if not changes and hidden is None:
        raise ApplicationError(
            "Nothing to change: send 'rating', 'title' or 'body' (or 'hidden', for staff)."
        )
    if changes and not is_author:
        raise PermissionDenied("Only its author may edit this review.")
    if hidden is not None and not _is_staff(actor):
        raise PermissionDenied("Only staff moderate reviews ('hidden').")
    if changes and review.licence.status in NOT_REVIEWABLE:
        raise PermissionDenied(
            "The licence this review was written with was refunded or revoked: delete the review instead.",
            code="licence_required",
        )
    if "rating" in changes:
        review.rating = _check_rating(changes["rating"])
    if "title" in changes:
        review.title = _check_text("title", changes["title"], TITLE_MAX).strip()
    if "body" in changes:
        review.body = _check_text("body", changes["body"], BODY_MAX).strip()
    cleared = 0
    if hidden is not None:
        if not isinstance(hidden, bool):
            raise ApplicationError("'hidden' must be true or false.", extra={"field": "hidden"})
        if review.hidden and not hidden:
            reports = list(review.reports.values("reporter_id", "reason"))
            cleared = len(reports)
            review.reports.all().delete()
            _audit(
                actor,
                pack,
                "pack.review.unhide",
                review,
                reports=[{"reporter": str(r["reporter_id"]), "reason": r["reason"]} for r in reports],
            )
        elif hidden and not review.hidden:
            _audit(actor, pack, "pack.review.hide", review)
        review.hidden = hidden
    review.full_clean()
    review.save()
    pack_rating_recompute(pack_id=pack.pk)
    if changes:
        _audit(actor, pack, "pack.review.update", review, fields=sorted(changes), reports_cleared=cleared)
    return review


@transaction.atomic
def review_delete(*, actor: Subject, review: Review) -> None:
    """Its author (or staff) deletes a review; the rating is recomputed."""
    _require_user(actor)
    pack = _lock_pack(review.pack)
    review = _lock_review(review)
    if not review_visible(actor=actor, review=review):
        raise NotFound("Review not found.")
    if review.author_id != actor.user.pk and not _is_staff(actor):
        raise PermissionDenied("Only its author (or staff) may delete this review.")
    _audit(actor, pack, "pack.review.delete", review, rating=review.rating)
    review.delete()
    pack_rating_recompute(pack_id=pack.pk)


@transaction.atomic
def review_report(*, actor: Subject, review: Review, reason: Any) -> ReviewReport:
    """Report someone else's review (once per reporter). The N-th report (a setting) hides it pending
    moderation, and it stops counting in the pack's rating."""
    _require_user(actor)
    reason = _check_text("reason", reason, REPORT_REASON_MAX).strip()
    if not reason:
        raise ApplicationError("'reason' must say what is wrong with the review.", extra={"field": "reason"})
    pack = _lock_pack(review.pack)
    review = _lock_review(review)
    if not review_visible(actor=actor, review=review):
        raise NotFound("Review not found.")
    if review.author_id == actor.user.pk:
        raise PermissionDenied("You cannot report your own review; edit or delete it instead.")
    if ReviewReport.objects.filter(review=review, reporter=actor.user).exists():
        raise Conflict("You have already reported this review.", code="already_reported")
    report = ReviewReport(review=review, reporter=actor.user, reason=reason)
    report.full_clean()
    try:
        with transaction.atomic():
            report.save()
    except IntegrityError as exc:
        raise Conflict("You have already reported this review.", code="already_reported") from exc
    _audit(actor, pack, "pack.review.report", review, reason=reason)
    if not review.hidden and review.reports.count() >= reports_to_hide():
        review.hidden = True
        review.save(update_fields=["hidden", "updated_at"])
        _audit(
            Subject.system("marketplace.reviews"), pack, "pack.review.hide", review, reports=reports_to_hide()
        )
        pack_rating_recompute(pack_id=pack.pk)
    return report
