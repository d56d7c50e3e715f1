"""Shared fixtures: real PostgreSQL (pytest-django), a real milvus-lite server, users with API tokens."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from rest_framework.test import APIClient

from accounts import services as account_services
from accounts.models import User
from governance.policy import Subject

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest_plugins = ["tests.plugins.milvus"]


@pytest.fixture(autouse=True)
def _vault_on_test_milvus(settings, milvus_uri: str, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Point the vault at the session's milvus-lite server and a collection of this test run."""
    settings.MILVUS_URI = milvus_uri
    settings.MEMHUB_DATA_DIR = str(tmp_path_factory.getbasetemp())
    try:
        from vault.index import reset_index_cache
    except ImportError:  # pragma: no cover - index module not present
        yield
        return
    reset_index_cache()
    yield
    reset_index_cache()


@pytest.fixture
def make_user(db) -> Callable[..., User]:  # type: ignore[no-untyped-def]
    def make(username: str, password: str = "correct-horse-battery") -> User:
        return account_services.user_create(username=username, password=password)

    return make


@pytest.fixture
def api_for(db) -> Callable[..., APIClient]:  # type: ignore[no-untyped-def]
    """An API client authenticated the way agents are: with a bearer token (optionally scoped)."""

    def make(user: User, scopes: list[str] | None = None) -> APIClient:
        _, raw = account_services.api_token_create(user=user, name="test", scopes=scopes)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        return client

    return make


@pytest.fixture
def alice(make_user) -> User:  # type: ignore[no-untyped-def]
    return make_user("alice")


@pytest.fixture
def bob(make_user) -> User:  # type: ignore[no-untyped-def]
    return make_user("bob")


@pytest.fixture
def subject_of() -> Callable[[User], Subject]:
    return lambda user: Subject(user=user)


@pytest.fixture
def index_now() -> Callable[[], int]:
    """Drain the index outbox now. Tests run inside a transaction, so on-commit hooks never fire."""
    from vault.services import index_outbox_process

    return lambda: index_outbox_process()
