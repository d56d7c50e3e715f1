"""Request bodies are bounded: JSON by Django's data limit (honoured by DRF >= 3.17.2), whole requests,
file parts included, by MemHub's upload cap, before the body is read past it."""

from __future__ import annotations

import asyncio
import json

import pytest
from django.core.asgi import get_asgi_application

from core.limits import BodySizeLimitASGI
from vault.models import MemCube

pytestmark = pytest.mark.django_db


def test_json_body_over_the_data_limit_answers_413_and_writes_nothing(settings, alice, api_for):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2000
    resp = api_for(alice).post(
        "/api/v1/memories", {"namespace": "user:alice", "text": "x" * 5000}, format="json"
    )
    assert resp.status_code == 413
    err = resp.json()["error"]
    assert err["code"] == "request_too_large" and "2000 bytes" in err["message"]
    assert not MemCube.objects.exists()


def test_declared_length_over_the_upload_cap_is_refused_before_the_view(settings, alice, api_for):
    settings.MEMHUB_MAX_UPLOAD_BYTES = 1000
    resp = api_for(alice).post(
        "/v1/memhub/adapters",
        data=b"-" * 5000,
        content_type="multipart/form-data; boundary=xyz",
    )
    assert resp.status_code == 413
    assert resp.json()["error"]["extra"]["limit_bytes"] == 1000


def test_malformed_content_length_is_a_400(client):
    resp = client.generic("POST", "/api/v1/memories", b"{}", CONTENT_LENGTH="many")
    assert resp.status_code == 400 and "Content-Length" in resp.json()["error"]["message"]


def _asgi_call(app, chunks: list[bytes], headers: list[tuple[bytes, bytes]]) -> list[dict]:  # type: ignore[no-untyped-def]
    sent: list[dict] = []
    queue = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]

    async def receive() -> dict:
        if queue:
            return queue.pop(0)
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/v1/memories",
        "raw_path": b"/api/v1/memories",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), *headers],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=30))
    return sent


@pytest.mark.django_db(transaction=True)
def test_chunked_body_past_the_cap_ends_in_413_without_reaching_django(settings):
    settings.MEMHUB_MAX_UPLOAD_BYTES = 10_000
    app = BodySizeLimitASGI(get_asgi_application())
    # No Content-Length: the client streams 64 KiB in 4 KiB chunks.
    sent = _asgi_call(app, [b"a" * 4096] * 16, [(b"content-type", b"application/json")])
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 413
    body = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
    assert body["error"]["code"] == "request_too_large"


@pytest.mark.django_db(transaction=True)
def test_small_body_passes_through_the_asgi_limit(settings):
    settings.MEMHUB_MAX_UPLOAD_BYTES = 10_000
    app = BodySizeLimitASGI(get_asgi_application())
    sent = _asgi_call(app, [b"{}"], [(b"content-type", b"application/json")])
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] in (401, 403)  # reached the API: no credentials
