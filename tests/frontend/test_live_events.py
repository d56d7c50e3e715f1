"""The live feed's catch-up query: late commits are delivered, nothing is delivered twice."""

import pytest

from frontend.consumers import events_after
from governance.models import AuditEvent
from governance.policy import Subject
from vault.services import memory_create

pytestmark = pytest.mark.django_db


def test_an_entry_that_commits_late_with_a_lower_seq_is_still_delivered_once(make_user):
    # seq comes from the database without a global lock: a slow transaction can commit an entry whose
    # seq is lower than one the page already showed.
    alice = make_user("alice")
    early = memory_create(actor=Subject(user=alice), namespace_key="user:alice", data={"text": "one"})
    later = memory_create(actor=Subject(user=alice), namespace_key="user:alice", data={"text": "two"})
    seqs = list(
        AuditEvent.objects.filter(namespace_key="user:alice").order_by("seq").values_list("seq", flat=True)
    )
    assert early and later and len(seqs) >= 2
    first, last = seqs[0], seqs[-1]
    # the page has shown the last entry only (the first one "committed late")
    found = events_after(alice, last, floor=0, sent=frozenset({last}))
    assert [e["seq"] for e in found] == seqs[:-1]
    # once shown, it is not sent again
    assert events_after(alice, last, floor=0, sent=frozenset(seqs)) == []
    # and nothing at or below the cursor a reconnecting client gave is replayed
    assert events_after(alice, last, floor=last, sent=frozenset({last})) == []
    assert first < last
