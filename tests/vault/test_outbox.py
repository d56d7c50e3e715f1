"""The index follows the database through the outbox; failures stay visible and are retried."""

import json

import pytest
from django.core.management import call_command

from governance.policy import Subject
from vault import services
from vault.index import get_index, reset_index_cache
from vault.models import IndexOutbox, MemCube
from vault.selectors import memory_search

pytestmark = pytest.mark.django_db


def test_outbox_rows_are_written_with_the_change_and_drained_once(alice):
    services.memory_create(actor=Subject(user=alice), namespace_key="user:alice", data={"text": "a fact"})
    assert IndexOutbox.objects.filter(processed_at__isnull=True).count() == 1
    assert services.index_outbox_process() == 1
    assert services.index_outbox_process() == 0  # idempotent: nothing left


def test_index_outage_leaves_rows_pending_with_the_error(alice, settings, capsys):
    services.memory_create(actor=Subject(user=alice), namespace_key="user:alice", data={"text": "a fact"})
    settings.MILVUS_URI = "http://127.0.0.1:9"  # nothing listens there
    reset_index_cache()
    assert services.index_outbox_process() == 0  # no exception: the row waits for its next attempt
    row = IndexOutbox.objects.get()
    assert row.processed_at is None and row.attempts == 1 and row.last_error
    assert row.next_attempt_at is not None and row.dead_lettered_at is None
    call_command("vault_status")
    report = json.loads(capsys.readouterr().out)
    assert report["pending"] == 1 and report["waiting_retry"] == 1 and report["last_error"]
    assert report["dead_letters"] == 0


def test_reindex_skips_a_poison_memory_and_queues_it(alice, index_now):
    subject = Subject(user=alice)
    good, bad = services.memory_create_batch(
        actor=subject,
        namespace_key="user:alice",
        items=[{"text": "Oslo is cold."}, {"text": "Bergen is wet."}],
    )
    index_now()
    MemCube.objects.filter(pk=bad.pk).update(tags=["tab\there"])
    assert services.vault_reindex() >= 1
    assert IndexOutbox.objects.filter(cube_id=bad.id, processed_at__isnull=True).exists()
    assert not IndexOutbox.objects.filter(cube_id=good.id, processed_at__isnull=True).exists()


def test_reindex_rebuilds_from_the_database(alice, milvus_uri, settings):
    subject = Subject(user=alice)
    services.memory_create_batch(
        actor=subject,
        namespace_key="user:alice",
        items=[{"text": "Lisbon is the capital of Portugal."}, {"text": "Oslo is cold."}],
    )
    call_command("vault_reindex", "--drop")
    assert IndexOutbox.objects.filter(processed_at__isnull=True).count() == 0
    hits = memory_search(actor=subject, query="capital of Portugal", top_k=1).results
    assert hits[0].memory.text.startswith("Lisbon")
    assert get_index().count() >= 2
