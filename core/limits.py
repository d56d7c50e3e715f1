"""Whole-request size limits, file parts included.

Django's DATA_UPLOAD_MAX_MEMORY_SIZE covers only non-file data, so a multipart upload could otherwise be
as large as a client likes. Two layers keep it bounded:
- `RequestSizeLimitMiddleware` refuses a request whose Content-Length exceeds the cap before any view
  reads it;
- `BodySizeLimitASGI` wraps the ASGI application and stops a body (chunked, or lying about its length)
  as soon as the bytes received pass the cap, so the server never spools more than the cap to disk.
Both answer 413 in the API's error shape.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def max_upload_bytes() -> int:
    return int(getattr(settings, "MEMHUB_MAX_UPLOAD_BYTES", 256 * 1024 * 1024))


def _too_large_body(limit: int) -> dict[str, Any]:
    return {
        "error": {
            "code": "request_too_large",
            "message": f"The request body exceeds the limit of {limit} bytes.",
            "extra": {"limit_bytes": limit},
        }
    }


class RequestSizeLimitMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        limit = max_upload_bytes()
        raw = request.META.get("CONTENT_LENGTH") or "0"
        try:
            length = int(raw)
        except ValueError:
            return JsonResponse(
                {"error": {"code": "invalid", "message": "Content-Length is not a number."}}, status=400
            )
        if length > limit:
            return JsonResponse(_too_large_body(limit), status=413)
        return self.get_response(request)


class BodySizeLimitASGI:
    """ASGI middleware: HTTP bodies larger than the cap end in 413 without being read further."""

    def __init__(self, app: Any) -> None:  # any ASGI application
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        limit = max_upload_bytes()
        received = 0
        refused = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    # Tell the application the client went away: it stops reading and answers nothing.
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            if message.get("type") == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, limited_receive, guarded_send)
        if refused and not started:
            body = json.dumps(_too_large_body(limit)).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 413,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
