"""`manage.py audit_verify` finds an edited, a deleted and a reordered audit row (edited with raw SQL, the
way someone with database access would), names the first broken link and exits non-zero."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from governance.audit import audit_head, audit_record, audit_verify, event_hash
from governance.models import AuditChainHead, AuditEvent

pytestmark = pytest.mark.django_db

TABLE = AuditEvent._meta.db_table


@pytest.fixture
def chain(alice):
    for i in range(6):
        audit_record(
            actor=alice, operation="memory.read", object_type="memory", object_ids=[f"m{i}"], details={"i": i}
        )
    return list(AuditEvent.objects.order_by("seq"))


def verify_fails() -> str:
    with pytest.raises(CommandError) as excinfo:
        call_command("audit_verify", stdout=StringIO())
    return str(excinfo.value)


def sql(statement: str, params: list) -> None:
    with connection.cursor() as cur:
        cur.execute(statement, params)


def test_an_intact_chain_verifies(chain):
    out = StringIO()
    call_command("audit_verify", "--print-head", stdout=out)
    text = out.getvalue()
    assert "intact: 6 entries" in text
    assert f"6:{chain[-1].hash}" in text


def test_an_edited_row_is_found(chain):
    sql(f"UPDATE {TABLE} SET details = %s WHERE seq = 3", [json.dumps({"i": 999})])  # noqa: S608
    message = verify_fails()
    assert "entry 3" in message and "edited" in message


def test_an_edited_actor_or_time_is_found(chain):
    sql(f"UPDATE {TABLE} SET actor_label = %s WHERE seq = 4", ["mallory"])  # noqa: S608
    assert "entry 4" in verify_fails()


def test_a_deleted_row_is_found(chain):
    sql(f"DELETE FROM {TABLE} WHERE seq = 2", [])  # noqa: S608
    message = verify_fails()
    assert "entry 2 is missing" in message


def test_a_deleted_last_row_is_found(chain):
    sql(f"DELETE FROM {TABLE} WHERE seq = 6", [])  # noqa: S608
    message = verify_fails()
    assert "entry 6" in message and "removed from the end" in message


def test_reordered_rows_are_found(chain):
    # swap the positions of entries 4 and 5 (through a free seq, since seq is unique)
    sql(f"UPDATE {TABLE} SET seq = -1 WHERE seq = 4", [])  # noqa: S608
    sql(f"UPDATE {TABLE} SET seq = 4 WHERE seq = 5", [])  # noqa: S608
    sql(f"UPDATE {TABLE} SET seq = 5 WHERE seq = -1", [])  # noqa: S608
    message = verify_fails()
    assert "entry 4" in message and "previous-hash link" in message


def test_renumbered_rows_after_a_deletion_are_found(chain):
    # hide a deletion by closing the gap: the links no longer line up
    sql(f"DELETE FROM {TABLE} WHERE seq = 3", [])  # noqa: S608
    for seq in (4, 5, 6):
        sql(f"UPDATE {TABLE} SET seq = %s WHERE seq = %s", [seq - 1, seq])  # noqa: S608
    message = verify_fails()
    assert "entry 3" in message


def test_a_chain_rewritten_wholesale_is_caught_by_an_anchor(chain):
    anchor_seq, anchor_hash = audit_head()
    # a forger edits entry 2 and recomputes every hash after it, head included
    sql(f"UPDATE {TABLE} SET actor_label = %s WHERE seq = 2", ["mallory"])  # noqa: S608
    prev = AuditEvent.objects.get(seq=1).hash
    for event in AuditEvent.objects.filter(seq__gte=2).order_by("seq"):
        event.prev_hash = prev
        event.hash = event_hash(event)
        AuditEvent.objects.filter(pk=event.pk).update(prev_hash=event.prev_hash, hash=event.hash)
        prev = event.hash
    AuditChainHead.objects.filter(pk=1).update(hash=prev)
    assert audit_verify() is None  # internally consistent...
    broken = audit_verify(anchor=(anchor_seq, anchor_hash))  # ...but not what was published
    assert broken is not None and broken.seq == anchor_seq
    with pytest.raises(CommandError, match="anchor"):
        call_command("audit_verify", f"--anchor={anchor_seq}:{anchor_hash}", stdout=StringIO())


def test_a_malformed_anchor_is_refused(chain):
    with pytest.raises(CommandError, match="SEQ:HASH"):
        call_command("audit_verify", "--anchor=yesterday", stdout=StringIO())


def test_the_daily_task_reports_a_break(chain):
    from governance.tasks import audit_verify as task

    assert task.delay().get() == {"ok": True}
    sql(f"UPDATE {TABLE} SET operation = %s WHERE seq = 1", ["memory.nothing"])  # noqa: S608
    assert task.delay().get()["seq"] == 1
