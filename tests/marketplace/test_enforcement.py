"""Licence terms enforced where memory is used: search, lists, reads by id, chat, KV prefixes, adapters.

A named installation whose licence does not cover the use answers 402 with the reason; a search, list or
chat over every namespace leaves it out (and a chat's decisions say why). Installed memories returned
count one retrieval each on their licence."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import Role
from governance.policy import Subject
from marketplace.models import Licence, LicenceStatus, LicenceUsage
from marketplace.services import licences as svc
from tests.marketplace.test_licences_support import install, released
from vault.models import MemCube

pytestmark = pytest.mark.django_db

SEARCH = "/api/v1/memories/search"
QUERY = "When do ferries leave Port Elin for Tarsk?"


def chat(client, content=QUERY, **memhub):  # type: ignore[no-untyped-def]
    body = {"model": "memhub", "messages": [{"role": "user", "content": content}], "max_tokens": 4}
    if memhub:
        body["memhub"] = memhub
    return client.post("/v1/chat/completions", body, format="json")


def retrievals(licence: Licence) -> int:
    row = LicenceUsage.objects.filter(licence=licence).first()
    return row.retrievals if row else 0


@pytest.fixture
def own_note(alice, index_now):  # type: ignore[no-untyped-def]
    from vault.services import memory_create_batch

    return memory_create_batch(
        actor=Subject(user=alice),
        namespace_key="user:alice",
        items=[{"text": "Alice takes the ferry to Tarsk on Fridays.", "title": "Ferry habit"}],
    )[0]


@pytest.fixture
def setup(make_pack, alice, index_now, own_note):  # type: ignore[no-untyped-def]
    """alice holds a licence for acme/tips (quota 100) and has it installed."""

    def make(**terms):  # type: ignore[no-untyped-def]
        release = released(make_pack, **{"quota_per_period": 100, **terms})
        lic = svc.licence_grant(pack=release.pack, holder_user=alice)
        inst = install(alice, release, lic)
        index_now()
        return lic, inst

    return make


def pack_hits(body: dict, ns_key: str) -> list[dict]:
    return [r for r in body["results"] if r["memory"]["namespace"] == ns_key]


def test_a_usable_licence_serves_every_door_and_each_memory_returned_counts(setup, api_for, alice):
    lic, inst = setup()
    client = api_for(alice)
    ns = inst.namespace.key
    found = client.post(SEARCH, {"query": QUERY, "namespaces": [ns]}, format="json")
    assert found.status_code == 200, found.json()
    hits = len(found.json()["results"])
    assert hits >= 1 and retrievals(lic) == hits
    listed = client.get(f"/api/v1/memories?namespace={ns}&limit=2").json()
    assert len(listed["results"]) == 2 and listed["count"] == 3
    assert retrievals(lic) == hits + 2  # the page fetched, not the whole list
    one = client.get(f"/api/v1/memories/{listed['results'][0]['id']}")
    assert one.status_code == 200 and retrievals(lic) == hits + 3
    answer = chat(client, namespaces=[ns])
    assert answer.status_code == 200, answer.json()
    used = [m for m in answer.json()["memhub"]["memories"] if m["namespace"] == ns]
    assert used and all(m["form"] == "plaintext" for m in used)
    usage = LicenceUsage.objects.get(licence=lic)
    assert usage.retrievals == hits + 3 + len(used) and usage.chats == 1


def test_expiry_is_checked_at_use_time_everywhere(setup, api_for, alice, own_note):
    lic, inst = setup()
    # The licence's end has passed but no sweep has run: it is still ACTIVE in the database.
    Licence.objects.filter(pk=lic.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    client = api_for(alice)
    ns = inst.namespace.key
    cube = MemCube.objects.filter(namespace=inst.namespace).first()

    named = client.post(SEARCH, {"query": QUERY, "namespaces": [ns]}, format="json")
    assert named.status_code == 402, named.json()
    assert named.json()["error"]["code"] == "licence_expired"
    assert "Your licence for acme/tips expired" in named.json()["error"]["message"]
    everywhere = client.post(SEARCH, {"query": QUERY}, format="json")
    assert everywhere.status_code == 200
    assert pack_hits(everywhere.json(), ns) == [] and ns not in everywhere.json()["namespaces"]
    assert str(own_note.id) in {r["memory"]["id"] for r in everywhere.json()["results"]}

    assert client.get(f"/api/v1/memories?namespace={ns}").status_code == 402
    listed = client.get("/api/v1/memories").json()
    assert {m["namespace"] for m in listed["results"]} == {"user:alice"}
    by_id = client.get(f"/api/v1/memories/{cube.id}")
    assert by_id.status_code == 402 and by_id.json()["error"]["code"] == "licence_expired"
    history = client.get(f"/api/v1/memories/{cube.id}/history")
    assert history.status_code == 402

    assert chat(client, namespaces=[ns]).status_code == 402
    default = chat(client).json()
    assert all(m["namespace"] != ns for m in default["memhub"]["memories"])
    assert any(d["namespace"] == ns and "expired" in d["reason"] for d in default["memhub"]["decisions"])
    assert retrievals(lic) == 0  # nothing was handed out, nothing is counted


def test_an_exhausted_quota_is_402_on_search_and_chat_and_never_overshoots(setup, api_for, alice):
    lic, inst = setup(quota_per_period=2)
    client = api_for(alice)
    ns = inst.namespace.key
    first = client.post(SEARCH, {"query": QUERY, "namespaces": [ns], "top_k": 10}, format="json").json()
    assert len(first["results"]) == 2  # three match; the quota grants two
    assert [r["rank"] for r in first["results"]] == [1, 2]
    assert retrievals(lic) == 2
    again = client.post(SEARCH, {"query": QUERY, "namespaces": [ns]}, format="json")
    assert again.status_code == 402 and again.json()["error"]["code"] == "quota_exhausted"
    assert "(2 of 2)" in again.json()["error"]["message"]
    refused = chat(client, namespaces=[ns])
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "quota_exhausted"
    cube = MemCube.objects.filter(namespace=inst.namespace).first()
    assert client.get(f"/api/v1/memories/{cube.id}").status_code == 402
    assert retrievals(lic) == 2


def test_chat_puts_no_more_installed_memories_in_the_prompt_than_the_quota_has_left(setup, api_for, alice):
    lic, inst = setup(quota_per_period=1)
    body = chat(api_for(alice), namespaces=[inst.namespace.key]).json()
    used = [m for m in body["memhub"]["memories"] if m["namespace"] == inst.namespace.key]
    assert len(used) == 1 and retrievals(lic) == 1
    assert any("quota" in d["reason"] for d in body["memhub"]["decisions"] if d["action"] == "skip")


def test_an_organization_licence_needs_a_seat(make_pack, alice, api_for, index_now, make_user):
    from accounts import services as accounts

    boss = make_user("boss")
    org = accounts.organization_create(owner=boss, slug="crew")
    org.memberships.create(user=alice, role=Role.MEMBER)
    release = released(make_pack)
    lic = svc.licence_grant(pack=release.pack, holder_org=org)
    inst = install(alice, release, lic)
    index_now()
    client = api_for(alice)
    ns = inst.namespace.key
    resp = client.post(SEARCH, {"query": QUERY, "namespaces": [ns]}, format="json")
    assert resp.status_code == 402 and resp.json()["error"]["code"] == "seat_required"
    assert chat(client, namespaces=[ns]).json()["error"]["code"] == "seat_required"
    svc.seat_assign(actor=Subject(user=boss), licence=lic, user=alice)
    assert client.post(SEARCH, {"query": QUERY, "namespaces": [ns]}, format="json").status_code == 200
    # A member who leaves the organization loses the seat's use even before an admin takes it back.
    org.memberships.filter(user=alice).delete()
    resp = client.post(SEARCH, {"query": QUERY, "namespaces": [ns]}, format="json")
    assert resp.status_code == 402 and resp.json()["error"]["code"] == "seat_required"


def test_a_refund_removes_access_everywhere_and_a_renewal_after_suspension_restores_it(setup, api_for, alice):
    lic, inst = setup()
    client = api_for(alice)
    ns = inst.namespace.key
    cube = MemCube.objects.filter(namespace=inst.namespace).first()

    svc.licence_end(licence=lic, status=LicenceStatus.SUSPENDED, reason="payment failed")
    assert client.post(SEARCH, {"query": QUERY, "namespaces": [ns]}, format="json").status_code == 404
    assert pack_hits(client.post(SEARCH, {"query": QUERY}, format="json").json(), ns) == []
    assert client.get(f"/api/v1/memories?namespace={ns}").status_code == 404
    assert client.get(f"/api/v1/memories/{cube.id}").status_code == 404
    assert chat(client, namespaces=[ns]).status_code == 404
    assert all(m["namespace"] != ns for m in chat(client).json()["memhub"]["memories"])

    svc.licence_renew(licence=lic, until=timezone.now() + timedelta(days=30), reason="invoice.paid")
    assert pack_hits(client.post(SEARCH, {"query": QUERY}, format="json").json(), ns)
    assert client.get(f"/api/v1/memories/{cube.id}").status_code == 200
    assert any(m["namespace"] == ns for m in chat(client, namespaces=[ns]).json()["memhub"]["memories"])

    svc.licence_end(licence=lic, status=LicenceStatus.REFUNDED, reason="refund")
    assert client.get(f"/api/v1/memories/{cube.id}").status_code == 404
    assert pack_hits(client.post(SEARCH, {"query": QUERY}, format="json").json(), ns) == []
    resp = client.get(f"/api/v1/memories/provenance/{cube.provenance_id}")
    assert resp.status_code == 404


# --- KV and LoRA: the scheduler uses a pack's adapter and prefix only if the licence covers the form ----


@pytest.fixture
def served(settings):  # type: ignore[no-untyped-def]
    """A base model row with, for a given installation, a ready adapter and a ready KV prefix."""
    from inference.models import ArtifactStatus, BaseModel, InstalledAdapter, KVArtifact
    from inference.selectors import pack_memories, packs_content_key

    settings.MEMHUB_KV_PROMOTE_AFTER = 1
    base = BaseModel.objects.create(
        name="tiny",
        path="/nonexistent",
        architecture="Qwen2ForCausalLM",
        config_sha256="a" * 64,
        weights_sha256="b" * 64,
        tokenizer_sha256="c" * 64,
        fingerprint="f" * 64,
    )

    def make(inst):  # type: ignore[no-untyped-def]
        ns = inst.namespace
        InstalledAdapter.objects.create(
            namespace=ns, base_model=base, path="/nonexistent", sha256="d" * 64, status=ArtifactStatus.READY
        )
        KVArtifact.objects.create(
            base_model=base,
            model_fingerprint=base.fingerprint,
            content_key=packs_content_key(packs=[(ns, pack_memories(namespace=ns))]),
            adapter_sha256="",
            dtype="float32",
            num_tokens=40,
            status=ArtifactStatus.READY,
        )
        return base

    return make


def _schedule(alice, base, ns):  # type: ignore[no-untyped-def]
    from inference.prompting import Message
    from inference.reader import memory_call_read
    from inference.scheduler import schedule_request

    messages = [Message(role="user", content=QUERY)]
    return schedule_request(
        subject=Subject(user=alice),
        base_model=base,
        namespaces=[ns],
        memory_call=memory_call_read(messages=messages),
        messages=messages,
        max_new_tokens=4,
        top_k=5,
    )


def test_kv_and_lora_are_refused_when_the_licence_covers_plaintext_only(setup, served, alice):
    _lic, inst = setup(forms=["plaintext"])
    plan = _schedule(alice, served(inst), inst.namespace)
    assert plan.adapter is None and plan.kv_artifact is None
    reasons = [d.reason for d in plan.decisions if d.action == "skip"]
    assert any("does not cover the 'lora' form" in r for r in reasons)
    assert any("does not cover the 'kv' form" in r for r in reasons)
    assert plan.used and {u.form for u in plan.used} == {"plaintext"}


def test_a_licence_covering_kv_gets_the_prefix_and_one_covering_all_forms_the_adapter(
    setup, served, alice, make_pack
):
    from inference.services.chat import _meter

    lic, inst = setup(forms=["plaintext", "kv"])
    base = served(inst)
    plan = _schedule(alice, base, inst.namespace)
    assert plan.adapter is None and plan.kv_artifact is not None
    assert {u.form for u in plan.used} == {"kv"}
    _meter(Subject(user=alice), plan)
    usage = LicenceUsage.objects.get(licence=lic)
    assert (usage.kv_uses, usage.chats, usage.retrievals) == (1, 1, 0)

    Licence.objects.filter(pk=lic.pk).update(forms=[])  # [] covers every form
    plan = _schedule(alice, base, inst.namespace)
    assert plan.adapter is not None and plan.adapter.namespace_id == inst.namespace_id
    _meter(Subject(user=alice), plan)
    usage.refresh_from_db()
    assert (usage.adapter_uses, usage.chats) == (1, 2)


def test_an_expired_licence_gets_neither_prefix_nor_adapter(setup, served, alice):
    from core.errors import ApplicationError
    from inference.prompting import Message
    from inference.services.chat import ChatRequest, chat_prepare

    lic, inst = setup()
    served(inst)
    Licence.objects.filter(pk=lic.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    request = ChatRequest(
        messages=[Message(role="user", content=QUERY)], max_new_tokens=4, namespaces=[inst.namespace.key]
    )
    with pytest.raises(ApplicationError) as exc:
        chat_prepare(subject=Subject(user=alice), request=request)
    assert exc.value.status == 402 and exc.value.code == "licence_expired"
    from vault.hooks import use_refusals

    for form in ("kv", "lora"):
        assert inst.namespace.pk in use_refusals(
            actor=Subject(user=alice), namespaces=[inst.namespace], form=form
        )
