"""A real milvus-lite server for the test session (one process, a fresh data directory)."""

from __future__ import annotations

import os

import pytest

from vault.milvus_server import MilvusLiteServer


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    external = os.environ.get("MEMHUB_TEST_MILVUS_URI")
    if external:
        yield external
        return
    server = MilvusLiteServer(tmp_path_factory.mktemp("milvus"))
    server.start()
    try:
        yield server.uri
    finally:
        server.stop()
