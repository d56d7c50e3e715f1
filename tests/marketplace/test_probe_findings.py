"""Regressions for what an attacker probe of a running instance found in the marketplace."""

from __future__ import annotations

import pytest
from django.utils import timezone

from governance.policy import Subject
from marketplace.models import Installation, LicenceStatus, LicenceUsage, Pack, PriceModel
from marketplace.services import licences as svc
from marketplace.services.installs import installation_remove, pack_install
from tests.marketplace.test_licences_support import install, released

pytestmark = pytest.mark.django_db


def diff_url(ns: str) -> str:
    return f"/api/v1/governance/timemachine/diff?namespace={ns}&from=2000-01-01T00:00:00Z&to=now"


def test_the_time_machine_refuses_an_installed_pack_the_licence_no_longer_covers(make_pack, alice, api_for):
    # Given alice's installed pack with a quota of 2 retrievals, both used up
    release = released(make_pack, quota_per_period=2)
    lic = svc.licence_grant(pack=release.pack, holder_user=alice)
    inst = install(alice, release, lic)
    LicenceUsage.objects.create(
        licence=lic,
        period_start=timezone.now().replace(day=1, hour=0, minute=0, second=0, microsecond=0),
        retrievals=2,
    )
    client = api_for(alice)
    # When she asks the time machine for the namespace's text, or snapshots it
    diff = client.get(diff_url(inst.namespace.key))
    snap = client.post(
        "/api/v1/governance/snapshots", {"namespace": inst.namespace.key, "name": "s"}, format="json"
    )
    # Then both are the same 402 as search, and nothing of the pack's text is handed out
    assert diff.status_code == 402 and diff.json()["error"]["code"] == "quota_exhausted", diff.json()
    assert snap.status_code == 402, snap.json()


def test_the_time_machine_meters_what_it_shows_within_the_quota(make_pack, alice, api_for):
    release = released(make_pack, quota_per_period=2)  # three memories, two retrievals allowed
    lic = svc.licence_grant(pack=release.pack, holder_user=alice)
    inst = install(alice, release, lic)
    body = api_for(alice).get(diff_url(inst.namespace.key)).json()
    shown = len(body["added"]) + len(body["removed"]) + len(body["changed"])
    assert shown == 2 and body["truncated"] is True
    assert LicenceUsage.objects.get(licence=lic).retrievals == 2


def test_a_pack_without_a_release_cannot_be_bought(make_pack, bob, api_for):
    pack = make_pack(slug="unreleased", texts=())
    Pack.objects.filter(pk=pack.pk).update(price_model=PriceModel.ONE_TIME, price_cents=900)
    r = api_for(bob).post("/api/v1/marketplace/packs/acme/unreleased/checkout", {}, format="json")
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_released", r.json()
    assert not Pack.objects.get(pk=pack.pk).orders.exists()


def test_installing_again_moves_the_installation_to_the_licence_that_is_usable(make_pack, alice):
    # Given alice's installation bound to a licence that was refunded ...
    release = released(make_pack)
    first = svc.licence_grant(pack=release.pack, holder_user=alice)
    inst = install(alice, release, first)
    svc.licence_end(licence=first, status=LicenceStatus.REFUNDED, reason="refunded")
    inst.namespace.refresh_from_db()
    assert inst.namespace.suspended_reason
    # ... and a new licence she then got
    second = svc.licence_grant(pack=release.pack, holder_user=alice, reason="bought again")
    # When she installs again, the same installation comes back under the usable licence
    again = pack_install(actor=Subject(user=alice), release=release)
    assert again.pk == inst.pk and again.licence_id == second.pk
    again.namespace.refresh_from_db()
    assert again.namespace.suspended_reason == ""


def test_install_count_counts_people_not_install_cycles(make_pack, alice):
    pack = make_pack(slug="cycle", texts=("Cycle one.",), release=True)
    release = pack.releases.get()
    for _ in range(3):
        installation = pack_install(actor=Subject(user=alice), release=release)
        installation_remove(actor=Subject(user=alice), installation=installation)
    assert Pack.objects.get(pk=pack.pk).install_count == 1
    assert Installation.objects.filter(pack=pack, user=alice).count() == 3
