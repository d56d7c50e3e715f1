"""Under ASGI the stream is an async iterator, so events reach the client as they are produced."""

from __future__ import annotations

import json
import warnings

import pytest
from django.test import AsyncClient

from accounts import services as account_services


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_streaming_under_asgi_is_not_buffered(alice, alice_notes, settings):
    from asgiref.sync import sync_to_async

    settings.MEMHUB_MODEL_PATH = ""
    _, raw = await sync_to_async(account_services.api_token_create)(user=alice, name="asgi", scopes=None)
    client = AsyncClient()
    body = {"messages": [{"role": "user", "content": "Which seat does Alice prefer?"}], "stream": True}

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Django warns when it has to buffer a sync iterator under ASGI
        response = await client.post(
            "/v1/chat/completions",
            json.dumps(body),
            content_type="application/json",
            headers={"Authorization": f"Bearer {raw}"},
        )
        assert response.status_code == 200, response.json()
        assert response.is_async
        events = [part.decode() async for part in response.streaming_content]

    data = [e.removeprefix("data: ").strip() for e in "".join(events).split("\n\n") if e.startswith("data: ")]
    assert data[-1] == "[DONE]"
    final = json.loads(data[-2])
    assert final["memhub"]["mode"] == "retrieval-only"
    assert any(m["title"] == "Seat preference" for m in final["memhub"]["memories"])
