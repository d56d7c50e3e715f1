"""WebSocket origin checking that lets agents in.

Channels' `AllowedHostsOriginValidator` refuses a handshake without an `Origin` header. That header is
what protects a browser session from cross-site WebSocket hijacking, and browsers always send it; an
agent connecting with `Authorization: Bearer ...` (no cookies, no browser) does not. So a handshake that
carries an `Authorization` header and no `Origin` passes to the application, which authenticates the
token itself; every other handshake goes through the allowed-hosts check as before (a browser page on
another site is still refused, bearer header or not, because it sends its `Origin`).
"""

from __future__ import annotations

from typing import Any

from channels.security.websocket import AllowedHostsOriginValidator


def AgentAwareOriginValidator(application: Any) -> Any:  # an ASGI middleware factory
    checked = AllowedHostsOriginValidator(application)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> Any:
        names = {name for name, _ in scope.get("headers", [])}
        if b"origin" not in names and b"authorization" in names:
            return await application(scope, receive, send)
        return await checked(scope, receive, send)

    return app
