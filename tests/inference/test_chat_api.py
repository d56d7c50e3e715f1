"""POST /v1/chat/completions: retrieval-only mode, generation, streaming, provenance and isolation."""

from __future__ import annotations

import json

import pytest

from governance.models import AuditEvent
from inference.models import SchedulerDecision
from tests.inference.django_fixtures import chat

pytestmark = pytest.mark.django_db


def sse_events(response) -> list:  # type: ignore[no-untyped-def]
    body = b"".join(response.streaming_content).decode()
    events = [line.removeprefix("data: ") for line in body.split("\n\n") if line.startswith("data: ")]
    return [e if e == "[DONE]" else json.loads(e) for e in events]


def test_without_a_model_it_answers_in_a_clearly_labelled_retrieval_only_mode(
    alice, api_for, alice_notes, settings
):
    settings.MEMHUB_MODEL_PATH = ""
    resp = chat(api_for(alice), "Which seat does Alice prefer on the ferry?")

    assert resp.status_code == 200, resp.json()
    body = resp.json()
    content = body["choices"][0]["message"]["content"]
    assert content.startswith("[MemHub retrieval-only mode: no generator is configured")
    assert "window seats" in content
    assert body["model"] == "memhub-retrieval-only" and body["object"] == "chat.completion"
    memhub = body["memhub"]
    assert memhub["mode"] == "retrieval-only"
    seat = next(m for m in memhub["memories"] if m["title"] == "Seat preference")
    assert seat["form"] == "plaintext" and seat["namespace"] == "user:alice" and seat["label"].startswith("M")
    assert seat["provenance"]["provenance_id"] and seat["provenance"]["content_sha256"]
    assert any("retrieval-only mode" in d["reason"] for d in memhub["decisions"])


def test_with_a_model_it_generates_and_reports_memories_decisions_and_audit(
    alice, api_for, alice_notes, installed_pack, generator
):
    resp = chat(api_for(alice), "When do ferries leave for Tarsk?", max_tokens=6)

    assert resp.status_code == 200, resp.json()
    body = resp.json()
    assert body["model"] == "tiny-qwen2"
    assert isinstance(body["choices"][0]["message"]["content"], str)
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    assert 0 < body["usage"]["completion_tokens"] <= 6 and body["usage"]["prompt_tokens"] > 20
    memhub = body["memhub"]
    assert memhub["mode"] == "generation" and len(memhub["model_fingerprint"]) == 64
    used = {m["title"]: m for m in memhub["memories"]}
    assert "Ferry timetable" in used
    assert used["Ferry timetable"]["namespace"] == installed_pack.namespace.key
    assert used["Ferry timetable"]["provenance"]["licence"] == "memhub-standard-1.0"
    assert memhub["memory_call"]["intent"] == "question"
    assert "Tarsk" in memhub["memory_call"]["entities"]

    # The decision log and the audit log both hold the request.
    rows = SchedulerDecision.objects.filter(request_id=memhub["request_id"])
    assert rows.filter(action="use", form="plaintext").count() == sum(
        1 for m in memhub["memories"] if m["form"] == "plaintext"
    )
    # The read is audited like any other: one entry per namespace read, naming the memories used.
    events = [
        e
        for e in AuditEvent.objects.filter(operation="inference.chat")
        if e.details.get("request_id") == memhub["request_id"]
    ]
    assert {e.namespace_key for e in events} == {m["namespace"] for m in memhub["memories"]}
    assert {i for e in events for i in e.object_ids} == {m["id"] for m in memhub["memories"] if m["id"]}
    assert all(set(e.details["namespaces"]) == {n["namespace"] for n in memhub["namespaces"]} for e in events)


def test_streaming_sends_openai_chunks_then_provenance_then_done(alice, api_for, alice_notes, generator):
    client = api_for(alice)
    plain = chat(client, "Which seat does Alice prefer?", max_tokens=6).json()
    resp = chat(client, "Which seat does Alice prefer?", max_tokens=6, stream=True)

    assert resp.status_code == 200
    assert resp["Content-Type"].startswith("text/event-stream")
    events = sse_events(resp)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    final = chunks[-1]
    assert final["choices"][0]["finish_reason"] in ("stop", "length")
    assert final["memhub"]["mode"] == "generation"
    assert final["usage"]["completion_tokens"] == plain["usage"]["completion_tokens"]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    # Greedy decoding: the stream spells out exactly what the non-streaming call answered.
    assert text == plain["choices"][0]["message"]["content"]
    assert [m["id"] for m in final["memhub"]["memories"]] == [m["id"] for m in plain["memhub"]["memories"]]


def test_retrieval_only_streaming_is_labelled_too(alice, api_for, alice_notes, settings):
    settings.MEMHUB_MODEL_PATH = ""
    events = sse_events(chat(api_for(alice), "Which seat does Alice prefer?", stream=True))
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in events[:-1])
    assert text.startswith("[MemHub retrieval-only mode")
    assert events[-2]["memhub"]["mode"] == "retrieval-only"


def test_another_tenants_memories_never_appear(alice, bob, api_for, alice_notes, bob_secret, settings):
    settings.MEMHUB_MODEL_PATH = ""
    client = api_for(alice)
    body = chat(client, "What is the gate code for pier 3 of the Tarsk ferry?").json()
    secret_id = str(bob_secret[0].id)
    assert all(m["id"] != secret_id for m in body["memhub"]["memories"])
    assert "4471" not in body["choices"][0]["message"]["content"]
    # Naming bob's namespace is answered as if it did not exist.
    resp = chat(client, "gate code?", memhub={"namespaces": ["user:bob"]})
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"


def test_namespaces_narrow_what_is_used(alice, api_for, alice_notes, installed_pack, settings):
    settings.MEMHUB_MODEL_PATH = ""
    body = chat(api_for(alice), "ferry", memhub={"namespaces": [installed_pack.namespace.key]}).json()
    assert body["memhub"]["memories"]
    assert {m["namespace"] for m in body["memhub"]["memories"]} == {installed_pack.namespace.key}


def test_time_range_that_matches_nothing_is_widened_and_logged(alice, api_for, alice_notes, settings):
    settings.MEMHUB_MODEL_PATH = ""
    body = chat(api_for(alice), "Which seat did Alice prefer in 2019?").json()
    memhub = body["memhub"]
    assert memhub["memory_call"]["time_range"]["label"] == "in 2019"
    assert memhub["memory_call"]["filters"]["created_before"].startswith("2020-01-01")
    assert any(d["action"] == "fallback" and "matched nothing" in d["reason"] for d in memhub["decisions"])
    assert any(m["title"] == "Seat preference" for m in memhub["memories"])


def test_memories_beyond_the_context_budget_are_skipped_and_logged(alice, api_for, alice_notes, settings):
    settings.MEMHUB_MODEL_PATH = ""
    settings.MEMHUB_CONTEXT_TOKENS = 180  # room for one short memory after the reserved answer tokens
    body = chat(api_for(alice), "Alice ferry dentist seat", max_tokens=128).json()
    memhub = body["memhub"]
    assert len(memhub["memories"]) == 1
    assert any(
        d["action"] == "skip" and "over the context budget" in d["reason"] for d in memhub["decisions"]
    )


def test_the_decision_log_is_readable_by_its_caller_only(alice, bob, api_for, alice_notes, settings):
    settings.MEMHUB_MODEL_PATH = ""
    body = chat(api_for(alice), "Which seat does Alice prefer?").json()
    url = f"/v1/memhub/requests/{body['memhub']['request_id']}/decisions"
    mine = api_for(alice).get(url)
    assert mine.status_code == 200 and mine.json()["decisions"]
    assert api_for(bob).get(url).status_code == 404
