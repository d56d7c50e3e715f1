"""Audited reads under load: does one tenant's audit trail slow down another's? Prints one JSON object.

    .venv/bin/python bench/audit_load.py [--seconds 12] [--max-requests 6000] [--tenants 16]

It creates a fresh PostgreSQL database (DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/memhub_bench_audit; dropped first and again at the end), migrates it,
creates T tenants (a user, its private namespace, an API token and a few memories each), then starts the
real server twice: two `uvicorn config.asgi:application` processes on two loopback ports with
config.settings.local. Reading a memory by id (`GET /api/v1/memories/{id}`) is an audited read that
needs no vector index, so no milvus-lite server is started.

For 1, 4 and 16 concurrent clients (each with its own keep-alive connection; client i reads tenant
i mod T through web process i mod 2), every client reads its tenant's memories in a loop for at most
`--seconds` or until `--max-requests` requests were made in total, after a short warm-up. Each run
reports requests per second, p95 latency and errors (anything but 200). Afterwards `manage.py
audit_anchor` signs every chain's head and `manage.py audit_verify` checks everything written.
`appends` repeats the 1/4/16 runs for the audit append alone (`audit_record` from threads with a
database connection each, spread over the tenants' namespaces), which shows lock contention without
the web processes' CPU in the way. `load` says how busy the machine was
(it is shared: compare figures taken under similar load only).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, emit, percentile

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/memhub_bench_audit"


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _load() -> dict[str, Any]:
    one, five, fifteen = os.getloadavg()
    return {"cpus": os.cpu_count(), "loadavg": [round(one, 2), round(five, 2), round(fifteen, 2)]}


def _admin_url(url: str) -> tuple[str, str]:
    """(URL of the server's `postgres` database, name of the benchmark database)."""
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if not name.startswith("memhub_bench"):
        raise SystemExit(
            f"Refusing to drop '{name}': the benchmark database's name must start with memhub_bench."
        )
    return urlunsplit(parts._replace(scheme="postgresql", path="/postgres")), name


def _recreate_database(url: str, *, drop_only: bool = False) -> None:
    import psycopg

    admin, name = _admin_url(url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not drop_only:
            conn.execute(f'CREATE DATABASE "{name}"')


def _manage(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "manage.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=check,
        timeout=300,
    )


SETUP = r"""
import json, sys
import django
django.setup()
from accounts import services as accounts
from governance.policy import Subject
from vault import services as vault

tenants, per_tenant = int(sys.argv[1]), int(sys.argv[2])
out = []
for t in range(tenants):
    user = accounts.user_create(username=f"bench{t:02d}", password=None)
    _, raw = accounts.api_token_create(user=user, name="bench", scopes=["memories:read", "governance"])
    ns = user.namespaces.get().key
    ids = [
        str(vault.memory_create(
            actor=Subject(user=user),
            namespace_key=ns,
            data={"text": f"Tenant {t} keeps fact number {i}: the tram depot opens at {6 + i % 3}am."},
        ).id)
        for i in range(per_tenant)
    ]
    out.append({"token": raw, "ids": ids})
print(json.dumps(out))
"""


DIRECT = r"""
import json, sys, threading, time
import django
django.setup()
from django.db import connection
from accounts.models import User
from governance.audit import audit_record

counts, seconds = [int(c) for c in sys.argv[1].split(",")], float(sys.argv[2])
users = User.objects.filter(username__startswith="bench").order_by("username")
tenants = [(u, u.namespaces.get()) for u in users]
runs = []
for n in counts:
    done, errors = [0] * n, []
    go = threading.Barrier(n + 1)
    until = [0.0]

    def work(i):
        user, ns = tenants[i % len(tenants)]
        go.wait()
        try:
            while time.monotonic() < until[0]:
                audit_record(actor=user, operation="memory.read", namespace=ns, object_type="memory")
                done[i] += 1
        except Exception as exc:
            errors.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    until[0] = time.monotonic() + seconds
    start = time.perf_counter()
    go.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    runs.append({"threads": n, "appends_per_s": round(sum(done) / elapsed, 1), "errors": len(errors)})
print(json.dumps(runs))
"""


def _start_server(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as fh:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "config.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            cwd=REPO,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )


def _wait_ready(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"web process on port {port} did not come up within {timeout:.0f}s")


class Budget:
    """A shared request budget, so a run is bounded in count as well as in time."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.lock = threading.Lock()

    def take(self) -> bool:
        with self.lock:
            if self.left <= 0:
                return False
            self.left -= 1
            return True


def _client(
    port: int, tenant: dict[str, Any], until: float, budget: Budget, lat: list[float], errs: list[str]
) -> None:
    headers = {"Authorization": f"Bearer {tenant['token']}", "Connection": "keep-alive"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    i = 0
    while time.monotonic() < until and budget.take():
        cube = tenant["ids"][i % len(tenant["ids"])]
        i += 1
        start = time.perf_counter()
        try:
            conn.request("GET", f"/api/v1/memories/{cube}", headers=headers)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                errs.append(f"{response.status} {body[:200]!r}")
        except (OSError, http.client.HTTPException) as exc:
            errs.append(repr(exc))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            continue
        lat.append((time.perf_counter() - start) * 1000)
    conn.close()


def _run(
    clients: int, ports: list[int], tenants: list[dict[str, Any]], seconds: float, cap: int
) -> dict[str, Any]:
    lat: list[list[float]] = [[] for _ in range(clients)]
    errs: list[str] = []
    budget = Budget(cap)
    until = time.monotonic() + seconds
    threads = [
        threading.Thread(
            target=_client,
            args=(ports[i % len(ports)], tenants[i % len(tenants)], until, budget, lat[i], errs),
            daemon=True,
        )
        for i in range(clients)
    ]
    start = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - start
    all_ms = [ms for per in lat for ms in per]
    return {
        "clients": clients,
        "rps": round(len(all_ms) / elapsed, 1) if elapsed else 0.0,
        "p95_ms": round(percentile(all_ms, 95), 2),
        "errors": len(errs),
        "requests": len(all_ms) + len(errs),
        "seconds": round(elapsed, 2),
        **({"first_error": errs[0]} if errs else {}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=12.0, help="length of each run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured reads first")
    parser.add_argument("--max-requests", type=int, default=6000, help="cap per run")
    parser.add_argument("--tenants", type=int, default=16)
    parser.add_argument("--memories", type=int, default=5, help="memories per tenant")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument(
        "--append-seconds", type=float, default=5.0, help="length of each direct-append run (0: skip)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the database and logs")
    args = parser.parse_args(argv)

    url = os.environ.get("DATABASE_URL", DEFAULT_URL)
    tmp = Path(tempfile.mkdtemp(prefix="memhub-bench-audit-"))
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.local",
        "DATABASE_URL": url,
        "MEMHUB_DATA_DIR": str(tmp),
        "CELERY_BROKER_URL": "memory://",  # index outbox rows are written but not needed by reads by id
        "MILVUS_URI": "http://127.0.0.1:9",  # nothing here needs the index; fail fast if something tries
        "MEMHUB_THROTTLE_CHAT": "100000/min",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
    }
    load_before, uptime_before = _load(), _uptime()
    servers: list[subprocess.Popen[bytes]] = []
    result: dict[str, Any] = {}
    try:
        _recreate_database(url)
        _manage(env, "migrate", "--noinput", "-v", "0")
        setup = subprocess.run(
            [sys.executable, "-c", SETUP, str(args.tenants), str(args.memories)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if setup.returncode != 0:
            raise SystemExit(f"setting up tenants failed:\n{setup.stderr[-3000:]}")
        tenants = json.loads(setup.stdout.strip().splitlines()[-1])

        from vault.milvus_server import free_port

        ports = [free_port(), free_port()]
        servers = [_start_server(env, p, tmp / f"web{n}.log") for n, p in enumerate(ports)]
        for p in ports:
            _wait_ready(p)

        runs = []
        for clients in [int(c) for c in args.clients.split(",")]:
            _run(clients, ports, tenants, args.warmup, args.max_requests)  # warm-up, not measured
            runs.append(_run(clients, ports, tenants, args.seconds, args.max_requests))
        appends = None
        if args.append_seconds > 0:
            # The audit append alone, from threads with a connection each (no HTTP, no GIL-bound view):
            # shows whether appends for different tenants wait for one lock.
            direct = subprocess.run(
                [sys.executable, "-c", DIRECT, args.clients, str(args.append_seconds)],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                check=False,
                timeout=300,
            )
            appends = (
                json.loads(direct.stdout.strip().splitlines()[-1])
                if direct.returncode == 0
                else direct.stderr[-1000:]
            )
        anchored = _manage(env, "audit_anchor", check=False)  # sign every chain head, then verify all
        verify = _manage(env, "audit_verify", check=False)
        base = runs[0]["rps"] or 1.0
        result = {
            "runs": runs,
            "speedup_16_vs_1": round(next((r["rps"] for r in runs if r["clients"] == 16), 0.0) / base, 2),
            "audit_verify": "ok"
            if verify.returncode == 0
            else (verify.stderr or verify.stdout).strip()[-500:],
            "audit_verify_output": verify.stdout.strip()[-300:],
            "audit_anchor": (anchored.stdout or anchored.stderr).strip()[-300:],
            "appends": appends,
            "web_processes": len(ports),
            "tenants": args.tenants,
            "load": {"before": load_before, "after": _load(), "uptime": [uptime_before, _uptime()]},
        }
    finally:
        for proc in servers:
            proc.terminate()
        for proc in servers:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if servers and any(p.returncode not in (0, -15) for p in servers):
            for n in range(len(servers)):
                log = tmp / f"web{n}.log"
                if log.exists():
                    print(log.read_text()[-2000:], file=sys.stderr)
        if not args.keep:
            _recreate_database(url, drop_only=True)
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    emit(result)
    return 0 if result.get("audit_verify") == "ok" and not any(r["errors"] for r in result["runs"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
