"""Embedded default used by `make run`: SQLite, milvus-lite server, filesystem broker, in-process layer."""

from .base import *  # noqa: F403
from .base import env

# Django's debug page shows settings and code to anyone who triggers an error: only when asked for.
DEBUG = env.bool("DJANGO_DEBUG", default=False)
SECRET_KEY = SECRET_KEY or "memhub-local-development-only-not-secret"  # noqa: F405  # nosec: local only
