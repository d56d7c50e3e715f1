"""`make run`: the whole platform on the embedded default, in one command.

Starts a milvus-lite server process, a Celery worker (with beat) on kombu's filesystem broker and the
ASGI server on 127.0.0.1:8000, after migrating and loading demo data. Ctrl-C stops every process it
started. WebSocket consumers follow the durable log in the database, so events a worker process writes
reach the browser even though the in-process channel layer does not cross processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from vault.milvus_server import MilvusLiteServer


class Command(BaseCommand):
    help = "Run MemHub on the embedded default (SQLite, milvus-lite, filesystem broker, ASGI server)."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--host", default=os.environ.get("MEMHUB_HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("MEMHUB_PORT", "8000")))
        parser.add_argument(
            "--milvus-port", type=int, default=int(os.environ.get("MEMHUB_MILVUS_PORT", "19530"))
        )
        parser.add_argument("--no-demo", action="store_true", help="skip demo data")

    def handle(self, *args: Any, **opts: Any) -> None:
        data_dir = Path(settings.DATA_DIR)
        for sub in ("broker/out", "broker/control", "milvus", "models", "static", "celery"):
            (data_dir / sub).mkdir(parents=True, exist_ok=True)
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        if not opts["no_demo"]:
            call_command("seed_demo")

        procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        milvus = MilvusLiteServer(data_dir / "milvus", port=int(opts["milvus_port"]))
        env = {
            **os.environ,
            "MILVUS_URI": milvus.uri,
            "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE", "config.settings.local"),
        }

        def stop() -> None:
            for name, proc in reversed(procs):
                if proc.poll() is None:
                    self.stdout.write(f"stopping {name}")
                    proc.terminate()
            for _name, proc in procs:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            milvus.stop()

        try:
            self.stdout.write(f"starting milvus-lite server on {milvus.uri}")
            milvus.start()
            py = sys.executable
            procs.append(
                (
                    "celery worker",
                    subprocess.Popen(  # noqa: S603
                        [
                            py,
                            "-m",
                            "celery",
                            "-A",
                            "config",
                            "worker",
                            "-B",
                            "--pool=solo",
                            "-Q",
                            "default,inference",
                            "--loglevel=INFO",
                            "--schedule",
                            str(data_dir / "celery" / "beat-schedule"),
                        ],
                        env=env,
                    ),
                )
            )
            procs.append(
                (
                    "web",
                    subprocess.Popen(  # noqa: S603
                        [
                            py,
                            "-m",
                            "uvicorn",
                            "config.asgi:application",
                            "--host",
                            str(opts["host"]),
                            "--port",
                            str(opts["port"]),
                            "--log-level",
                            "info",
                        ],
                        env=env,
                    ),
                )
            )
            base = f"http://{opts['host']}:{opts['port']}"
            self.stdout.write(
                self.style.SUCCESS(
                    f"\nMemHub is starting on {base}\n"
                    f"  pages:    {base}/            (log in as demo / "
                    f"{os.environ.get('MEMHUB_DEMO_PASSWORD', 'memhub-demo-password')})\n"
                    f"  API docs: {base}/api/docs/\n"
                    f"  Ctrl-C stops everything.\n"
                )
            )
            signal.signal(signal.SIGTERM, _raise_interrupt)
            while all(p.poll() is None for _, p in procs):
                time.sleep(0.5)
            dead = [name for name, p in procs if p.poll() is not None]
            self.stderr.write(f"{', '.join(dead)} exited; stopping the rest")
        except KeyboardInterrupt:
            pass
        finally:
            stop()


def _raise_interrupt(*_: object) -> None:
    """SIGTERM stops the platform the same way Ctrl-C does."""
    raise KeyboardInterrupt
