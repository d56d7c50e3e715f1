"""The embedded default under concurrency: two writer processes and a worker draining the index outbox
share one SQLite file. With deferred transactions about 2 in 1,000 writes failed with "database is
locked"; with WAL, BEGIN IMMEDIATE and a busy timeout none may fail."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.conf import settings

from tests.django_scripts import clean_env, result, start

WRITER = """
import json, sys, django
django.setup()
from accounts.models import User
from governance.audit import audit_record
from governance.policy import Subject
from vault import services
user = User.objects.get(username=sys.argv[1])
subject = Subject(user=user)
errors, done = [], 0
for i in range(int(sys.argv[2])):
    try:
        cube = services.memory_create(
            actor=subject, namespace_key=f"user:{user.username}",
            data={"text": f"{user.username} note {i}: the tram depot opens at {i % 24}:00.", "tags": ["t"]},
        )
        audit_record(
            actor=subject, operation="memory.read", namespace=cube.namespace, object_ids=[str(cube.pk)]
        )
        done += 1
    except Exception as exc:  # every failure is the finding
        errors.append(f"{type(exc).__name__}: {exc}")
print(json.dumps({"done": done, "errors": errors[:5], "error_count": len(errors)}))
"""

DRAINER = """
import json, os, sys, time, django
django.setup()
from vault.services import index_outbox_process
errors, indexed = [], 0
stop = sys.argv[1]
deadline = time.monotonic() + 240
while time.monotonic() < deadline:
    finished = os.path.exists(stop)
    try:
        indexed += index_outbox_process(batch_size=16)
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    if finished:
        break
    time.sleep(0.05)
print(json.dumps({"indexed": indexed, "errors": errors[:5], "error_count": len(errors)}))
"""

SETUP = """
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from accounts import services
for name in ("writer-a", "writer-b"):
    services.user_create(username=name, password="concurrency-pass-123")
print("{}")
"""

COUNT = """
import json, django
django.setup()
from vault.models import MemCube
from django.db import connection
with connection.cursor() as cur:
    cur.execute("PRAGMA journal_mode")
    mode = cur.fetchone()[0]
print(json.dumps({"cubes": MemCube.objects.count(), "journal_mode": mode}))
"""


def _env(tmp_path: Path, milvus_uri: str) -> dict[str, str]:
    return clean_env(
        DJANGO_SETTINGS_MODULE="config.settings.local",
        MEMHUB_DATA_DIR=str(tmp_path),
        MEMHUB_EMBEDDING_CACHE_DIR=str(settings.EMBEDDING_CACHE_DIR),
        MILVUS_URI=milvus_uri,
        MILVUS_COLLECTION_PREFIX=f"sqlite_conc_{os.getpid()}",
        CELERY_BROKER_URL="memory://",
        CELERY_BROKER_TRANSPORT_OPTIONS="{}",
    )


@pytest.mark.slow
def test_two_writer_processes_and_the_outbox_worker_never_hit_database_is_locked(tmp_path, milvus_uri):
    env = _env(tmp_path, milvus_uri)
    result(start(SETUP, env))
    stop = tmp_path / "stop"
    drainer = start(DRAINER, env, str(stop))
    writers = [start(WRITER, env, name, "150") for name in ("writer-a", "writer-b")]
    results = [result(w) for w in writers]
    stop.touch()
    drained = result(drainer)

    for r in results:
        assert r["error_count"] == 0, r["errors"]
        assert r["done"] == 150
    assert drained["error_count"] == 0, drained["errors"]
    counted = result(start(COUNT, env))
    assert counted == {"cubes": 300, "journal_mode": "wal"}
