"""Live activity over WebSocket, as a nudge over the durable log.

On connect the consumer replays audit events after the client's cursor, then keeps following the log. It
shows exactly the entries the audit API (`GET /api/v1/governance/audit`) would show the user, through the
same selector: reading a namespace is not a right to see who else reads or writes it. It reads the
database rather than trusting the channel layer, so events written by another process (the Celery worker
in `make run`) still arrive, and a reconnecting client misses nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from core.errors import PermissionDenied
from governance.models import AuditEvent
from governance.policy import Subject
from governance.selectors import AuditFilter, audit_list

POLL_SECONDS = 1.0
BATCH = 100
# Audit `seq` is handed out without a global lock (one hash chain per namespace), so an entry whose
# transaction commits late can carry a lower seq than one already sent. Each poll looks back this far
# and skips what it sent already.
REWIND = 200


def events_after(
    user: Any, cursor: int, *, floor: int = 0, sent: frozenset[int] = frozenset()
) -> list[dict[str, Any]]:
    """Entries visible to `user` after `cursor`, and late arrivals within REWIND of it that are not in
    `sent`; never at or below `floor` (where the client said it had everything)."""
    try:
        visible = audit_list(actor=Subject(user=user), f=AuditFilter(), ascending=True)
    except PermissionDenied:
        return []
    low = max(floor, cursor - REWIND) if sent else cursor
    rows = visible.filter(seq__gt=low).exclude(seq__in=list(sent))[:BATCH]
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
        self.floor = self.cursor
        self.sent: set[int] = set()
        await self.accept()
        self.follower = asyncio.create_task(self.follow(user))

    async def follow(self, user: Any) -> None:
        while True:
            events = await database_sync_to_async(events_after)(
                user, self.cursor, floor=self.floor, sent=frozenset(self.sent)
            )
            for event in events:
                await self.send_json(event)
                self.sent.add(event["seq"])
                self.cursor = max(self.cursor, event["seq"])
            self.sent = {seq for seq in self.sent if seq > self.cursor - REWIND}
            if len(events) < BATCH:
                await asyncio.sleep(POLL_SECONDS)

    async def disconnect(self, code: int) -> None:
        follower = getattr(self, "follower", None)
        if follower:
            follower.cancel()
