"""Metering per licence per period: calendar months (UTC), concurrent-safe counts, the quota cap."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from django.db import connection

from governance.policy import Subject
from marketplace.models import Licence, LicenceUsage
from marketplace.services import licences as svc
from marketplace.services.metering import period_start, usage_add
from tests.marketplace.test_licences_support import install, released
from vault.models import MemCube


def test_a_period_is_the_calendar_month_in_utc():
    from datetime import timedelta, timezone

    late = datetime(2026, 3, 31, 23, 30, tzinfo=timezone(timedelta(hours=-5)))  # April 1st in UTC
    assert period_start(late) == datetime(2026, 4, 1, tzinfo=UTC)
    assert period_start(datetime(2026, 12, 1, 0, 0, tzinfo=UTC)) == datetime(2026, 12, 1, tzinfo=UTC)


@pytest.mark.django_db
def test_periods_are_counted_apart(make_pack, alice):
    lic = svc.licence_grant(pack=released(make_pack).pack, holder_user=alice)
    usage_add(licence=lic, retrievals=2, at=datetime(2026, 1, 15, tzinfo=UTC))
    usage_add(licence=lic, retrievals=5, kv_uses=1, at=datetime(2026, 2, 1, tzinfo=UTC))
    rows = dict(LicenceUsage.objects.filter(licence=lic).values_list("period_start", "retrievals"))
    assert rows == {datetime(2026, 1, 1, tzinfo=UTC): 2, datetime(2026, 2, 1, tzinfo=UTC): 5}


def _run(n: int, fn) -> list:  # type: ignore[no-untyped-def]
    results: list = []
    errors: list = []
    barrier = threading.Barrier(n)

    def work() -> None:
        try:
            barrier.wait()
            results.append(fn())
        except Exception as exc:  # reported below: a thread's failure must fail the test
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=work) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


@pytest.mark.django_db(transaction=True)
def test_concurrent_counts_lose_nothing(make_pack, alice):
    lic = svc.licence_grant(pack=released(make_pack).pack, holder_user=alice)

    def five() -> int:
        return sum(usage_add(licence=lic, retrievals=1, chats=1) for _ in range(5))

    assert sum(_run(8, five)) == 40
    row = LicenceUsage.objects.get(licence=lic)  # one row for the period, created once
    assert (row.retrievals, row.chats) == (40, 40)


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_share_the_last_of_a_quota_exactly(make_pack, alice):
    lic = svc.licence_grant(pack=released(make_pack, quota_per_period=10).pack, holder_user=alice)
    granted = _run(8, lambda: usage_add(licence=lic, retrievals=3))
    assert sum(granted) == 10
    assert LicenceUsage.objects.get(licence=lic).retrievals == 10


@pytest.mark.django_db(transaction=True)
def test_concurrent_reads_through_the_vault_are_each_counted(make_pack, alice):
    from vault.selectors import memory_get

    release = released(make_pack)
    lic = svc.licence_grant(pack=release.pack, holder_user=alice)
    inst = install(alice, release, lic)
    cube_id = MemCube.objects.filter(namespace=inst.namespace).values_list("pk", flat=True).first()

    def three() -> int:
        for _ in range(3):
            memory_get(actor=Subject(user=alice), cube_id=cube_id)
        return 3

    assert sum(_run(6, three)) == 18
    assert LicenceUsage.objects.get(licence=Licence.objects.get(pk=lic.pk)).retrievals == 18
