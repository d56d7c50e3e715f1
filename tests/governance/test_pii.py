"""PII reports through the API: scan an upload or a namespace, redact or pseudonymize as new versions,
accept a false positive, and the publish gate refusing while findings above the threshold remain."""

from __future__ import annotations

import pytest

from core.errors import Conflict
from governance.models import AuditEvent, PiiAcceptance, PiiScanReport
from governance.pii import pii_publish_gate
from governance.policy import Subject
from tests.governance.factories import org_with_roles
from vault.models import MemCube, MemCubeVersion

pytestmark = pytest.mark.django_db

SCAN = "/api/v1/governance/pii/scan"
GATE = "/api/v1/governance/pii/gate"
REPORTS = "/api/v1/governance/pii/reports"

EMAIL_TEXT = "Ask the harbour master at jane.doe@fastmail.fm about the tide tables."
PHONE_TEXT = "The harbour office is on +44 20 7946 0958 until noon."
IP_TEXT = "The chart server answers at 10.1.2.3 on weekdays."  # scores 0.6: below a 0.7 threshold
CLEAN_TEXT = "High tide comes roughly fifty minutes later each day."


@pytest.fixture
def client(alice, api_for):
    return api_for(alice)


def create(client, text):
    return client.post("/api/v1/memories", {"namespace": "user:alice", "text": text}, format="json").json()


def test_scanning_an_upload_stores_a_report_without_the_values(client):
    resp = client.post(
        SCAN, {"namespace": "user:alice", "texts": [EMAIL_TEXT, CLEAN_TEXT, PHONE_TEXT]}, format="json"
    )
    assert resp.status_code == 202, resp.json()  # queued for the worker (eager in tests: already done)
    body = resp.json()
    assert body["status"] == "done" and body["source"] == "texts" and body["texts_scanned"] == 3
    assert body["counts"] == {"EMAIL": 1, "PHONE": 1}
    assert {(f["text_index"], f["type"], f["status"]) for f in body["findings"]} == {
        (0, "EMAIL", "open"),
        (2, "PHONE", "open"),
    }
    assert body["blocking"] == 2 and body["publishable"] is False and body["texts"] is None
    stored = PiiScanReport.objects.get(pk=body["id"])
    # neither the values nor the texts they came from stay with the report
    assert "jane.doe@fastmail.fm" not in str(stored.report) and "7946" not in str(stored.report)
    assert "tide tables" not in str(stored.report)
    assert client.get(f"{REPORTS}/{body['id']}").json()["blocking"] == 2
    assert client.get(REPORTS, {"namespace": "user:alice"}).json()["count"] == 1
    assert AuditEvent.objects.get(operation="pii.scan").details["findings"] == 2


def test_redacting_an_upload_returns_clean_texts(client):
    body = client.post(
        SCAN, {"namespace": "user:alice", "texts": [EMAIL_TEXT, CLEAN_TEXT], "mode": "redact"}, format="json"
    ).json()
    assert body["texts"] == ["Ask the harbour master at <EMAIL> about the tide tables.", CLEAN_TEXT]
    assert client.get(f"{REPORTS}/{body['id']}").json()["texts"] == body["texts"]
    assert MemCube.objects.count() == 0  # texts are not stored


def test_redacting_memories_writes_new_versions(client):
    dirty, clean = create(client, EMAIL_TEXT), create(client, CLEAN_TEXT)
    body = client.post(SCAN, {"namespace": "user:alice", "mode": "redact"}, format="json").json()
    assert body["rewritten"] == {dirty["id"]: 2} and body["blocking"] == 0
    assert [f["status"] for f in body["findings"]] == ["resolved"]
    assert (
        client.get(f"/api/v1/memories/{dirty['id']}").json()["text"]
        == "Ask the harbour master at <EMAIL> about the tide tables."
    )
    history = client.get(f"/api/v1/memories/{dirty['id']}/history").json()
    assert history[-1]["reason"] == "pii redact" and history[-1]["version"] == 2
    assert MemCube.objects.get(pk=clean["id"]).version == 1  # untouched


def test_pseudonyms_agree_across_memories_and_scans(client):
    a = create(client, "Mail jane.doe@fastmail.fm or bob.k@posteo.de today.")
    b = create(client, "Again: jane.doe@fastmail.fm.")
    client.post(
        SCAN, {"namespace": "user:alice", "mode": "pseudonymize", "memories": [a["id"]]}, format="json"
    )
    client.post(
        SCAN, {"namespace": "user:alice", "mode": "pseudonymize", "memories": [b["id"]]}, format="json"
    )
    assert MemCube.objects.get(pk=a["id"]).text == "Mail <EMAIL_1> or <EMAIL_2> today."
    assert MemCube.objects.get(pk=b["id"]).text == "Again: <EMAIL_1>."


def test_accepting_a_finding_lets_the_gate_pass_until_the_text_changes(client, alice):
    m = create(client, IP_TEXT)
    view = client.post(GATE, {"namespace": "user:alice"}, format="json")
    assert view.status_code == 409
    err = view.json()["error"]
    assert err["code"] == "pii_unresolved" and err["extra"]["blocking"] == 1
    finding = err["extra"]["findings"][0]
    assert finding["memory_id"] == m["id"] and finding["type"] == "IP_ADDRESS"
    report_id = err["extra"]["report"]
    assert PiiScanReport.objects.filter(pk=report_id, source="gate").exists()  # the refusal is on record
    resp = client.post(
        f"{REPORTS}/{report_id}/resolve",
        {"action": "accept", "findings": [finding["id"]], "reason": "documentation address"},
        format="json",
    )
    assert resp.status_code == 200 and resp.json()["findings"][0]["status"] == "accepted"
    assert PiiAcceptance.objects.get().reason == "documentation address"
    ok = client.post(GATE, {"namespace": "user:alice"}, format="json")
    assert ok.status_code == 200 and ok.json()["publishable"] is True
    # the service the marketplace calls agrees
    assert pii_publish_gate(actor=Subject(user=alice), namespace_key="user:alice").ok
    # a new text needs a new review
    client.patch(
        f"/api/v1/memories/{m['id']}", {"expected_version": 1, "text": IP_TEXT + " Really."}, format="json"
    )
    with pytest.raises(Conflict):
        pii_publish_gate(actor=Subject(user=alice), namespace_key="user:alice")


def test_threshold_decides_what_blocks(client):
    create(client, IP_TEXT)
    assert client.post(GATE, {"namespace": "user:alice", "threshold": 0.7}, format="json").status_code == 200
    assert client.post(GATE, {"namespace": "user:alice", "threshold": 0.5}, format="json").status_code == 409


def test_the_threshold_setting_is_the_default(client, settings):
    create(client, IP_TEXT)
    settings.MEMHUB_PII_BLOCKING_THRESHOLD = 0.7
    assert client.post(GATE, {"namespace": "user:alice"}, format="json").status_code == 200


def test_resolving_by_redacting_one_finding(client):
    m = create(client, EMAIL_TEXT + " " + PHONE_TEXT)
    report = client.post(SCAN, {"namespace": "user:alice"}, format="json").json()
    email = next(f for f in report["findings"] if f["type"] == "EMAIL")
    resp = client.post(
        f"{REPORTS}/{report['id']}/resolve", {"action": "redact", "findings": [email["id"]]}, format="json"
    )
    assert resp.status_code == 200
    text = MemCube.objects.get(pk=m["id"]).text
    assert "<EMAIL>" in text and "7946" in text  # only the chosen finding was redacted
    statuses = {f["type"]: f["status"] for f in resp.json()["findings"]}
    assert statuses == {"EMAIL": "resolved", "PHONE": "stale"}  # the memory was rewritten: rescan it
    again = client.post(GATE, {"namespace": "user:alice"}, format="json")
    assert again.status_code == 409 and again.json()["error"]["extra"]["findings"][0]["type"] == "PHONE"


def test_stale_findings_cannot_be_resolved(client):
    m = create(client, EMAIL_TEXT)
    report = client.post(SCAN, {"namespace": "user:alice"}, format="json").json()
    client.patch(f"/api/v1/memories/{m['id']}", {"expected_version": 1, "text": "rewritten"}, format="json")
    fid = report["findings"][0]["id"]
    resp = client.post(
        f"{REPORTS}/{report['id']}/resolve", {"action": "accept", "findings": [fid]}, format="json"
    )
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "stale_finding"
    assert PiiAcceptance.objects.count() == 0


def test_frozen_memories_refuse_redaction_and_nothing_is_written(client):
    m = create(client, EMAIL_TEXT)
    client.post(f"/api/v1/memories/{m['id']}/lifecycle", {"action": "freeze"}, format="json")
    versions, reports = MemCubeVersion.objects.count(), PiiScanReport.objects.count()
    resp = client.post(SCAN, {"namespace": "user:alice", "mode": "redact"}, format="json")
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "frozen"
    assert MemCubeVersion.objects.count() == versions and PiiScanReport.objects.count() == reports


def test_who_may_scan_and_read_reports(make_user, api_for):
    _org, users = org_with_roles(make_user)
    api_for(users["owner"]).post(
        "/api/v1/memories", {"namespace": "org:acme", "text": EMAIL_TEXT}, format="json"
    )
    member = api_for(users["member"])
    report = member.post(SCAN, {"namespace": "org:acme"}, format="json")
    assert report.status_code == 202
    assert api_for(users["viewer"]).post(SCAN, {"namespace": "org:acme"}, format="json").status_code == 403
    assert api_for(users["viewer"]).get(f"{REPORTS}/{report.json()['id']}").status_code == 200
    assert api_for(users["outsider"]).post(SCAN, {"namespace": "org:acme"}, format="json").status_code == 404
    assert api_for(users["outsider"]).get(f"{REPORTS}/{report.json()['id']}").status_code == 404
    fid = report.json()["findings"][0]["id"]
    assert (
        api_for(users["viewer"])
        .post(
            f"{REPORTS}/{report.json()['id']}/resolve", {"action": "accept", "findings": [fid]}, format="json"
        )
        .status_code
        == 403
    )


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"namespace": "user:alice", "mode": "shred"}, 400, "mode"),
        (
            {"namespace": "user:alice", "texts": ["a"], "memories": ["00000000-0000-0000-0000-000000000000"]},
            400,
            "not both",
        ),
        ({"namespace": "user:alice", "texts": []}, 400, "at least one"),
        ({"namespace": "user:alice", "texts": [42]}, 400, "texts"),
        ({"namespace": "user:alice", "threshold": 1.5}, 400, "threshold"),
        ({"namespace": "user:alice", "memories": ["00000000-0000-0000-0000-000000000000"]}, 404, "not found"),
        ({"namespace": "user:nobody"}, 404, "not found"),
        ({"namespace": "user:alice", "texts": ["a"], "language": "en"}, 400, "Unknown field 'language'"),
    ],
)
def test_bad_scans_are_4xx_and_write_nothing(client, body, status, needle):
    create(client, EMAIL_TEXT)

    def written():  # a refused request leaves only its own `access.denied` audit entry
        audits = AuditEvent.objects.exclude(operation="access.denied").count()
        return PiiScanReport.objects.count(), MemCubeVersion.objects.count(), audits

    counts = written()
    resp = client.post(SCAN, body, format="json")
    assert resp.status_code == status, resp.json()
    assert needle in resp.json()["error"]["message"], resp.json()
    assert written() == counts


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"action": "ignore", "findings": ["x"]}, 400, "action"),
        ({"action": "accept", "findings": []}, 400, "findings"),
        ({"action": "accept", "findings": ["no-such-finding"]}, 400, "not in this report"),
        ({"action": "accept"}, 400, "findings"),
    ],
)
def test_bad_resolutions_are_4xx_and_write_nothing(client, body, status, needle):
    create(client, EMAIL_TEXT)
    report = client.post(SCAN, {"namespace": "user:alice"}, format="json").json()
    audits = AuditEvent.objects.count()
    resp = client.post(f"{REPORTS}/{report['id']}/resolve", body, format="json")
    assert resp.status_code == status and needle in resp.json()["error"]["message"], resp.json()
    assert PiiAcceptance.objects.count() == 0 and AuditEvent.objects.count() == audits


def test_text_reports_cannot_redact_stored_memories(client):
    report = client.post(SCAN, {"namespace": "user:alice", "texts": [EMAIL_TEXT]}, format="json").json()
    fid = report["findings"][0]["id"]
    resp = client.post(
        f"{REPORTS}/{report['id']}/resolve", {"action": "redact", "findings": [fid]}, format="json"
    )
    assert resp.status_code == 400 and "scan them again" in resp.json()["error"]["message"]
    ok = client.post(
        f"{REPORTS}/{report['id']}/resolve", {"action": "accept", "findings": [fid]}, format="json"
    )
    assert ok.json()["blocking"] == 0 and ok.json()["findings"][0]["status"] == "accepted"
