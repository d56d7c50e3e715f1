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


def _audit_api_seqs(user) -> set[int]:
    """The entries `GET /api/v1/governance/audit` shows this user (all of them, every page)."""
    from rest_framework.test import APIClient

    from accounts import services as account_services

    _, raw = account_services.api_token_create(user=user, name="audit", scopes=["governance"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    body = client.get("/api/v1/governance/audit", {"limit": 500}).json()
    return {e["seq"] for e in body["results"]}


async def _drain(comm) -> list[dict]:
    events = []
    while not await comm.receive_nothing(timeout=1.5):
        events.append(await comm.receive_json_from(timeout=5))
    return events


async def test_shows_only_what_the_audit_api_shows(make_user):
    """An org viewer and a reader of a shared namespace see nothing they could not see in the audit API;
    the org's admin sees the org's entries, the shared namespace's owner sees its own."""
    from accounts import services as account_services
    from accounts.models import NamespaceKind, Role

    def given():
        owner, admin, viewer, reader = (make_user(n) for n in ("olga", "adam", "vera", "rita"))
        org = account_services.organization_create(owner=owner, slug="clinic")
        for user, role in ((admin, Role.ADMIN), (viewer, Role.VIEWER)):
            invitation = account_services.invitation_create(
                actor=owner, org=org, username=user.username, role=role
            )
            account_services.invitation_accept(user=user, invitation_id=invitation.id)
        account_services.namespace_create(kind=NamespaceKind.SHARED, slug="tips", owner_user=owner)
        account_services.namespace_join(user=reader, namespace_key="shared:tips")
        memory_create(actor=Subject(user=owner), namespace_key="org:clinic", data={"text": "ward rota"})
        memory_create(actor=Subject(user=owner), namespace_key="shared:tips", data={"text": "a tip"})
        # the viewer and the reader read: their own reads are in the owners' logs, not theirs
        from vault.selectors import memory_list
        from vault.services import memory_reads_record

        for user, key in ((viewer, "org:clinic"), (reader, "shared:tips")):
            subject = Subject(user=user)
            cubes = list(memory_list(actor=subject, namespace_keys=[key]))
            assert cubes, f"{user.username} can read {key}"
            memory_reads_record(actor=subject, cubes=cubes, operation="memory.list")
        return owner, admin, viewer, reader

    owner, admin, viewer, reader = await database_sync_to_async(given)()
    from frontend.consumers import latest_seq

    fresh_from = await database_sync_to_async(latest_seq)() - 10  # a fresh page replays the last ten
    for user in (viewer, reader, admin, owner):
        comm, connected = await connect_as(user, cursor=0)
        assert connected
        seen = await _drain(comm)
        await comm.disconnect()
        allowed = await database_sync_to_async(_audit_api_seqs)(user)
        assert {e["seq"] for e in seen} == {s for s in allowed if s > fresh_from}, user.username
        reads = {(e["namespace"], e["actor"]) for e in seen if e["operation"] == "memory.list"}
        if user in (viewer, reader):
            assert seen == []
        elif user == admin:
            assert reads == {("org:clinic", "vera")}
        else:
            assert reads == {("org:clinic", "vera"), ("shared:tips", "rita")}
