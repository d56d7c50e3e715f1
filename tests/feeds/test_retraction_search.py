"""A retraction on the publisher archives the memory in every subscriber's installation: it no longer
comes back from vault search or from chat (retrieval-only mode), and it is out of the index."""

from __future__ import annotations

import pytest

from feeds.delivery.engine import deliveries_run_due
from feeds.models import Delivery, DeliveryStatus
from governance.policy import Subject
from marketplace.services import installs
from tests.inference.django_fixtures import chat
from vault.models import MemCube, MemCubeVersion, MemoryState
from vault.selectors import memory_search

pytestmark = pytest.mark.django_db

QUERY = "How long do I have to file a refund request after the purchase?"


def found(user, installation) -> set:  # type: ignore[no-untyped-def]
    response = memory_search(actor=Subject(user=user), query=QUERY, top_k=10)
    return {
        r.memory.provenance_id for r in response.results if r.memory.namespace_id == installation.namespace_id
    }


def chat_memories(api_for, user, installation) -> set:  # type: ignore[no-untyped-def]
    resp = chat(api_for(user), QUERY, memhub={"namespaces": [installation.namespace.key]})
    assert resp.status_code == 200, resp.json()
    body = resp.json()
    assert body["memhub"]["mode"] == "retrieval-only"
    return {m["id"] for m in body["memhub"]["memories"]}


def test_a_retraction_archives_every_subscribers_copy_and_search_and_chat_stop_finding_it(
    feed_world, make_user, api_for, settings, django_capture_on_commit_callbacks
):
    settings.MEMHUB_MODEL_PATH = ""  # chat answers in retrieval-only mode: no generator is loaded
    from vault.services import index_outbox_process

    second = make_user("second")
    second_install = installs.pack_install(actor=Subject(user=second), release=feed_world.release)
    index_outbox_process()
    subscribers = [(feed_world.subscriber, feed_world.installation), (second, second_install)]
    for user, _ in subscribers:
        feed_world.subscribe(user)

    origin = MemCube.objects.get(pack_items__pack=feed_world.pack, text__startswith="A refund request")
    pid = origin.provenance_id
    copies = {
        inst.pk: MemCube.objects.get(namespace=inst.namespace, provenance_id=pid, is_canary=False)
        for _, inst in subscribers
    }
    # Before: each subscriber finds their copy, by search and in chat.
    for user, inst in subscribers:
        assert pid in found(user, inst)
        assert str(copies[inst.pk].id) in chat_memories(api_for, user, inst)

    entry = feed_world.retract(pid, reason="The refund window is now thirty days.")
    with django_capture_on_commit_callbacks(execute=True):
        deliveries_run_due()

    assert set(Delivery.objects.filter(entry=entry).values_list("status", flat=True)) == {
        DeliveryStatus.DELIVERED
    }
    assert Delivery.objects.filter(entry=entry).count() == 2
    from vault.index import get_index

    index = get_index()
    for user, inst in subscribers:
        copy = MemCube.objects.get(pk=copies[inst.pk].pk)
        assert copy.state == MemoryState.ARCHIVED
        # Archived as a new version: the history still shows what it said.
        assert (
            list(
                MemCubeVersion.objects.filter(cube=copy).order_by("version").values_list("state", flat=True)
            )[-1]
            == MemoryState.ARCHIVED
        )
        assert MemCubeVersion.objects.filter(cube=copy).count() == 2
        assert pid not in found(user, inst)
        assert str(copy.id) not in chat_memories(api_for, user, inst)
        assert str(copy.id) not in index.vectors([str(copy.id)])
    # The other memories of the pack are still found: only the retracted one went.
    assert found(feed_world.subscriber, feed_world.installation)
