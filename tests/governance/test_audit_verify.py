"""`manage.py audit_verify` finds an edited, a deleted, a reordered and a truncated audit row in any
namespace's chain (edited with raw SQL, the way someone with database access would), names the chain
and the first broken link, and exits non-zero."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from governance.audit import LEGACY_CHAIN, audit_head, audit_record, audit_verify, event_hash
from governance.models import AuditChainHead, AuditEvent

pytestmark = pytest.mark.django_db

TABLE = AuditEvent._meta.db_table
HEADS = AuditChainHead._meta.db_table


@pytest.fixture
def chain(alice, bob):
    """Six entries in alice's namespace chain, interleaved with three in bob's."""
    ns_a, ns_b = alice.namespaces.get(), bob.namespaces.get()
    for i in range(6):
        audit_record(
            actor=alice,
            operation="memory.read",
            namespace=ns_a,
            object_type="memory",
            object_ids=[f"m{i}"],
            details={"i": i},
        )
        if i % 2:
            audit_record(actor=bob, operation="memory.read", namespace=ns_b, details={"i": i})
    return f"ns/{ns_a.pk}"


def verify_fails() -> str:
    with pytest.raises(CommandError) as excinfo:
        call_command("audit_verify", stdout=StringIO())
    return str(excinfo.value)


def sql(statement: str, params: list) -> None:
    with connection.cursor() as cur:
        cur.execute(statement, params)


def test_every_namespace_has_its_own_chain(chain, bob):
    bob_chain = f"ns/{bob.namespaces.get().pk}"
    assert list(AuditEvent.objects.filter(chain=chain).values_list("chain_seq", flat=True)) == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]
    assert list(AuditEvent.objects.filter(chain=bob_chain).values_list("chain_seq", flat=True)) == [1, 2, 3]
    first = AuditEvent.objects.filter(chain=bob_chain).order_by("chain_seq").first()
    assert first is not None and first.prev_hash == "0" * 64


def test_an_intact_log_verifies(chain):
    out = StringIO()
    call_command("audit_verify", "--print-head", stdout=out)
    text = out.getvalue()
    assert "intact: 9 entries in 2 chains" in text
    last = AuditEvent.objects.filter(chain=chain).order_by("-chain_seq").first()
    assert f"{chain}:6:{last.hash}" in text
    entries, root = audit_head()
    assert entries == 9 and f"9:{root}" in text


def test_an_edited_row_is_found(chain):
    edit = f"UPDATE {TABLE} SET details = %s WHERE chain = %s AND chain_seq = 3"  # noqa: S608
    sql(edit, [json.dumps({"i": 999}), chain])
    message = verify_fails()
    assert f"chain {chain}, entry 3" in message and "edited" in message


def test_an_edited_actor_or_visibility_is_found(chain, bob):
    sql(f"UPDATE {TABLE} SET actor_label = %s WHERE chain = %s AND chain_seq = 4", ["mallory", chain])  # noqa: S608
    assert "entry 4" in verify_fails()
    sql(f"UPDATE {TABLE} SET actor_label = %s WHERE chain = %s AND chain_seq = 4", ["alice", chain])  # noqa: S608
    assert audit_verify() is None
    # hiding an entry from the namespace's owner by re-pointing it is tampering too
    sql(f"UPDATE {TABLE} SET owner_user_id = %s WHERE chain = %s AND chain_seq = 2", [bob.pk, chain])  # noqa: S608
    assert "entry 2" in verify_fails()


def test_a_deleted_row_is_found(chain):
    sql(f"DELETE FROM {TABLE} WHERE chain = %s AND chain_seq = 2", [chain])  # noqa: S608
    assert "entry 2 is missing" in verify_fails()


def test_a_deleted_last_row_is_found_against_the_head(chain):
    sql(f"DELETE FROM {TABLE} WHERE chain = %s AND chain_seq = 6", [chain])  # noqa: S608
    message = verify_fails()
    assert f"chain {chain}, entry 6" in message and "removed from the end" in message


def test_a_deleted_head_is_found(chain):
    sql(f"DELETE FROM {HEADS} WHERE chain = %s", [chain])  # noqa: S608
    assert "no head" in verify_fails()


def test_reordered_rows_are_found(chain):
    # swap the positions of entries 4 and 5 (through a free position, since positions are unique)
    for src, dst in ((4, -1), (5, 4), (-1, 5)):
        sql(f"UPDATE {TABLE} SET chain_seq = %s WHERE chain = %s AND chain_seq = %s", [dst, chain, src])  # noqa: S608
    message = verify_fails()
    assert "entry 4" in message and "previous-hash link" in message


def test_a_row_moved_to_another_chain_is_found(chain, bob):
    bob_chain = f"ns/{bob.namespaces.get().pk}"
    move = f"UPDATE {TABLE} SET chain = %s, chain_seq = 4 WHERE chain = %s AND chain_seq = 6"  # noqa: S608
    sql(move, [bob_chain, chain])
    message = verify_fails()
    assert bob_chain in message or chain in message


def test_renumbered_rows_after_a_deletion_are_found(chain):
    # hide a deletion by closing the gap (and fixing the head): the links no longer line up
    sql(f"DELETE FROM {TABLE} WHERE chain = %s AND chain_seq = 3", [chain])  # noqa: S608
    for seq in (4, 5, 6):
        sql(f"UPDATE {TABLE} SET chain_seq = %s WHERE chain = %s AND chain_seq = %s", [seq - 1, chain, seq])  # noqa: S608
    AuditChainHead.objects.filter(chain=chain).update(seq=5)
    assert "entry 3" in verify_fails()


def _rewrite_from(chain: str, seq: int) -> None:
    """What a forger with database access does: edit entry `seq` and recompute every hash after it,
    head included, so the chain is internally consistent again."""
    sql(f"UPDATE {TABLE} SET actor_label = %s WHERE chain = %s AND chain_seq = %s", ["mallory", chain, seq])  # noqa: S608
    prev = AuditEvent.objects.get(chain=chain, chain_seq=seq - 1).hash
    for event in AuditEvent.objects.filter(chain=chain, chain_seq__gte=seq).order_by("chain_seq"):
        event.prev_hash = prev
        event.hash = event_hash(event)
        AuditEvent.objects.filter(pk=event.pk).update(prev_hash=event.prev_hash, hash=event.hash)
        prev = event.hash
    AuditChainHead.objects.filter(chain=chain).update(hash=prev)


def test_a_chain_rewritten_wholesale_is_caught_by_a_published_head(chain):
    seq, digest = audit_head(chain=chain)
    _rewrite_from(chain, 2)
    assert audit_verify() is None  # internally consistent...
    broken = audit_verify(anchor=(chain, seq, digest))  # ...but not what was published
    assert broken is not None and broken.seq == seq and broken.chain == chain
    with pytest.raises(CommandError, match="anchor"):
        call_command("audit_verify", f"--anchor={chain}:{seq}:{digest}", stdout=StringIO())


def test_one_chain_can_be_verified_alone(chain, bob):
    bob_chain = f"ns/{bob.namespaces.get().pk}"
    sql(f"UPDATE {TABLE} SET details = %s WHERE chain = %s AND chain_seq = 1", ["{}", chain])  # noqa: S608
    assert audit_verify(chain=bob_chain) is None
    assert audit_verify(chain=chain) is not None
    out = StringIO()
    call_command("audit_verify", f"--chain={bob_chain}", stdout=out)
    assert "3 entries in 1 chains" in out.getvalue()


def test_entries_from_before_chains_still_verify(alice):
    """Entries written by the single-chain log (the `legacy` chain after the migration) keep their
    original hashes and verify beside the new chains."""
    from django.utils import timezone

    prev = "0" * 64
    for seq in (1, 2, 3):
        event = AuditEvent(
            chain=LEGACY_CHAIN,
            chain_seq=seq,
            at=timezone.now(),
            actor=alice,
            actor_label="alice",
            operation="memory.read",
            details={"i": seq},
            prev_hash=prev,
        )
        event.hash = event_hash(event)
        event.save()
        prev = event.hash
    AuditChainHead.objects.create(chain=LEGACY_CHAIN, seq=3, hash=prev)
    audit_record(actor=alice, operation="memory.read", namespace=alice.namespaces.get())
    assert audit_verify() is None
    sql(f"UPDATE {TABLE} SET details = %s WHERE chain = %s AND chain_seq = 2", ["{}", LEGACY_CHAIN])  # noqa: S608
    broken = audit_verify()
    assert broken is not None and broken.chain == LEGACY_CHAIN and broken.seq == 2


def test_a_malformed_anchor_is_refused(chain):
    with pytest.raises(CommandError, match="CHAIN:SEQ:HASH"):
        call_command("audit_verify", "--anchor=yesterday", stdout=StringIO())


def test_the_daily_task_reports_a_break(chain):
    from governance.tasks import audit_verify as task

    assert task.delay().get() == {"ok": True}
    sql(f"UPDATE {TABLE} SET operation = %s WHERE chain = %s AND chain_seq = 1", ["memory.nothing", chain])  # noqa: S608
    result = task.delay().get()
    assert result["ok"] is False and result["seq"] == 1 and result["chain"] == chain
