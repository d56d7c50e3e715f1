"""Licences: granting on the pack's terms, lifecycle (end, past due, renew, sweep), seats, the API."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts import services as accounts
from accounts.models import Role
from core.errors import ApplicationError, Conflict, NotFound, PermissionDenied
from governance.models import AuditEvent
from governance.policy import Subject
from marketplace.hooks import InstallationEvent, register_installation_hook, unregister_installation_hook
from marketplace.models import Licence, LicenceStatus, Order, SeatAssignment
from marketplace.services import licences as svc
from tests.marketplace.test_licences_support import install, released

pytestmark = pytest.mark.django_db


@pytest.fixture
def events():
    seen: list[InstallationEvent] = []
    register_installation_hook(seen.append)
    yield seen
    unregister_installation_hook(seen.append)


def _order(pack, buyer, seats=1, org=None):  # type: ignore[no-untyped-def]
    return Order.objects.create(
        pack=pack,
        buyer=buyer,
        buyer_org=org,
        gateway="ledger",
        price_model=pack.price_model,
        seats=seats,
        amount_cents=500 * seats,
        currency="usd",
    )


@pytest.fixture
def team(make_user, alice):  # type: ignore[no-untyped-def]
    """`crew`: an organization owned by `boss`, with alice a member."""
    boss = make_user("boss")
    org = accounts.organization_create(owner=boss, slug="crew")
    org.memberships.create(user=alice, role=Role.MEMBER)
    return boss, org


def test_grant_copies_the_pack_terms_and_is_idempotent_per_order(make_pack, alice):
    release = released(
        make_pack,
        price_model="one_time",
        price_cents=900,
        licence_days=30,
        quota_per_period=100,
        forms=["plaintext", "kv"],
        federation_allowed=True,
        seats=2,
    )
    pack = release.pack
    order = _order(pack, alice)
    lic = svc.licence_grant(pack=pack, holder_user=alice, order=order, reason="paid")
    assert (lic.price_model, lic.seats, lic.quota_per_period, lic.forms, lic.federation_allowed) == (
        "one_time",
        2,
        100,
        ["plaintext", "kv"],
        True,
    )
    assert abs((lic.expires_at - timezone.now()) - timedelta(days=30)) < timedelta(minutes=1)
    order.refresh_from_db()
    assert order.licence_id == lic.id
    # The same order again (a replayed webhook): the same licence, nothing new.
    again = svc.licence_grant(pack=pack, holder_user=alice, order=order, reason="replay")
    assert again.id == lic.id and Licence.objects.count() == 1
    assert AuditEvent.objects.filter(operation="licence.grant", object_ids=[str(lic.id)]).count() == 1
    # A later change of the listing does not change what alice holds.
    type(pack).objects.filter(pk=pack.pk).update(quota_per_period=5, forms=[])
    lic.refresh_from_db()
    assert lic.quota_per_period == 100 and lic.forms == ["plaintext", "kv"]


def test_a_second_order_extends_the_usable_licence_instead_of_duplicating_it(make_pack, alice):
    pack = released(make_pack, price_model="one_time", price_cents=900, licence_days=30).pack
    first = svc.licence_grant(pack=pack, holder_user=alice, order=_order(pack, alice))
    end = first.expires_at
    second = svc.licence_grant(pack=pack, holder_user=alice, order=_order(pack, alice))
    assert second.id == first.id and Licence.objects.count() == 1
    assert abs((second.expires_at - end) - timedelta(days=30)) < timedelta(seconds=5)
    assert second.seats == 2 and len(second.meta["orders"]) == 2


def test_grant_needs_exactly_one_holder_and_writes_nothing_otherwise(make_pack, alice, team):
    pack = released(make_pack).pack
    for holders in ({}, {"holder_user": alice, "holder_org": team[1]}):
        with pytest.raises(ApplicationError, match="exactly one holder") as exc:
            svc.licence_grant(pack=pack, **holders)
        assert exc.value.status == 400
    assert not Licence.objects.exists()


def test_free_grant_twice_reuses_the_licence(make_pack, alice):
    pack = released(make_pack).pack
    a = svc.licence_grant(pack=pack, holder_user=alice)
    b = svc.licence_grant(pack=pack, holder_user=alice)
    assert a.id == b.id and a.expires_at is None and a.status == LicenceStatus.ACTIVE


def test_refund_suspends_every_installation_and_renewal_is_refused(
    make_pack, alice, events, django_capture_on_commit_callbacks
):
    release = released(make_pack, price_model="one_time", price_cents=900)
    lic = svc.licence_grant(pack=release.pack, holder_user=alice, order=_order(release.pack, alice))
    first, second = install(alice, release, lic), install(alice, release, lic, workspace="agent-1")
    with django_capture_on_commit_callbacks(execute=True):
        svc.licence_end(licence=lic, status=LicenceStatus.REFUNDED, reason="refund re_1")
    for inst in (first, second):
        inst.namespace.refresh_from_db()
        assert inst.namespace.suspended_reason == "The licence for acme/tips was refunded."
    assert sorted(e.installation_id for e in events if e.kind == "suspended") == sorted(
        [str(first.id), str(second.id)]
    )
    # Replaying the refund changes nothing and runs no hook again.
    with django_capture_on_commit_callbacks(execute=True):
        svc.licence_end(licence=lic, status=LicenceStatus.REFUNDED, reason="refund re_1")
    assert len(events) == 2
    with pytest.raises(Conflict, match="refunded"):
        svc.licence_renew(licence=lic, until=timezone.now() + timedelta(days=30), reason="late invoice")


def test_licence_end_refuses_a_status_that_does_not_end(make_pack, alice):
    lic = svc.licence_grant(pack=released(make_pack).pack, holder_user=alice)
    with pytest.raises(ApplicationError, match="does not end a licence") as exc:
        svc.licence_end(licence=lic, status=LicenceStatus.ACTIVE, reason="x")
    assert exc.value.status == 400
    lic.refresh_from_db()
    assert lic.status == LicenceStatus.ACTIVE


def test_past_due_keeps_access_until_grace_then_sweep_suspends_and_renewal_resumes(
    make_pack, alice, events, django_capture_on_commit_callbacks
):
    release = released(make_pack, price_model="subscription", price_cents=500)
    lic = svc.licence_grant(pack=release.pack, holder_user=alice, order=_order(release.pack, alice))
    inst = install(alice, release, lic)
    grace = timezone.now() + timedelta(days=3)
    svc.licence_past_due(licence=lic, grace_until=grace, reason="invoice.payment_failed")
    inst.namespace.refresh_from_db()
    assert inst.namespace.suspended_reason == ""
    assert svc.licence_usable(user=alice, pack=release.pack).id == lic.id
    with django_capture_on_commit_callbacks(execute=True):
        assert svc.licence_sweep(now=grace + timedelta(seconds=1)) == {"expired": 0, "suspended": 1}
    lic.refresh_from_db()
    inst.namespace.refresh_from_db()
    assert lic.status == LicenceStatus.SUSPENDED
    assert "payment failed" in inst.namespace.suspended_reason
    assert svc.licence_sweep(now=grace + timedelta(seconds=2)) == {"expired": 0, "suspended": 0}
    with django_capture_on_commit_callbacks(execute=True):
        svc.licence_renew(licence=lic, until=timezone.now() + timedelta(days=30), reason="invoice.paid")
    lic.refresh_from_db()
    inst.namespace.refresh_from_db()
    assert lic.status == LicenceStatus.ACTIVE and lic.grace_until is None
    assert inst.namespace.suspended_reason == ""
    assert [e.kind for e in events] == ["suspended", "resumed"]


def test_sweep_expires_licences_past_their_end(make_pack, alice):
    release = released(make_pack, licence_days=1)
    lic = svc.licence_grant(pack=release.pack, holder_user=alice)
    inst = install(alice, release, lic)
    assert svc.licence_sweep(now=timezone.now() + timedelta(days=2)) == {"expired": 1, "suspended": 0}
    lic.refresh_from_db()
    inst.namespace.refresh_from_db()
    assert lic.status == LicenceStatus.EXPIRED
    assert inst.namespace.suspended_reason == "The licence for acme/tips expired."


def test_a_new_licence_after_expiry_takes_over_and_resumes_the_installation(make_pack, alice):
    release = released(make_pack, price_model="one_time", price_cents=900, licence_days=1)
    old = svc.licence_grant(pack=release.pack, holder_user=alice, order=_order(release.pack, alice))
    inst = install(alice, release, old)
    svc.licence_end(licence=old, status=LicenceStatus.EXPIRED, reason="ended")
    new = svc.licence_grant(pack=release.pack, holder_user=alice, order=_order(release.pack, alice))
    assert new.id != old.id
    inst.refresh_from_db()
    inst.namespace.refresh_from_db()
    assert inst.licence_id == new.id and inst.namespace.suspended_reason == ""


def test_licence_usable_names_what_is_missing(make_pack, alice, team):
    boss, org = team
    release = released(make_pack, forms=["plaintext"], quota_per_period=1)
    pack = release.pack
    with pytest.raises(ApplicationError) as exc:
        svc.licence_usable(user=alice, pack=pack)
    assert (exc.value.status, exc.value.code) == (402, "licence_required")
    assert "acme/tips" in exc.value.message

    lic = svc.licence_grant(pack=pack, holder_org=org)
    with pytest.raises(ApplicationError) as exc:
        svc.licence_usable(user=alice, pack=pack)
    assert exc.value.code == "seat_required" and "ask an organization admin" in exc.value.message
    svc.seat_assign(actor=Subject(user=boss), licence=lic, user=alice)
    assert svc.licence_usable(user=alice, pack=pack).id == lic.id

    with pytest.raises(ApplicationError) as exc:
        svc.licence_usable(user=alice, pack=pack, form="lora")
    assert exc.value.code == "form_not_licensed" and "'lora'" in exc.value.message

    from marketplace.services.metering import usage_add

    usage_add(licence=lic, retrievals=1)
    with pytest.raises(ApplicationError) as exc:
        svc.licence_usable(user=alice, pack=pack)
    assert exc.value.code == "quota_exhausted" and "(1 of 1)" in exc.value.message

    Licence.objects.filter(pk=lic.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(ApplicationError) as exc:
        svc.licence_usable(user=alice, pack=pack)
    assert exc.value.code == "licence_expired"


def test_seats_are_assigned_by_org_admins_within_the_licence(make_pack, alice, bob, team, make_user):
    boss, org = team
    carol = make_user("carol")
    org.memberships.create(user=carol, role=Role.MEMBER)
    lic = svc.licence_grant(pack=released(make_pack).pack, holder_org=org)  # one seat
    with pytest.raises(PermissionDenied, match="owners and admins"):
        svc.seat_assign(actor=Subject(user=alice), licence=lic, user=alice)
    with pytest.raises(ApplicationError, match="'bob' is not a member") as exc:
        svc.seat_assign(actor=Subject(user=boss), licence=lic, user=bob)
    assert exc.value.status == 400
    assert not SeatAssignment.objects.exists()
    svc.seat_assign(actor=Subject(user=boss), licence=lic, user=alice)
    svc.seat_assign(actor=Subject(user=boss), licence=lic, user=alice)  # already hers: no change
    with pytest.raises(Conflict, match=r"All 1 seats of this licence are assigned \(1 of 1\)") as exc:
        svc.seat_assign(actor=Subject(user=boss), licence=lic, user=carol)
    assert exc.value.status == 409
    assert list(SeatAssignment.objects.values_list("user__username", flat=True)) == ["alice"]


def test_seats_cannot_go_below_those_assigned(make_pack, alice, team):
    boss, org = team
    release = released(make_pack, seats=3)
    lic = svc.licence_grant(pack=release.pack, holder_org=org)
    svc.seat_assign(actor=Subject(user=boss), licence=lic, user=alice)
    svc.seat_assign(actor=Subject(user=boss), licence=lic, user=boss)
    system = Subject.system("payments")
    with pytest.raises(Conflict, match=r"has 2 seats assigned; it cannot have fewer seats \(1\)") as exc:
        svc.licence_seats_set(actor=system, licence=lic, seats=1)
    assert exc.value.status == 409
    lic.refresh_from_db()
    assert lic.seats == 3
    assert svc.licence_seats_set(actor=system, licence=lic, seats=2).seats == 2


def test_unassigning_a_seat_suspends_that_members_installations(make_pack, alice, team):
    boss, org = team
    release = released(make_pack)
    lic = svc.licence_grant(pack=release.pack, holder_org=org)
    svc.seat_assign(actor=Subject(user=boss), licence=lic, user=alice)
    inst = install(alice, release, lic)
    svc.seat_unassign(actor=Subject(user=boss), licence=lic, user=alice)
    inst.namespace.refresh_from_db()
    assert inst.namespace.suspended_reason == "Your seat of the licence for acme/tips was unassigned."
    svc.seat_assign(actor=Subject(user=boss), licence=lic, user=alice)
    inst.namespace.refresh_from_db()
    assert inst.namespace.suspended_reason == ""
    with pytest.raises(NotFound):
        svc.seat_unassign(actor=Subject(user=boss), licence=lic, user=boss)


# --- API ------------------------------------------------------------------------------------------------


def test_api_lists_my_and_my_orgs_licences_and_hides_others(make_pack, api_for, alice, bob, team):
    _boss, org = team
    pack = released(make_pack).pack
    mine = svc.licence_grant(pack=pack, holder_user=alice)
    ours = svc.licence_grant(pack=pack, holder_org=org)
    bobs = svc.licence_grant(pack=pack, holder_user=bob)
    client = api_for(alice)
    listed = client.get("/api/v1/marketplace/licences")
    assert listed.status_code == 200, listed.json()
    assert {item["id"] for item in listed.json()} == {str(mine.id), str(ours.id)}
    detail = client.get(f"/api/v1/marketplace/licences/{ours.id}").json()
    assert detail["holder"] == {"type": "organization", "name": "crew"}
    assert detail["pack"] == "acme/tips" and detail["usable"] is True and detail["seats_assigned"] == 0
    for path in ("", "/seats", "/usage"):
        resp = client.get(f"/api/v1/marketplace/licences/{bobs.id}{path}")
        assert resp.status_code == 404 and resp.json()["error"]["message"] == "Licence not found."
    assert api_for(alice, scopes=["memories:read"]).get("/api/v1/marketplace/licences").status_code == 403


def test_api_seats_assign_list_unassign(make_pack, api_for, alice, bob, team):
    boss, org = team
    lic = svc.licence_grant(pack=released(make_pack).pack, holder_org=org)
    admin = api_for(boss)
    url = f"/api/v1/marketplace/licences/{lic.id}/seats"
    created = admin.post(url, {"username": "alice"}, format="json")
    assert created.status_code == 201, created.json()
    assert created.json()["username"] == "alice" and created.json()["assigned_by"] == "boss"
    full = admin.post(url, {"username": "boss"}, format="json")
    assert full.status_code == 409 and "(1 of 1)" in full.json()["error"]["message"]
    outsider = admin.post(url, {"username": "bob"}, format="json")
    assert outsider.status_code == 400 and "not a member" in outsider.json()["error"]["message"]
    unknown = admin.post(url, {"username": "nobody"}, format="json")
    assert unknown.status_code == 404
    bad = admin.post(url, {"user": "alice"}, format="json")
    assert bad.status_code == 400
    assert [s["username"] for s in api_for(alice).get(url).json()] == ["alice"]
    member = api_for(alice).delete(f"{url}/alice")
    assert member.status_code == 403
    assert admin.delete(f"{url}/alice").status_code == 204
    assert admin.get(url).json() == []
    assert SeatAssignment.objects.count() == 0


def test_api_usage_lists_the_current_period(make_pack, api_for, alice):
    from marketplace.services.metering import period_start, usage_add

    lic = svc.licence_grant(pack=released(make_pack).pack, holder_user=alice)
    usage_add(licence=lic, retrievals=3, chats=1)
    body = api_for(alice).get(f"/api/v1/marketplace/licences/{lic.id}/usage").json()
    assert body[0]["retrievals"] == 3 and body[0]["chats"] == 1
    assert body[0]["period_start"].startswith(period_start().strftime("%Y-%m-01"))
    detail = api_for(alice).get(f"/api/v1/marketplace/licences/{lic.id}").json()
    assert detail["usage_this_period"]["retrievals"] == 3


def test_renewing_an_org_licence_does_not_resume_a_member_without_a_seat(make_pack, alice, team):
    boss, org = team
    release = released(make_pack, price_model="subscription", price_cents=500, seats=2)
    lic = svc.licence_grant(pack=release.pack, holder_org=org, order=_order(release.pack, boss, org=org))
    svc.seat_assign(actor=Subject(user=boss), licence=lic, user=alice)
    seated, unseated = install(alice, release, lic), install(boss, release, lic)
    svc.licence_end(licence=lic, status=LicenceStatus.SUSPENDED, reason="payment failed")
    svc.licence_renew(licence=lic, until=timezone.now() + timedelta(days=30), reason="invoice.paid")
    seated.namespace.refresh_from_db()
    unseated.namespace.refresh_from_db()
    assert seated.namespace.suspended_reason == ""
    assert unseated.namespace.suspended_reason == "Your seat of the licence for acme/tips was unassigned."
