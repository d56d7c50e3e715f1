"""Ratings and reviews: licence holders only, one per licence, editable, reportable, moderated; the pack's
rating aggregates always match the counted reviews."""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from accounts import services as accounts
from core.errors import ApplicationError, PermissionDenied
from governance.models import AuditEvent
from governance.policy import Subject
from marketplace.models import Licence, LicenceStatus, Pack, Review, ReviewReport, SeatAssignment
from marketplace.services.reviews import pack_rating_recompute, review_create

pytestmark = pytest.mark.django_db

URL = "/api/v1/marketplace/packs/acme/tips/reviews"


def licence_for(
    pack: Pack, *, user: Any = None, org: Any = None, status: str = LicenceStatus.ACTIVE
) -> Licence:
    return Licence.objects.create(
        pack=pack,
        holder_user=user,
        holder_org=org,
        status=status,
        price_model=pack.price_model,
        licence=pack.licence,
        starts_at=timezone.now(),
    )


@pytest.fixture
def pack(make_pack) -> Pack:  # type: ignore[no-untyped-def]
    return make_pack("tips", title="Tips", release=True)


def _pack(pack: Pack) -> Pack:
    return Pack.objects.get(pk=pack.pk)


def _post(client: Any, body: dict, url: str = URL) -> Any:
    return client.post(url, body, format="json")


# --- who may review --------------------------------------------------------------------------------------


def test_a_licence_holder_rates_and_reviews(pack, alice, api_for):
    licence_for(pack, user=alice)
    resp = _post(api_for(alice), {"rating": 4, "title": "Useful", "body": "Saved me hours."})
    assert resp.status_code == 201, resp.content
    body = resp.json()
    assert body["rating"] == 4 and body["author"] == "alice" and body["pack"] == "acme/tips"
    assert body["licence_holder"] == "user" and body["hidden"] is False
    p = _pack(pack)
    assert (p.rating_avg, p.rating_count) == (4.0, 1)
    assert AuditEvent.objects.filter(operation="pack.review.create", object_ids=[body["id"]]).exists()
    listed = api_for(alice).get(URL).json()
    assert listed["count"] == 1 and listed["results"][0]["id"] == body["id"]
    page = api_for(alice).get("/api/v1/marketplace/packs/acme/tips").json()
    assert page["review_summary"]["count"] == 1 and page["review_summary"]["histogram"]["4"] == 1


def test_a_review_without_a_licence_is_refused_and_writes_nothing(pack, alice, api_for):
    resp = _post(api_for(alice), {"rating": 5})
    assert resp.status_code == 403
    err = resp.json()["error"]
    assert err["code"] == "licence_required"
    assert "Only licence holders may review 'acme/tips'" in err["message"]
    assert not Review.objects.exists() and _pack(pack).rating_count == 0


@pytest.mark.parametrize("status", [LicenceStatus.REFUNDED, LicenceStatus.REVOKED])
def test_a_refunded_or_revoked_licence_gives_no_say(pack, alice, api_for, status):
    licence_for(pack, user=alice, status=status)
    resp = _post(api_for(alice), {"rating": 1})
    assert resp.status_code == 403 and "refunded or revoked" in resp.json()["error"]["message"]
    assert not Review.objects.exists()


@pytest.mark.parametrize(
    "status",
    [LicenceStatus.EXPIRED, LicenceStatus.CANCELLED, LicenceStatus.SUSPENDED, LicenceStatus.PAST_DUE],
)
def test_a_licence_that_was_granted_and_ended_still_gives_a_say(pack, alice, api_for, status):
    licence_for(pack, user=alice, status=status)
    assert _post(api_for(alice), {"rating": 3}).status_code == 201


def test_organization_seats_share_one_review_per_licence(pack, make_user, api_for):
    boss, carol, dan, eve = (make_user(n) for n in ("boss", "carol", "dan", "eve"))
    org = accounts.organization_create(owner=boss, slug="buyers")
    lic = licence_for(pack, org=org)
    SeatAssignment.objects.create(licence=lic, user=carol)
    SeatAssignment.objects.create(licence=lic, user=dan)
    # eve has no seat: no say
    assert _post(api_for(eve), {"rating": 5}).json()["error"]["code"] == "licence_required"
    resp = _post(api_for(carol), {"rating": 5})
    assert resp.status_code == 201 and resp.json()["licence_holder"] == "organization"
    second = _post(api_for(dan), {"rating": 1})
    assert second.status_code == 409 and "reviewed by another member" in second.json()["error"]["message"]
    assert Review.objects.count() == 1 and _pack(pack).rating_avg == 5.0


def test_one_review_per_licence_and_a_second_licence_allows_a_second(pack, make_user, alice, api_for):
    licence_for(pack, user=alice)
    assert _post(api_for(alice), {"rating": 5}).status_code == 201
    again = _post(api_for(alice), {"rating": 1})
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_reviewed"
    assert "edit that review" in again.json()["error"]["message"]
    assert Review.objects.count() == 1 and _pack(pack).rating_avg == 5.0


def test_publishers_do_not_review_their_own_pack(pack, expert, api_for):
    licence_for(pack, user=expert)
    resp = _post(api_for(expert), {"rating": 5})
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "own_pack"
    assert not Review.objects.exists()


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"rating": 0}, "rating"),
        ({"rating": 6}, "rating"),
        ({"rating": -1}, "rating"),
        ({"rating": "5"}, "rating"),
        ({"rating": 4.5}, "rating"),
        ({"rating": True}, "rating"),
        ({"rating": None}, "rating"),
        ({}, "rating"),
        ({"rating": 5, "title": "x" * 201}, "title"),
        ({"rating": 5, "body": "x" * 5001}, "body"),
        ({"rating": 5, "title": 7}, "title"),
        ({"rating": 5, "stars": 5}, "stars"),
    ],
)
def test_bad_review_input_is_a_400_naming_it(pack, alice, api_for, body, named):
    licence_for(pack, user=alice)
    resp = _post(api_for(alice), body)
    assert resp.status_code == 400, resp.content
    assert named in resp.json()["error"]["message"]
    assert not Review.objects.exists() and _pack(pack).rating_count == 0


def test_the_service_checks_the_rating_too(pack, alice):
    licence_for(pack, user=alice)
    for bad in (0, 6, "5", 2.0, True, None):
        with pytest.raises(ApplicationError) as exc:
            review_create(actor=Subject(user=alice), pack=pack, rating=bad)
        assert exc.value.status == 400 and exc.value.extra == {"field": "rating"}
    assert not Review.objects.exists()


def test_a_review_needs_the_marketplace_scope(pack, alice, api_for):
    licence_for(pack, user=alice)
    resp = _post(api_for(alice, scopes=["memories:read"]), {"rating": 5})
    assert resp.status_code == 403 and "'marketplace' scope" in resp.json()["error"]["message"]
    with pytest.raises(PermissionDenied):
        review_create(actor=Subject(user=alice, scopes=frozenset({"memories:read"})), pack=pack, rating=5)
    assert not Review.objects.exists()


def test_reviews_of_a_pack_nobody_can_see_are_404(pack, alice, api_for):
    licence_for(pack, user=alice)
    Pack.objects.filter(pk=pack.pk).update(listed=False)
    assert _post(api_for(alice), {"rating": 5}).status_code == 404
    assert api_for(alice).get(URL).status_code == 404
    assert not Review.objects.exists()


# --- editing and deleting ------------------------------------------------------------------------------


@pytest.fixture
def reviewed(pack, alice, bob, api_for):  # type: ignore[no-untyped-def]
    """alice (4 stars) and bob (2 stars) reviewed the pack."""
    licence_for(pack, user=alice)
    licence_for(pack, user=bob)
    a = _post(api_for(alice), {"rating": 4, "title": "Good"}).json()["id"]
    b = _post(api_for(bob), {"rating": 2}).json()["id"]
    assert _pack(pack).rating_avg == 3.0
    return a, b


def test_the_author_edits_and_the_rating_follows(pack, reviewed, alice, api_for):
    a, _ = reviewed
    resp = api_for(alice).patch(f"{URL}/{a}", {"rating": 5, "body": "Even better now."}, format="json")
    assert resp.status_code == 200 and resp.json()["rating"] == 5 and resp.json()["title"] == "Good"
    assert (_pack(pack).rating_avg, _pack(pack).rating_count) == (3.5, 2)


@pytest.mark.parametrize(
    ("body", "status", "named"),
    [
        ({"rating": 9}, 400, "rating"),
        ({"rating": "4"}, 400, "rating"),
        ({}, 400, "Nothing to change"),
        ({"stars": 3}, 400, "stars"),
        ({"hidden": True}, 403, "staff"),
    ],
)
def test_bad_edits_are_refused_and_change_nothing(pack, reviewed, alice, api_for, body, status, named):
    a, _ = reviewed
    resp = api_for(alice).patch(f"{URL}/{a}", body, format="json")
    assert resp.status_code == status and named in resp.json()["error"]["message"]
    review = Review.objects.get(pk=a)
    assert (review.rating, review.hidden) == (4, False) and _pack(pack).rating_avg == 3.0


def test_only_the_author_edits_or_deletes(pack, reviewed, make_user, api_for):
    a, _ = reviewed
    mallory = api_for(make_user("mallory"))
    resp = mallory.patch(f"{URL}/{a}", {"rating": 1}, format="json")
    assert resp.status_code == 403 and "Only its author" in resp.json()["error"]["message"]
    resp = mallory.delete(f"{URL}/{a}")
    assert resp.status_code == 403
    assert Review.objects.get(pk=a).rating == 4 and _pack(pack).rating_avg == 3.0


def test_the_author_deletes_and_the_rating_follows(pack, reviewed, alice, api_for):
    a, _ = reviewed
    assert api_for(alice).delete(f"{URL}/{a}").status_code == 204
    assert not Review.objects.filter(pk=a).exists()
    assert (_pack(pack).rating_avg, _pack(pack).rating_count) == (2.0, 1)
    assert AuditEvent.objects.filter(operation="pack.review.delete").exists()
    assert api_for(alice).delete(f"{URL}/{a}").status_code == 404


def test_a_review_of_another_pack_is_404_here(pack, reviewed, make_pack, alice, api_for):
    a, _ = reviewed
    make_pack("other", title="Other", release=True)
    resp = api_for(alice).patch(
        f"/api/v1/marketplace/packs/acme/other/reviews/{a}", {"rating": 1}, format="json"
    )
    assert resp.status_code == 404 and Review.objects.get(pk=a).rating == 4


# --- reports and moderation ------------------------------------------------------------------------------


def test_reports_hide_a_review_after_the_threshold_and_staff_unhide_it(
    pack, reviewed, make_user, alice, api_for, settings
):
    settings.MARKETPLACE_REVIEW_REPORTS_TO_HIDE = 2
    a, b = reviewed
    r1, r2, r3 = (api_for(make_user(n)) for n in ("r1", "r2", "r3"))
    first = _post(r1, {"reason": "Spam link."}, f"{URL}/{a}/report")
    assert first.status_code == 201 and first.json()["review_hidden"] is False
    again = _post(r1, {"reason": "Still spam."}, f"{URL}/{a}/report")
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_reported"
    second = _post(r2, {"reason": "Off topic."}, f"{URL}/{a}/report")
    assert second.status_code == 201 and second.json()["review_hidden"] is True
    # Hidden: out of the rating and the list for others, still there for its author.
    assert (_pack(pack).rating_avg, _pack(pack).rating_count) == (2.0, 1)
    assert [r["id"] for r in r3.get(URL).json()["results"]] == [b]
    mine = {r["id"]: r for r in api_for(alice).get(URL).json()["results"]}
    assert mine[a]["hidden"] is True
    assert _post(r3, {"reason": "x"}, f"{URL}/{a}/report").status_code == 404  # nobody else sees it
    # Staff unhide: it counts again and the reports that hid it are cleared (kept in the audit log).
    staff = make_user("mod")
    staff.is_staff = True
    staff.save()
    resp = api_for(staff).patch(f"{URL}/{a}", {"hidden": False}, format="json")
    assert resp.status_code == 200 and resp.json()["hidden"] is False
    assert not ReviewReport.objects.filter(review_id=a).exists()
    assert AuditEvent.objects.filter(operation="pack.review.unhide").exists()
    assert (_pack(pack).rating_avg, _pack(pack).rating_count) == (3.0, 2)
    # Staff may not rewrite someone's review.
    assert api_for(staff).patch(f"{URL}/{a}", {"rating": 1}, format="json").status_code == 403


@pytest.mark.parametrize(
    ("body", "status", "named"),
    [
        ({}, 400, "reason"),
        ({"reason": ""}, 400, "reason"),
        ({"reason": "   "}, 400, "reason"),
        ({"reason": "x" * 501}, 400, "reason"),
        ({"reason": 5}, 400, "reason"),
    ],
)
def test_bad_reports_are_refused_and_write_nothing(pack, reviewed, bob, api_for, body, status, named):
    a, _ = reviewed
    resp = _post(api_for(bob), body, f"{URL}/{a}/report")
    assert resp.status_code == status and named in resp.json()["error"]["message"]
    assert not ReviewReport.objects.exists()


def test_nobody_reports_their_own_review(pack, reviewed, alice, api_for):
    a, _ = reviewed
    resp = _post(api_for(alice), {"reason": "Mine."}, f"{URL}/{a}/report")
    assert resp.status_code == 403 and not ReviewReport.objects.exists()


def test_a_refund_after_reviewing_takes_the_review_out_of_the_rating(pack, reviewed, alice, bob, api_for):
    a, _ = reviewed
    Licence.objects.filter(holder_user=alice).update(status=LicenceStatus.REFUNDED)
    pack_rating_recompute(pack_id=pack.pk)  # what the licence service calls when it ends a licence
    assert (_pack(pack).rating_avg, _pack(pack).rating_count) == (2.0, 1)
    assert a not in {r["id"] for r in api_for(bob).get(URL).json()["results"]}
    edit = api_for(alice).patch(f"{URL}/{a}", {"rating": 5}, format="json")
    assert edit.status_code == 403 and Review.objects.get(pk=a).rating == 4
    assert api_for(alice).delete(f"{URL}/{a}").status_code == 204


# --- concurrency (real transactions on PostgreSQL) --------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_reviews_keep_the_aggregate_exact(make_pack, make_user):
    import threading

    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("row locks need PostgreSQL")
    pack = make_pack("tips", title="Tips", release=True)
    users = [make_user(f"buyer{i}") for i in range(8)]
    for u in users:
        licence_for(pack, user=u)
    ratings = [1, 2, 3, 4, 5, 5, 4, 3]
    barrier = threading.Barrier(len(users) + 2)
    errors: list[Exception] = []
    outcomes: list[str] = []

    def write(user: Any, rating: int) -> None:
        from django.db import connections

        try:
            barrier.wait()
            review_create(actor=Subject(user=user), pack=pack, rating=rating)
            outcomes.append("ok")
        except ApplicationError as exc:
            outcomes.append(exc.code)
        except Exception as exc:  # pragma: no cover - a failure is reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=write, args=(u, r)) for u, r in zip(users, ratings, strict=True)]
    # The same buyer twice at once: one review, one 409, never a 500.
    threads += [threading.Thread(target=write, args=(users[0], 5)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert outcomes.count("ok") == 8 and outcomes.count("already_reviewed") == 2
    p = _pack(pack)
    reviews = list(Review.objects.filter(pack=pack).values_list("rating", flat=True))
    assert p.rating_count == len(reviews) == 8
    assert p.rating_avg == pytest.approx(sum(reviews) / len(reviews))
