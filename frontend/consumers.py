"""Live activity over WebSocket, as a nudge over the durable log.

On connect the consumer replays audit events after the client's cursor for the namespaces the user may
read, then keeps following the log. It reads the database rather than trusting the channel layer, so
events written by another process (the Celery worker in `make run`) still arrive, and a reconnecting
client misses nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from governance.models import AuditEvent
from governance.policy import Subject, readable_namespaces_q

POLL_SECONDS = 1.0
BATCH = 100


def events_after(user: Any, cursor: int) -> list[dict[str, Any]]:
    subject = Subject(user=user)
    rows = (
        AuditEvent.objects.filter(seq__gt=cursor, namespace__isnull=False)
        .filter(readable_namespaces_q(subject, prefix="namespace__"))
        .order_by("seq")[:BATCH]
    )
    return [
        {
            "type": "event",
            "seq": e.seq,
            "at": e.at.isoformat(),
            "actor": e.actor_label,
            "operation": e.operation,
            "namespace": e.namespace_key,
            "count": len(e.object_ids),
        }
        for e in rows
    ]


def latest_seq() -> int:
    return AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0


class MemoryEventsConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        query = dict(
            p.split("=", 1) for p in self.scope.get("query_string", b"").decode().split("&") if "=" in p
        )
        try:
            self.cursor = max(0, int(query.get("cursor", "0")))
        except ValueError:
            self.cursor = 0
        if self.cursor == 0:
            # A fresh page shows what happens from now on, plus the last few events for context.
            self.cursor = max(0, await database_sync_to_async(latest_seq)() - 10)
        await self.accept()
        self.follower = asyncio.create_task(self.follow(user))

    async def follow(self, user: Any) -> None:
        while True:
            events = await database_sync_to_async(events_after)(user, self.cursor)
            for event in events:
                await self.send_json(event)
                self.cursor = event["seq"]
            if len(events) < BATCH:
                await asyncio.sleep(POLL_SECONDS)

    async def disconnect(self, code: int) -> None:
        follower = getattr(self, "follower", None)
        if follower:
            follower.cancel()
