"""Settings shared by every deployment. Every value comes from the environment through one reader."""

from __future__ import annotations

from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent.parent

env = environ.Env()
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DATA_DIR = Path(env.str("MEMHUB_DATA_DIR", default=str(BASE_DIR / "var")))

SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="")
DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "channels",
    "core",
    "accounts",
    "vault",
    "governance",
    "marketplace",
    "feeds",
    "inference",
    "mip_protocol",
    "frontend",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "core.limits.RequestSizeLimitMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'memhub.sqlite3'}")}
DATABASES["default"]["ATOMIC_REQUESTS"] = False
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # The embedded default has several writers (web, worker, beat). SQLite's deferred transactions fail
    # with "database is locked" when a reader upgrades to a writer while another holds the lock, so take
    # the write lock when a transaction begins, wait for it instead of failing, and let readers proceed
    # beside a writer (WAL).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": env.int("MEMHUB_SQLITE_BUSY_TIMEOUT_S", default=30),
            "init_command": (
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout="
                f"{env.int('MEMHUB_SQLITE_BUSY_TIMEOUT_S', default=30) * 1000};"
            ),
        }
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_USER_MODEL = "accounts.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"

# Bodies are bounded. Non-file data (JSON, form fields) is capped by Django's own limit, which DRF's
# parsers honour from 3.17.2 on; a whole request, file parts included, is capped by
# core.limits (413 before the body is read past the cap).
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("MEMHUB_MAX_REQUEST_BYTES", default=10 * 1024 * 1024)
# An adapter upload (its own cap, named in its 413) plus room for the form around it.
MEMHUB_ADAPTER_MAX_BYTES = env.int("MEMHUB_ADAPTER_MAX_BYTES", default=256 * 1024 * 1024)
MEMHUB_MAX_UPLOAD_BYTES = env.int("MEMHUB_MAX_UPLOAD_BYTES", default=MEMHUB_ADAPTER_MAX_BYTES + 1024 * 1024)
# LoRA adapters kept loaded per inference worker (least recently used leaves first).
MEMHUB_LORA_MAX_RESIDENT = env.int("MEMHUB_LORA_MAX_RESIDENT", default=8)
FILE_UPLOAD_MAX_MEMORY_SIZE = env.int("MEMHUB_FILE_UPLOAD_MAX_MEMORY_BYTES", default=2 * 1024 * 1024)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PARSER_CLASSES": [
        "core.parsers.SafeJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "EXCEPTION_HANDLER": "core.exceptions.exception_handler",
    "DEFAULT_PAGINATION_CLASS": "core.pagination.CursorlessPagination",
    "PAGE_SIZE": 50,
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    # Client addresses (anonymous throttles) come from REMOTE_ADDR unless a proxy count is configured;
    # trusting X-Forwarded-For by default would let a client pick its own address.
    "NUM_PROXIES": env.int("MEMHUB_NUM_PROXIES", default=0),
}

# --- Throttles (core.throttling) -------------------------------------------------------------------
# Costly endpoints are limited per user and per token; 429 answers carry Retry-After. Counters live in
# the "throttle" cache: Redis when REDIS_URL is set (shared by every web process), else process memory
# (the embedded default runs one web process).
MEMHUB_THROTTLE_NAMESPACE = env.str("MEMHUB_THROTTLE_NAMESPACE", default="")  # instances sharing a Redis
MEMHUB_THROTTLE_RATES = {
    "chat": env.str("MEMHUB_THROTTLE_CHAT", default="60/min"),
    "pii_scan": env.str("MEMHUB_THROTTLE_PII_SCAN", default="20/min"),
    "watermark_detect": env.str("MEMHUB_THROTTLE_WATERMARK_DETECT", default="20/min"),
    "upload": env.str("MEMHUB_THROTTLE_UPLOAD", default="10/min"),
    "login": env.str("MEMHUB_THROTTLE_LOGIN", default="10/min"),
    "checkout": env.str("MEMHUB_THROTTLE_CHECKOUT", default="30/min"),
    "pack_upload": env.str("MEMHUB_THROTTLE_PACK_UPLOAD", default="30/min"),
}

SPECTACULAR_SETTINGS = {
    "TITLE": "MemHub API",
    "DESCRIPTION": "Federated memory marketplace for LLM agents: Memory API, governance, marketplace, MIP.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
}

# --- Caches ---------------------------------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "memhub-default"},
    "throttle": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL, "KEY_PREFIX": "thr"}
        if REDIS_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "memhub-throttle"}
    ),
}

# --- Channels --------------------------------------------------------------------------------------
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}}
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- Celery ----------------------------------------------------------------------------------------
# Embedded default: kombu's filesystem transport, so no broker server is needed.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS = env.json(
    "CELERY_BROKER_TRANSPORT_OPTIONS",
    default={
        "data_folder_in": str(DATA_DIR / "broker" / "out"),
        "data_folder_out": str(DATA_DIR / "broker" / "out"),
        "control_folder": str(DATA_DIR / "broker" / "control"),
    }
    if env.str("CELERY_BROKER_URL", default="filesystem://").startswith("filesystem")
    else {},
)
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default="") or None
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {"inference.tasks.*": {"queue": "inference"}}
CELERY_BEAT_SCHEDULE = {
    "vault-index-outbox-sweep": {"task": "vault.tasks.index_outbox_process", "schedule": 30.0},
    "governance-ttl-expiry": {"task": "governance.tasks.lifecycle_expire_due", "schedule": 300.0},
    "governance-cold-archival": {"task": "governance.tasks.lifecycle_archive_cold", "schedule": 3600.0},
    "governance-audit-verify": {"task": "governance.tasks.audit_verify", "schedule": 86400.0},
    "governance-audit-anchor": {
        "task": "governance.tasks.audit_anchor",
        "schedule": env.float("MEMHUB_AUDIT_ANCHOR_SECONDS", default=600.0),
    },
    "inference-kv-demote-cold": {"task": "inference.tasks.kv_demote_cold_task", "schedule": 3600.0},
    "marketplace-licence-sweep": {"task": "marketplace.tasks.licences.licence_sweep", "schedule": 300.0},
    "marketplace-catalog-reindex": {"task": "marketplace.tasks.catalog.catalog_reindex", "schedule": 86400.0},
    "marketplace-metered-usage": {
        "task": "marketplace.tasks.payments.metered_usage_sweep",
        "schedule": 86400.0,
    },
    "feeds-delivery-sweep": {
        "task": "feeds.tasks.delivery_sweep",
        "schedule": env.float("MEMHUB_DELIVERY_SWEEP_SECONDS", default=10.0),
    },
    "marketplace-checkout-reconcile": {
        "task": "marketplace.tasks.payments.checkout_reconcile_stale",
        "schedule": 3600.0,
    },
}

# --- Governance ------------------------------------------------------------------------------------
MEMHUB_ARCHIVE_AFTER_DAYS = env.int("MEMHUB_ARCHIVE_AFTER_DAYS", default=90)
MEMHUB_PII_BLOCKING_THRESHOLD = env.float("MEMHUB_PII_BLOCKING_THRESHOLD", default=0.5)
# Names and places: a "module:callable" NER hook for de-identification (empty turns it off).
MEMHUB_DEID_NER = env.str("MEMHUB_DEID_NER", default="governance.deid.ner:default_ner")

# The name this instance gives itself in MIP discovery and in the manifests it signs (empty: its host).
MEMHUB_INSTANCE_NAME = env.str("MEMHUB_INSTANCE_NAME", default="")

# --- Marketplace: payments, licences, uploads -------------------------------------------------------
# `ledger` is the built-in test ledger (no keys; `make run` sells and buys with it); `stripe` needs keys.
MEMHUB_PAYMENT_GATEWAY = env.str("MEMHUB_PAYMENT_GATEWAY", default="ledger")  # ledger | stripe
STRIPE_SECRET_KEY = env.str("STRIPE_SECRET_KEY", default="")
STRIPE_WEBHOOK_SECRET = env.str("STRIPE_WEBHOOK_SECRET", default="")
STRIPE_API_BASE = env.str("STRIPE_API_BASE", default="")  # empty: Stripe's own; tests point it at a stand-in
# The test ledger signs its webhooks exactly as Stripe does, with this secret (a per-instance default).
MEMHUB_LEDGER_WEBHOOK_SECRET = env.str("MEMHUB_LEDGER_WEBHOOK_SECRET", default="whsec_memhub_test_ledger")
MEMHUB_WEBHOOK_TOLERANCE_S = env.int("MEMHUB_WEBHOOK_TOLERANCE_S", default=300)
MEMHUB_PLATFORM_FEE_BPS = env.int("MEMHUB_PLATFORM_FEE_BPS", default=1500)  # 15 % application fee
MEMHUB_PAYMENT_GRACE_DAYS = env.int("MEMHUB_PAYMENT_GRACE_DAYS", default=7)
MEMHUB_SITE_URL = env.str("MEMHUB_SITE_URL", default="http://127.0.0.1:8000")  # checkout return pages
MEMHUB_PACK_UPLOAD_MAX_BYTES = env.int("MEMHUB_PACK_UPLOAD_MAX_BYTES", default=20 * 1024 * 1024)
MEMHUB_PACK_MAX_ITEMS = env.int("MEMHUB_PACK_MAX_ITEMS", default=50_000)
MEMHUB_CHUNK_TOKENS = env.int("MEMHUB_CHUNK_TOKENS", default=256)
MEMHUB_PACK_INLINE_BYTES = env.int("MEMHUB_PACK_INLINE_BYTES", default=1024 * 1024)  # bigger: in the worker
MEMHUB_COVER_MAX_BYTES = env.int("MEMHUB_COVER_MAX_BYTES", default=2 * 1024 * 1024)
MEMHUB_PDF_MAX_PAGES = env.int("MEMHUB_PDF_MAX_PAGES", default=500)
MEMHUB_UPLOAD_MAX_CHUNKS = env.int("MEMHUB_UPLOAD_MAX_CHUNKS", default=10_000)
MARKETPLACE_REVIEW_REPORTS_TO_HIDE = env.int("MEMHUB_REVIEW_REPORTS_TO_HIDE", default=3)
MARKETPLACE_CATALOG_MIN_COSINE = env.float("MEMHUB_CATALOG_MIN_COSINE", default=0.3)
MEMHUB_PDF_MAX_SECONDS = env.float("MEMHUB_PDF_MAX_SECONDS", default=60.0)
MEMHUB_DOCUMENT_MAX_CHARS = env.int("MEMHUB_DOCUMENT_MAX_CHARS", default=2_000_000)
# Packs up to this many memories install inline (ready when the call returns); bigger ones in the worker.
MARKETPLACE_INSTALL_INLINE_MAX = env.int("MEMHUB_INSTALL_INLINE_MAX", default=2000)
MARKETPLACE_INSTALL_CHUNK = env.int("MEMHUB_INSTALL_CHUNK", default=1000)
# An installed copy reuses the publisher memory's vector when the watermark left its words this similar.
VAULT_INSTALL_VECTOR_REUSE = env.bool("MEMHUB_INSTALL_VECTOR_REUSE", default=True)
VAULT_VECTOR_REUSE_MIN_SIMILARITY = env.float("MEMHUB_VECTOR_REUSE_MIN_SIMILARITY", default=0.85)

# --- Vault: embeddings and Milvus -----------------------------------------------------------------
MILVUS_URI = env.str("MILVUS_URI", default="http://127.0.0.1:19530")
MILVUS_TOKEN = env.str("MILVUS_TOKEN", default="")
MILVUS_COLLECTION_PREFIX = env.str("MILVUS_COLLECTION_PREFIX", default="memhub")
EMBEDDING_BACKEND = env.str("MEMHUB_EMBEDDING_BACKEND", default="onnx")  # onnx | torch
EMBEDDING_CACHE_DIR = Path(env.str("MEMHUB_EMBEDDING_CACHE_DIR", default=str(DATA_DIR / "models")))
EMBEDDING_BATCH_SIZE = env.int("MEMHUB_EMBEDDING_BATCH_SIZE", default=64)
VAULT_MAX_TEXT_CHARS = env.int("MEMHUB_MAX_TEXT_CHARS", default=20_000)
VAULT_MAX_BATCH = env.int("MEMHUB_MAX_BATCH", default=500)
VAULT_SEARCH_MODE = env.str("MEMHUB_SEARCH_MODE", default="hybrid")  # hybrid | dense | sparse
VAULT_SEARCH_MAX_TOP_K = env.int("MEMHUB_SEARCH_MAX_TOP_K", default=100)
EMBEDDING_QUANTIZE = env.bool("MEMHUB_EMBEDDING_QUANTIZE", default=True)  # int8 ONNX weights
EMBEDDING_THREADS = env.int("MEMHUB_EMBEDDING_THREADS", default=0)  # 0: ONNX Runtime decides
VAULT_FUSION = env.str("MEMHUB_FUSION", default="weighted")  # weighted | rrf
# Tuned leave-one-conversation-out on locomo-dev (docs/vault-index.md), never on the split reported.
VAULT_DENSE_WEIGHT = env.float("MEMHUB_DENSE_WEIGHT", default=0.3)
VAULT_BM25_HALF = env.float("MEMHUB_BM25_HALF", default=16.0)  # BM25 score that maps to 0.5 in fusion
VAULT_SEARCH_CANDIDATES = env.int("MEMHUB_SEARCH_CANDIDATES", default=50)
VAULT_HNSW_EF = env.int("MEMHUB_HNSW_EF", default=96)
VAULT_PRF_DOCS = env.int("MEMHUB_PRF_DOCS", default=5)
VAULT_LITE_FLUSH_EVERY = env.int("MEMHUB_LITE_FLUSH_EVERY", default=2000)
# Index outbox: a row that keeps failing is retried with exponential backoff, then dead-lettered.
VAULT_OUTBOX_MAX_ATTEMPTS = env.int("MEMHUB_OUTBOX_MAX_ATTEMPTS", default=8)
VAULT_OUTBOX_BACKOFF_S = env.float("MEMHUB_OUTBOX_BACKOFF_S", default=30.0)
VAULT_OUTBOX_BACKOFF_MAX_S = env.float("MEMHUB_OUTBOX_BACKOFF_MAX_S", default=3600.0)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
}
SPECTACULAR_SETTINGS["ENUM_NAME_OVERRIDES"] = {
    "MemoryKindEnum": "vault.models.MemoryKind",
    "OrgRoleEnum": "accounts.models.Role",
    "PackFormEnum": "marketplace.models.ALL_FORMS",
    "PriceModelEnum": "marketplace.models.PriceModel",
}

# --- Feeds and delivery (feeds/, docs/feeds/) -----------------------------------------------------------
# Retries: exponential backoff with jitter from BASE up to MAX seconds, at most MAX_ATTEMPTS attempts per
# delivery before it becomes a dead letter; a 408/429 `Retry-After` is honoured up to RETRY_AFTER_MAX.
MEMHUB_DELIVERY_BACKOFF_BASE_S = env.float("MEMHUB_DELIVERY_BACKOFF_BASE_S", default=2.0)
MEMHUB_DELIVERY_BACKOFF_MAX_S = env.float("MEMHUB_DELIVERY_BACKOFF_MAX_S", default=3600.0)
MEMHUB_DELIVERY_MAX_ATTEMPTS = env.int("MEMHUB_DELIVERY_MAX_ATTEMPTS", default=15)
MEMHUB_DELIVERY_RETRY_AFTER_MAX_S = env.float("MEMHUB_DELIVERY_RETRY_AFTER_MAX_S", default=3600.0)
MEMHUB_DELIVERY_TIMEOUT_S = env.float("MEMHUB_DELIVERY_TIMEOUT_S", default=10.0)
# Circuit breaker: open after this many consecutive failures, probe after OPEN_S (doubling up to MAX).
MEMHUB_DELIVERY_CIRCUIT_FAILURES = env.int("MEMHUB_DELIVERY_CIRCUIT_FAILURES", default=5)
MEMHUB_DELIVERY_CIRCUIT_OPEN_S = env.float("MEMHUB_DELIVERY_CIRCUIT_OPEN_S", default=30.0)
MEMHUB_DELIVERY_CIRCUIT_OPEN_MAX_S = env.float("MEMHUB_DELIVERY_CIRCUIT_OPEN_MAX_S", default=3600.0)
# A fan-out hands destinations to the workers this many per task message.
MEMHUB_DELIVERY_DRAIN_BATCH = env.int("MEMHUB_DELIVERY_DRAIN_BATCH", default=25)
# A worker holds a destination this long while it drains it (a killed worker's lease runs out).
MEMHUB_DELIVERY_LEASE_S = env.float("MEMHUB_DELIVERY_LEASE_S", default=60.0)
# SSRF: outbound URLs (webhooks, MIP peers) that resolve to private, loopback, link-local or reserved
# addresses are refused unless this is on (a private network; the tests' loopback receivers).
MEMHUB_OUTBOUND_ALLOW_PRIVATE = env.bool("MEMHUB_OUTBOUND_ALLOW_PRIVATE", default=False)
# After a webhook secret rotation the previous secret still signs for this long.
MEMHUB_WEBHOOK_ROTATION_GRACE_S = env.int("MEMHUB_WEBHOOK_ROTATION_GRACE_S", default=86400)
# WebSocket and server-sent-event followers re-read the log this often (the channel layer only nudges).
MEMHUB_FEED_POLL_S = env.float("MEMHUB_FEED_POLL_S", default=1.0)
# A server-sent-event stream ends after this long; clients reconnect with Last-Event-ID.
MEMHUB_SSE_MAX_S = env.float("MEMHUB_SSE_MAX_S", default=300.0)
