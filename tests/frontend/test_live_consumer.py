"""The live-activity WebSocket replays the durable log from a cursor and only shows readable namespaces."""

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from config.asgi import application
from governance.policy import Subject
from vault.services import memory_create

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


async def connect_as(user, cursor=0):
    from importlib import import_module

    from channels.auth import AuthMiddlewareStack  # noqa: F401  (the real stack is inside `application`)
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY

    def make_session():
        engine = import_module(settings.SESSION_ENGINE)
        session = engine.SessionStore()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.save()
        return session.session_key

    key = await database_sync_to_async(make_session)()
    comm = WebsocketCommunicator(
        application,
        f"/ws/memories/?cursor={cursor}",
        headers=[
            (b"cookie", f"sessionid={key}".encode()),
            (b"origin", b"http://localhost"),
            (b"host", b"localhost"),
        ],
    )
    connected, _ = await comm.connect()
    return comm, connected


async def test_replays_own_events_but_not_other_tenants(make_user):
    alice = await database_sync_to_async(make_user)("alice")
    bob = await database_sync_to_async(make_user)("bob")
    await database_sync_to_async(memory_create)(
        actor=Subject(user=bob), namespace_key="user:bob", data={"text": "bob's private note"}
    )
    await database_sync_to_async(memory_create)(
        actor=Subject(user=alice), namespace_key="user:alice", data={"text": "alice's note"}
    )
    comm, connected = await connect_as(alice, cursor=0)
    assert connected
    event = await comm.receive_json_from(timeout=5)
    assert event["namespace"] == "user:alice" and event["operation"] == "memory.create"
    assert await comm.receive_nothing(timeout=1.5)
    # a later write arrives live
    await database_sync_to_async(memory_create)(
        actor=Subject(user=alice), namespace_key="user:alice", data={"text": "another"}
    )
    live = await comm.receive_json_from(timeout=5)
    assert live["seq"] > event["seq"] and live["namespace"] == "user:alice"
    await comm.disconnect()


async def test_anonymous_is_refused():
    comm = WebsocketCommunicator(
        application, "/ws/memories/", headers=[(b"origin", b"http://localhost"), (b"host", b"localhost")]
    )
    connected, _code = await comm.connect()
    assert not connected
