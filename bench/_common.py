"""Shared set-up for the vault benchmarks: a throwaway Django + milvus-lite environment, and statistics.

Each benchmark runs against its own temporary data directory (SQLite database, milvus-lite data) and
its own `milvus-lite server` process, so it never touches a developer's `var/` or a running instance.
The ONNX export cache is shared (repo `var/models` unless MEMHUB_EMBEDDING_CACHE_DIR is set): exporting
is a one-off cost, not part of what is measured.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def latency_summary(ms: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(ms, 50), 2),
        "p95": round(percentile(ms, 95), 2),
        "p99": round(percentile(ms, 99), 2),
        "mean": round(statistics.fmean(ms), 2) if ms else 0.0,
    }


def machine() -> dict[str, Any]:
    """Context for the figures: the load average matters on a shared two-core machine."""
    load = os.getloadavg()
    return {"cpus": os.cpu_count(), "loadavg_1m": round(load[0], 2), "python": sys.version.split()[0]}


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result, indent=None, sort_keys=False))


@contextlib.contextmanager
def vault_environment(
    *, settings_module: str = "config.settings.local", keep: bool = False, collection_prefix: str = "bench"
) -> Iterator[dict[str, Any]]:
    """Configure and set up Django on a temporary data dir with its own milvus-lite server.

    Environment variables already set by the caller (DATABASE_URL, MILVUS_URI, ...) win, so the same
    script can measure a PostgreSQL or Milvus standalone deployment.
    """
    data_dir = Path(tempfile.mkdtemp(prefix="memhub-bench-"))
    server = None
    try:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", settings_module)
        os.environ.setdefault("MEMHUB_DATA_DIR", str(data_dir))
        os.environ.setdefault("MEMHUB_EMBEDDING_CACHE_DIR", str(REPO / "var" / "models"))
        os.environ.setdefault("MILVUS_COLLECTION_PREFIX", collection_prefix)
        os.environ.setdefault("CELERY_BROKER_URL", "memory://")  # the bench drains the outbox itself
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if "MILVUS_URI" not in os.environ:
            from vault.milvus_server import MilvusLiteServer

            # One index-build thread: a multi-threaded HNSW build is not deterministic, and the figures
            # must be reproducible run to run.
            omp = os.environ.get("OMP_NUM_THREADS")
            os.environ["OMP_NUM_THREADS"] = "1"
            try:
                server = MilvusLiteServer(data_dir / "milvus").start()
            finally:
                if omp is None:
                    os.environ.pop("OMP_NUM_THREADS", None)
                else:
                    os.environ["OMP_NUM_THREADS"] = omp
            os.environ["MILVUS_URI"] = server.uri

        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)
        yield {"data_dir": str(data_dir), "milvus_uri": os.environ["MILVUS_URI"]}
    finally:
        with contextlib.suppress(Exception):
            from vault.index import reset_index_cache

            reset_index_cache()
        if server is not None:
            server.stop()
        if not keep:
            shutil.rmtree(data_dir, ignore_errors=True)


class Timer:
    def __init__(self) -> None:
        self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started


def make_tenant(username: str) -> tuple[Any, Any, Any]:
    """A user with their private namespace: (user, namespace, Subject)."""
    from accounts.models import Namespace
    from accounts.services import user_create
    from governance.policy import Subject

    user = user_create(username=username)
    namespace = Namespace.objects.get(owner_user=user, key=f"user:{username}")
    return user, namespace, Subject(user=user)


def drain_outbox() -> int:
    from vault.services import index_outbox_process

    return index_outbox_process()


# ── Synthetic memories ─────────────────────────────────────────────────────────────────────────────

_NAMES = (
    "Ada Bela Chen Dara Emil Farah Goran Hana Ivo Jun Kira Lars Mina Noor Omar Pia Quinn Rui Sana Tomas Uma "
    "Vera Wen Xavi Yara Zane"
).split()
_VERBS = (
    "visited booked cancelled repaired painted bought sold planned finished started joined left cooked read "
    "wrote fixed ordered returned borrowed lent organised photographed adopted trained"
).split()
_ADJECTIVES = "old new red small large quiet busy broken shiny cheap rare local favourite shared".split()
_NOUNS = (
    "bicycle kitchen garden piano laptop invoice contract recipe museum concert apartment car camera novel "
    "workshop tournament marathon puppy painting guitar telescope boat tent passport ticket report"
).split()
_PLACES = "Lisbon Oslo Nairobi Kyoto Lima Austin Porto Vilnius Hanoi Tromso Cusco Ghent".split()
_REASONS = (
    "because the old one stopped working|for the family reunion|to prepare for the spring exam|"
    "after a long discussion with the team|since the price finally dropped|as a birthday surprise|"
    "to keep a promise made last year|because the weather was perfect"
).split("|")


def synthetic_memory(rng: Any, i: int) -> str:
    """A plausible one-sentence memory (15-30 words); varied enough for realistic embedding cost."""
    name, verb = rng.choice(_NAMES), rng.choice(_VERBS)
    thing = f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"
    place, reason = rng.choice(_PLACES), rng.choice(_REASONS)
    day = 1 + int(rng.integers(0, 28))
    extra = f" Reference {i:07d}." if rng.random() < 0.3 else ""
    return f"{name} {verb} the {thing} in {place} on day {day} {reason}.{extra}"


def synthetic_query(rng: Any) -> str:
    return f"What did {rng.choice(_NAMES)} do with the {rng.choice(_NOUNS)} in {rng.choice(_PLACES)}?"
