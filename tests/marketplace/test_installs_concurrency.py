"""On PostgreSQL, two concurrent installs of one release by one user give one installation, no error."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections

from governance.policy import Subject
from marketplace.models import Installation, Licence
from marketplace.services import installs
from vault.models import MemCube


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_installs_give_one_installation(make_pack, alice):
    if connection.vendor != "postgresql":
        pytest.skip("row locks and the partial unique index are PostgreSQL's")
    pack = make_pack(slug="race", texts=("Tides turn every six hours.", "Pier 3 serves Tarsk."), release=True)
    release = pack.releases.get()
    barrier = threading.Barrier(2)
    results: list[object] = []

    def install() -> None:
        try:
            barrier.wait(timeout=10)
            results.append(installs.pack_install(actor=Subject(user=alice), release=release).pk)
        except Exception as exc:  # collected: the test asserts there were none
            results.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=install) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 2 and not [r for r in results if isinstance(r, Exception)], results
    assert len(set(results)) == 1
    assert Installation.objects.filter(user=alice).count() == 1
    assert Licence.objects.filter(pack=pack, holder_user=alice).count() == 1
    installation = Installation.objects.get()
    assert MemCube.objects.filter(namespace=installation.namespace, is_canary=False).count() == 2
