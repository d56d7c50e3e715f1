"""Settings come from the environment and fail fast with a clear message when misconfigured."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load(module: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_URL", "REDIS_URL"))
    }
    return subprocess.run(
        [
            sys.executable,
            "-c",
            f"import django, os; os.environ['DJANGO_SETTINGS_MODULE']='{module}'; "
            "django.setup(); from django.conf import settings; "
            "print(settings.DATABASES['default']['ENGINE'], settings.CHANNEL_LAYERS['default']['BACKEND'])",
        ],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_production_refuses_to_start_without_a_secret_key():
    out = load("config.settings.production", DATABASE_URL="postgres://u@h/db", REDIS_URL="redis://h:6379/0")
    assert out.returncode != 0 and "DJANGO_SECRET_KEY must be set" in out.stderr


def test_production_refuses_sqlite():
    out = load("config.settings.production", DJANGO_SECRET_KEY="x" * 50, REDIS_URL="redis://h:6379/0")
    assert out.returncode != 0 and "PostgreSQL" in out.stderr


def test_switching_to_scaled_out_is_settings_only():
    out = load(
        "config.settings.production",
        DJANGO_SECRET_KEY="x" * 50,
        DATABASE_URL="postgres://u@h/db",
        REDIS_URL="redis://h:6379/0",
    )
    assert out.returncode == 0, out.stderr
    assert "postgresql" in out.stdout and "RedisChannelLayer" in out.stdout


def test_embedded_default_uses_sqlite_and_in_process_layer(tmp_path):
    out = load("config.settings.local", MEMHUB_DATA_DIR=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "sqlite3" in out.stdout and "InMemoryChannelLayer" in out.stdout


def _setting(module: str, expr: str, **env: str) -> str:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_URL", "REDIS_URL"))
    }
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import django, os; os.environ['DJANGO_SETTINGS_MODULE']='{module}'; "
            f"django.setup(); from django.conf import settings; print({expr})",
        ],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_make_run_serves_no_debug_page_unless_asked(tmp_path):
    assert _setting("config.settings.local", "settings.DEBUG", MEMHUB_DATA_DIR=str(tmp_path)) == "False"
    asked = _setting(
        "config.settings.local", "settings.DEBUG", MEMHUB_DATA_DIR=str(tmp_path), DJANGO_DEBUG="1"
    )
    assert asked == "True"


def test_embedded_sqlite_takes_the_write_lock_up_front_and_waits_for_it(tmp_path):
    opts = _setting(
        "config.settings.local", "settings.DATABASES['default']['OPTIONS']", MEMHUB_DATA_DIR=str(tmp_path)
    )
    assert "'transaction_mode': 'IMMEDIATE'" in opts
    assert "journal_mode=WAL" in opts and "busy_timeout=30000" in opts


def test_scaled_out_throttle_counters_live_in_redis():
    backend = _setting(
        "config.settings.production",
        "settings.CACHES['throttle']['BACKEND']",
        DJANGO_SECRET_KEY="x" * 50,
        DATABASE_URL="postgres://u@h/db",
        REDIS_URL="redis://h:6379/0",
    )
    assert backend.endswith("RedisCache")
