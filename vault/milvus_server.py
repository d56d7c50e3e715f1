"""Run a `milvus-lite server` process: the embedded default's vector store, reached by URI like Milvus.

milvus-lite allows one process per data directory, so the web server, the Celery worker and tools all
talk to this one process over gRPC instead of opening the directory themselves.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


class MilvusLiteServer:
    """A `milvus-lite server` child process bound to 127.0.0.1."""

    def __init__(self, data_dir: Path | str, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _command(self) -> list[str]:
        exe = shutil.which("milvus-lite", path=str(Path(sys.executable).parent))
        base = [exe] if exe else [sys.executable, "-m", "milvus_lite"]
        return [
            *base,
            "server",
            "--data-dir",
            str(self.data_dir),
            "--host",
            self.host,
            "--port",
            str(self.port),
        ]

    def start(self, timeout: float = 60.0) -> MilvusLiteServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self._command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # noqa: S603
        if not wait_for_port(self.host, self.port, timeout):
            self.stop()
            raise RuntimeError(f"milvus-lite server did not start on {self.uri} within {timeout:.0f}s")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> MilvusLiteServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
