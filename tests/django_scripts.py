"""Run a snippet of Django code in a separate process, as another MemHub process (web, worker) would,
and read back the JSON object it prints last."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def clean_env(**overrides: str) -> dict[str, str]:
    """This environment without the test run's Django, database and Redis settings, plus `overrides`."""
    skip = ("DJANGO_", "DATABASE_URL", "REDIS_URL")
    return {**{k: v for k, v in os.environ.items() if not k.startswith(skip)}, **overrides}


def start(code: str, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def result(proc: subprocess.Popen[str], timeout: float = 300) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])
