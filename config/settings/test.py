"""Test settings: the real services on this machine (PostgreSQL, Redis, a milvus-lite server)."""

import os

from .base import *  # noqa: F403
from .base import DATABASES, env

SECRET_KEY = "memhub-test-secret"  # noqa: S105
DEBUG = False
DATABASES["default"] = env.db("DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/test")
# Several test runs may share one PostgreSQL server; a suffix keeps their test databases apart.
DATABASES["default"]["TEST"] = {"NAME": f"test_memhub{os.environ.get('MEMHUB_TEST_DB_SUFFIX', '')}"}
REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/1")
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [REDIS_URL],
            "prefix": f"memhub-test{os.environ.get('MEMHUB_TEST_DB_SUFFIX', '')}",
        },
    }
}
# Eager tasks on an in-memory broker, unless a test starts a real worker (tests/feeds/test_worker_kill.py).
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="memory://")
CELERY_BROKER_TRANSPORT_OPTIONS = env.json("CELERY_BROKER_TRANSPORT_OPTIONS", default={})
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=True)
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast hashing for tests only
ALLOWED_HOSTS = ["*"]
MILVUS_COLLECTION_PREFIX = f"memhub_test{os.environ.get('MEMHUB_TEST_DB_SUFFIX', '')}"
MIDDLEWARE = [m for m in MIDDLEWARE if "whitenoise" not in m]  # noqa: F405  # no collected static in tests
# Throttle counters in Redis, as when scaled out; each test run keeps its own keys. Rates are high so
# that only the throttle tests (which lower them) are ever limited.
CACHES = {
    **CACHES,  # noqa: F405
    "throttle": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": f"memhub-test-thr{os.environ.get('MEMHUB_TEST_DB_SUFFIX', '')}",
    },
}
MEMHUB_THROTTLE_RATES = {k: "100000/min" for k in MEMHUB_THROTTLE_RATES}  # noqa: F405

# Deliveries retry fast in tests (the SSRF guard stays on: tests that use loopback receivers enable
# MEMHUB_OUTBOUND_ALLOW_PRIVATE themselves).
MEMHUB_DELIVERY_BACKOFF_BASE_S = 0.02
MEMHUB_DELIVERY_BACKOFF_MAX_S = 0.5
MEMHUB_DELIVERY_CIRCUIT_OPEN_S = 0.2
MEMHUB_DELIVERY_CIRCUIT_OPEN_MAX_S = 1.0
MEMHUB_DELIVERY_TIMEOUT_S = 5.0
MEMHUB_FEED_POLL_S = 0.2
MEMHUB_SSE_MAX_S = 10.0
