"""Tenants do not queue behind each other's audit trail: a writer holds only its own namespace's chain
head, so an append to another namespace goes through while it is held, and appends to the same chain
wait their turn. Many concurrent writers, on PostgreSQL and from two processes on SQLite, leave every
chain without gaps or forks."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, transaction

from governance.audit import audit_record, audit_verify
from governance.models import AuditChainHead, AuditEvent
from tests.django_scripts import clean_env, result, start


def _in_thread(fn, *args):  # type: ignore[no-untyped-def]
    """Run fn on its own database connection (as another web process would); collect its error."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn(*args)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def _waiting_on_a_lock() -> bool:
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        return cur.fetchone()[0] > 0


@pytest.mark.django_db(transaction=True)
def test_a_held_chain_does_not_stop_other_namespaces(alice, bob):
    ns_a, ns_b = alice.namespaces.get(), bob.namespaces.get()
    holding, release = threading.Event(), threading.Event()

    def hold_alices_chain() -> None:
        with transaction.atomic():
            audit_record(actor=alice, operation="memory.update", namespace=ns_a)
            holding.set()
            assert release.wait(60)

    holder, holder_errors = _in_thread(hold_alices_chain)
    try:
        assert holding.wait(30)
        # given alice's chain head is locked by an open transaction,
        # when bob's reads are audited, then they go through at once
        other, other_errors = _in_thread(
            lambda: [audit_record(actor=bob, operation="memory.read", namespace=ns_b) for _ in range(3)]
        )
        other.join(30)
        assert not other.is_alive() and not other_errors, "bob's appends waited for alice's chain"
        # and an append to alice's own chain waits for the holder
        same, same_errors = _in_thread(
            lambda: audit_record(actor=alice, operation="memory.read", namespace=ns_a)
        )
        deadline = time.monotonic() + 30
        while not _waiting_on_a_lock() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert same.is_alive() and _waiting_on_a_lock()
    finally:
        release.set()
        holder.join(30)
    same.join(30)
    assert not holder_errors and not same_errors and not same.is_alive()
    a_chain = list(
        AuditEvent.objects.filter(chain=f"ns/{ns_a.pk}")
        .order_by("chain_seq")
        .values_list("operation", flat=True)
    )
    assert a_chain == ["memory.update", "memory.read"]
    assert AuditEvent.objects.filter(chain=f"ns/{ns_b.pk}").count() == 3
    assert audit_verify() is None


@pytest.mark.django_db(transaction=True)
def test_many_concurrent_writers_leave_valid_chains(make_user):
    users = [make_user(f"writer{i}") for i in range(6)]
    shared = users[0].namespaces.get()
    start = threading.Barrier(len(users))

    def write(user) -> None:  # type: ignore[no-untyped-def]
        own = user.namespaces.get()
        start.wait(30)
        for i in range(15):
            audit_record(actor=user, operation="memory.read", namespace=own, details={"i": i})
            audit_record(actor=user, operation="memory.read", namespace=shared, details={"i": i})
            audit_record(actor=None, operation="system.tick", details={"i": i})  # one chain for all

    threads = [_in_thread(write, u) for u in users]
    for thread, _ in threads:
        thread.join(120)
    assert all(not t.is_alive() and not errs for t, errs in threads), [e for _, errs in threads for e in errs]
    assert audit_verify() is None
    shared_chain = f"ns/{shared.pk}"
    seqs = list(
        AuditEvent.objects.filter(chain=shared_chain)
        .order_by("chain_seq")
        .values_list("chain_seq", flat=True)
    )
    assert seqs == list(range(1, 6 * 15 + 15 + 1))  # the owner's own entries plus everyone's
    assert AuditChainHead.objects.get(chain="system").seq == 6 * 15


WRITER = """
import json, sys, django
django.setup()
from governance.audit import audit_record
from governance.policy import Subject
from accounts.models import Namespace
shared = Namespace.objects.get(key="user:shared-ns")
own = Namespace.objects.get(key=f"user:{sys.argv[1]}")
errors = []
for i in range(int(sys.argv[2])):
    for ns in (shared, own):
        try:
            audit_record(actor=Subject.system(sys.argv[1]), operation="memory.read", namespace=ns)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
print(json.dumps({"errors": errors[:5], "error_count": len(errors)}))
"""

SETUP = """
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from accounts import services
for name in ("shared-ns", "proc-a", "proc-b"):
    services.user_create(username=name, password="concurrency-pass-123")
print("{}")
"""

CHECK = """
import json, django
django.setup()
from governance.audit import audit_verify
from governance.models import AuditEvent
from accounts.models import Namespace
shared = Namespace.objects.get(key="user:shared-ns")
broken = audit_verify()
shared_entries = AuditEvent.objects.filter(chain=f"ns/{shared.pk}").order_by("chain_seq")
seqs = list(shared_entries.values_list("chain_seq", flat=True))
print(json.dumps({"broken": str(broken) if broken else None, "shared": seqs}))
"""


@pytest.mark.slow
def test_two_processes_on_sqlite_never_write_the_same_position(tmp_path):
    """The embedded default: the web process and the worker share one SQLite file and one chain."""
    env = clean_env(
        DJANGO_SETTINGS_MODULE="config.settings.local",
        MEMHUB_DATA_DIR=str(tmp_path),
        CELERY_BROKER_URL="memory://",
        MILVUS_URI="http://127.0.0.1:9",
    )
    result(start(SETUP, env))
    writers = [start(WRITER, env, name, "60") for name in ("proc-a", "proc-b")]
    for writer in writers:
        written = result(writer)
        assert written["error_count"] == 0, written["errors"]
    checked = result(start(CHECK, env))
    assert checked == {"broken": None, "shared": list(range(1, 121))}
