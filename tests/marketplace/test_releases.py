"""Releases: immutable SemVer releases of a pack's items, a signed canonical manifest, verification,
diffs between versions, and who may publish."""

from __future__ import annotations

import hashlib

import pytest

from core.errors import ApplicationError, Conflict, PermissionDenied
from core.signing import instance_signer
from governance.models import AuditEvent, PiiScanReport
from governance.policy import Subject
from marketplace import services as market
from marketplace.manifest import manifest_canonical, manifest_verify
from marketplace.models import PackItem, PackRelease, PublisherMember, PublisherRole
from marketplace.services.releases import release_diff, release_publish
from vault.models import MemCube, MemCubeVersion
from vault.services import memory_purge, memory_update

pytestmark = pytest.mark.django_db

BASE = "/api/v1/marketplace/packs/acme"
LEAKY = "Write to jane.doe@northwind-traders.com or call +44 7700 900123 for the spreadsheet."


def _cube(text: str) -> MemCube:
    return MemCube.objects.get(namespace__key="publisher:acme", text=text)


def _no_release_written(pack) -> None:  # type: ignore[no-untyped-def]
    assert not PackRelease.objects.filter(pack=pack).exists()
    assert not AuditEvent.objects.filter(operation="pack.release").exists()


# --- publishing ---------------------------------------------------------------------------------------


def test_publish_signs_a_canonical_manifest_of_the_pack_items(expert, make_pack):
    pack = make_pack(texts=("Tip one.", "Tip two."))
    type(pack).objects.filter(pk=pack.pk).update(
        forms=["plaintext", "kv"], base_models=["qwen-0.5b"], licence_days=30, seats=3, quota_per_period=500
    )
    pack.refresh_from_db()

    release = release_publish(actor=Subject(user=expert), pack=pack, version="1.0.0", notes="## First\n")

    m = release.manifest
    assert (m["format"], m["format_version"], m["publisher"], m["pack"], m["version"]) == (
        "memhub.pack-manifest",
        1,
        "acme",
        "tips",
        "1.0.0",
    )
    assert m["licence"] == {
        "name": pack.licence,
        "price_model": "free",
        "seats": 3,
        "licence_days": 30,
        "quota_per_period": 500,
        "forms": ["kv", "plaintext"],
        "federation_allowed": False,
    }
    assert m["base_models"] == ["qwen-0.5b"]
    assert m["changelog_sha256"] == hashlib.sha256(b"## First\n").hexdigest()
    cubes = {str(c.provenance_id): c for c in MemCube.objects.filter(pack_items__pack=pack)}
    assert [i["provenance_id"] for i in m["memories"]] == sorted(cubes)
    for item in m["memories"]:
        assert item["content_sha256"] == cubes[item["provenance_id"]].content_sha256
        assert item["version"] == 1 and item["kind"] == "plaintext"
    # the release id is the SHA-256 of the RFC 8785 bytes; the signature is the instance key's
    signer = instance_signer()
    assert release.manifest_sha256 == release.release_id == hashlib.sha256(manifest_canonical(m)).hexdigest()
    assert release.signing_key_id == signer.key_id == m["origin"]["key_id"]
    assert manifest_verify(m, release.signature, signer.public_key_b64)
    assert release.memory_versions.count() == 2 and release.notes == "## First\n"
    event = AuditEvent.objects.get(operation="pack.release")
    assert event.actor_id == expert.pk and event.details["manifest_sha256"] == release.manifest_sha256


def test_only_the_packs_own_items_are_released(expert, make_pack):
    first = make_pack(slug="first", texts=("Only in first.",))
    make_pack(slug="second", texts=("Only in second.",))
    release = release_publish(actor=Subject(user=expert), pack=first, version="0.1.0")
    assert [i["provenance_id"] for i in release.manifest["memories"]] == [
        str(_cube("Only in first.").provenance_id)
    ]


def test_adapter_items_carry_their_blob_hash_and_model(expert, make_pack):
    pack = make_pack(texts=("Plain tip.",))
    blob = hashlib.sha256(b"adapter bytes").hexdigest()
    market.pack_add_memories(
        actor=Subject(user=expert),
        pack=pack,
        items=[
            {
                "kind": "parameter",
                "text": "Support adapter",
                "blob_uri": "file:///adapters/support",
                "blob_sha256": blob,
                "model_fingerprint": "qwen2:abc",
                "blob_meta": {"base_model": "Qwen/Qwen2.5-0.5B-Instruct"},
            }
        ],
    )
    release = release_publish(actor=Subject(user=expert), pack=pack, version="1.0.0")
    lora = next(i for i in release.manifest["memories"] if i["kind"] == "parameter")
    assert lora["blob_sha256"] == blob and lora["model_fingerprint"] == "qwen2:abc"
    assert lora["base_model"] == "Qwen/Qwen2.5-0.5B-Instruct"
    plain = next(i for i in release.manifest["memories"] if i["kind"] == "plaintext")
    assert "blob_sha256" not in plain


def test_a_release_freezes_the_version_it_shipped(expert, make_pack):
    pack = make_pack(texts=("Tip one.",))
    release = release_publish(actor=Subject(user=expert), pack=pack, version="1.0.0")
    cube = _cube("Tip one.")
    memory_update(
        actor=Subject(user=expert), cube_id=cube.pk, expected_version=1, data={"text": "Tip one, v2."}
    )
    release.refresh_from_db()
    assert release.manifest["memories"][0]["version"] == 1
    assert [v.text for v in release.memory_versions.all()] == ["Tip one."]
    newer = release_publish(actor=Subject(user=expert), pack=pack, version="1.1.0")
    assert newer.manifest["memories"][0]["version"] == 2
    assert newer.manifest_sha256 != release.manifest_sha256


@pytest.mark.parametrize("bad", ["v1", "1.0", "01.0.0", "1.0.0+build", "1.0.0-", "9" * 41])
def test_a_malformed_version_is_a_400_and_writes_nothing(expert, make_pack, api_for, bad):
    pack = make_pack()
    resp = api_for(expert).post(f"{BASE}/tips/releases", {"version": bad}, format="json")
    assert resp.status_code == 400, resp.json()
    err = resp.json()["error"]
    assert "semantic version" in err["message"] or "40 characters" in err["message"]
    _no_release_written(pack)


def test_versions_are_immutable_and_must_increase(expert, make_pack, api_for):
    pack = make_pack()
    client = api_for(expert)
    assert client.post(f"{BASE}/tips/releases", {"version": "1.1.0"}, format="json").status_code == 201
    for version, code in (
        ("1.1.0", "version_exists"),
        ("1.0.5", "version_not_increasing"),
        ("1.1.0-rc.1", "version_not_increasing"),
    ):
        resp = client.post(f"{BASE}/tips/releases", {"version": version}, format="json")
        assert resp.status_code == 409, resp.json()
        assert resp.json()["error"]["code"] == code and version in resp.json()["error"]["message"]
    assert list(pack.releases.values_list("version", flat=True)) == ["1.1.0"]
    # a pre-release of a higher version follows, and its release after it
    assert client.post(f"{BASE}/tips/releases", {"version": "1.2.0-rc.1"}, format="json").status_code == 201
    assert client.post(f"{BASE}/tips/releases", {"version": "1.2.0"}, format="json").status_code == 201


def test_an_empty_pack_is_not_released(expert, make_pack, api_for):
    pack = make_pack(texts=())
    resp = api_for(expert).post(f"{BASE}/tips/releases", {"version": "1.0.0"}, format="json")
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "empty_pack"
    assert "no live memories" in resp.json()["error"]["message"]
    _no_release_written(pack)


def test_a_deleted_item_is_not_content(expert, make_pack):
    from vault.services import memory_delete

    pack = make_pack(texts=("Only tip.",))
    memory_delete(actor=Subject(user=expert), cube_id=_cube("Only tip.").pk)
    with pytest.raises(ApplicationError, match="no live memories"):
        release_publish(actor=Subject(user=expert), pack=pack, version="1.0.0")


def test_unresolved_pii_blocks_publishing_with_the_report(expert, make_pack, api_for):
    pack = make_pack(slug="leaky", texts=(LEAKY,))
    resp = api_for(expert).post(f"{BASE}/leaky/releases", {"version": "1.0.0"}, format="json")
    assert resp.status_code == 409, resp.json()
    err = resp.json()["error"]
    assert err["code"] == "pii_unresolved" and "personal-data" in err["message"]
    assert err["extra"]["blocking"] >= 1 and err["extra"]["findings"]
    report = PiiScanReport.objects.get(pk=err["extra"]["report"])  # kept for the publisher to resolve
    assert report.namespace.key == "publisher:acme"
    _no_release_written(pack)


def test_publishing_passes_once_the_findings_are_accepted(expert, make_pack):
    from governance.pii import pii_resolve

    pack = make_pack(slug="leaky", texts=(LEAKY,))
    with pytest.raises(Conflict) as exc:
        release_publish(actor=Subject(user=expert), pack=pack, version="1.0.0")
    report_id = exc.value.extra["report"]
    view_ids = [f["id"] for f in PiiScanReport.objects.get(pk=report_id).report["findings"]]
    pii_resolve(
        actor=Subject(user=expert), report_id=report_id, action="accept", finding_ids=view_ids, reason="fake"
    )
    release = release_publish(actor=Subject(user=expert), pack=pack, version="1.0.0")
    assert release.card["pii"]["blocking"] == 0 and release.card["pii"]["by_status"].get("accepted")


# --- who may publish ----------------------------------------------------------------------------------


def test_a_publisher_member_outside_the_org_publishes_and_is_audited(expert, publisher, make_pack, make_user):
    member = make_user("writer")
    PublisherMember.objects.create(publisher=publisher, user=member, role=PublisherRole.PUBLISHER)
    pack = make_pack()

    release = release_publish(actor=Subject(user=member), pack=pack, version="1.0.0")

    assert release.manifest["memories"]
    assert AuditEvent.objects.get(operation="pack.release").actor_id == member.pk
    gate = AuditEvent.objects.filter(operation="pii.gate").latest("at")
    assert "writer" in gate.actor_label  # the gate ran as the platform on the member's behalf


def test_a_non_member_may_not_publish(expert, make_pack, alice, api_for):
    pack = make_pack()
    with pytest.raises(PermissionDenied, match="do not publish for 'acme'"):
        release_publish(actor=Subject(user=alice), pack=pack, version="1.0.0")
    resp = api_for(alice).post(f"{BASE}/tips/releases", {"version": "1.0.0"}, format="json")
    assert resp.status_code == 403 and "do not publish" in resp.json()["error"]["message"]
    _no_release_written(pack)


@pytest.mark.parametrize(
    ("scopes", "missing"),
    [(["memories:read", "memories:write"], "marketplace"), (["marketplace"], "memories:write")],
)
def test_publishing_needs_the_marketplace_and_write_scopes(expert, make_pack, api_for, scopes, missing):
    pack = make_pack()
    resp = api_for(expert, scopes=scopes).post(f"{BASE}/tips/releases", {"version": "1.0.0"}, format="json")
    assert resp.status_code == 403 and f"'{missing}' scope" in resp.json()["error"]["message"]
    _no_release_written(pack)


def test_reading_releases_needs_the_marketplace_scope(expert, make_pack, alice, api_for):
    make_pack(release=True)
    client = api_for(alice, scopes=["memories:read"])
    for url in (f"{BASE}/tips/releases", f"{BASE}/tips/releases/1.0.0", f"{BASE}/tips/releases/1.0.0/verify"):
        resp = client.get(url)
        assert resp.status_code == 403 and "'marketplace' scope" in resp.json()["error"]["message"]


def test_publish_input_is_strict(expert, make_pack, api_for):
    pack = make_pack()
    client = api_for(expert)
    for body in ({}, {"version": 1}, {"version": "1.0.0", "notse": "typo"}, {"version": "1.0.0", "notes": 5}):
        resp = client.post(f"{BASE}/tips/releases", body, format="json")
        assert resp.status_code == 400, (body, resp.json())
    _no_release_written(pack)


def test_the_catalog_is_synced_after_the_release_commits(
    expert, make_pack, monkeypatch, django_capture_on_commit_callbacks
):
    from marketplace.services import catalog

    pack = make_pack()
    synced: list = []
    monkeypatch.setattr(catalog, "catalog_sync_enqueue", synced.append)
    with django_capture_on_commit_callbacks(execute=True):
        release_publish(actor=Subject(user=expert), pack=pack, version="1.0.0")
    assert pack.id in synced


# --- reading ------------------------------------------------------------------------------------------


def test_anyone_with_the_scope_lists_and_reads_releases(expert, make_pack, alice, api_for):
    pack = make_pack(release=True)
    release_publish(actor=Subject(user=expert), pack=pack, version="1.9.0")
    market.pack_add_memories(actor=Subject(user=expert), pack=pack, items=[{"text": "Tip three."}])
    release_publish(actor=Subject(user=expert), pack=pack, version="1.10.0", notes="More.")
    client = api_for(alice)

    listed = client.get(f"{BASE}/tips/releases")
    assert listed.status_code == 200
    assert [r["version"] for r in listed.json()] == [
        "1.10.0",
        "1.9.0",
        "1.0.0",
    ]  # SemVer order, not text order
    assert listed.json()[0]["memories"] == 3 and listed.json()[0]["notes"] == "More."

    detail = client.get(f"{BASE}/tips/releases/1.10.0").json()
    stored = pack.releases.get(version="1.10.0")
    assert detail["release_id"] == stored.manifest_sha256
    assert detail["manifest"] == stored.manifest and detail["signature"] == stored.signature
    assert detail["signing_key_id"] == instance_signer().key_id and detail["card"]["memories"]["total"] == 3
    assert manifest_verify(detail["manifest"], detail["signature"], instance_signer().public_key_b64)


def test_unknown_versions_and_packs_are_404(expert, make_pack, alice, api_for):
    make_pack(release=True)
    client = api_for(alice)
    for url in (
        f"{BASE}/tips/releases/9.9.9",
        f"{BASE}/tips/releases/9.9.9/verify",
        f"{BASE}/tips/releases/9.9.9/diff",
        f"{BASE}/tips/releases/1.0.0/diff?from=0.0.1",
        f"{BASE}/nope/releases",
        "/api/v1/marketplace/packs/nobody/tips/releases/1.0.0",
    ):
        resp = client.get(url)
        assert resp.status_code == 404, url
        assert "not found" in resp.json()["error"]["message"]


def test_an_unlisted_packs_releases_are_only_for_its_publishers(expert, make_pack, alice, api_for):
    pack = make_pack(release=True)
    type(pack).objects.filter(pk=pack.pk).update(listed=False)
    assert api_for(alice).get(f"{BASE}/tips/releases").status_code == 404
    assert api_for(expert).get(f"{BASE}/tips/releases").status_code == 200


# --- verification -------------------------------------------------------------------------------------


def test_a_stored_release_verifies(expert, make_pack, alice, api_for):
    make_pack(release=True)
    body = api_for(alice).get(f"{BASE}/tips/releases/1.0.0/verify").json()
    assert body["valid"] and body["manifest_sha256_ok"] and body["signature_ok"] and body["key_known"]
    assert body["items"] == {
        "checked": 2,
        "ok": 2,
        "mismatched": [],
        "missing": [],
        "unlisted": [],
        "erased": [],
    }


def test_a_tampered_manifest_fails_verification(expert, make_pack, api_for):
    pack = make_pack(release=True)
    release = pack.releases.get()
    manifest = release.manifest
    manifest["licence"]["seats"] = 1000  # someone edits the stored row
    PackRelease.objects.filter(pk=release.pk).update(manifest=manifest)
    body = api_for(expert).get(f"{BASE}/tips/releases/1.0.0/verify").json()
    assert body["valid"] is False and body["manifest_sha256_ok"] is False and body["signature_ok"] is False
    assert body["recomputed_sha256"] != body["release_id"]


def test_tampered_content_in_the_vault_fails_verification(expert, make_pack, api_for):
    pack = make_pack(release=True)
    cube = _cube("Tip one.")
    MemCubeVersion.objects.filter(cube=cube, version=1).update(text="Tip one, quietly changed.")
    body = api_for(expert).get(f"{BASE}/tips/releases/1.0.0/verify").json()
    assert body["valid"] is False and body["manifest_sha256_ok"] and body["signature_ok"]
    assert body["items"]["mismatched"] == [str(cube.provenance_id)] and body["items"]["ok"] == 1
    assert pack.releases.count() == 1


def test_a_swapped_signature_fails_verification(expert, make_pack, api_for):
    pack = make_pack(release=True)
    PackRelease.objects.filter(pack=pack).update(signature="A" * 86)
    body = api_for(expert).get(f"{BASE}/tips/releases/1.0.0/verify").json()
    assert body["valid"] is False and body["signature_ok"] is False and body["manifest_sha256_ok"]


def test_an_erased_memory_is_reported_not_called_tampering(expert, make_pack, api_for):
    make_pack(release=True)
    cube = _cube("Tip two.")
    memory_purge(actor=Subject(user=expert), cube_id=cube.pk, reason="erasure request")
    body = api_for(expert).get(f"{BASE}/tips/releases/1.0.0/verify").json()
    assert body["valid"] is True
    assert body["items"]["erased"] == [str(cube.provenance_id)] and body["items"]["ok"] == 1


# --- diffs --------------------------------------------------------------------------------------------


def test_diff_between_releases_by_provenance(expert, make_pack, alice, api_for):
    pack = make_pack(texts=("Keep me.", "Change me.", "Remove me."), release=True)
    old = pack.releases.get()
    keep, change, remove = (_cube(t) for t in ("Keep me.", "Change me.", "Remove me."))
    memory_update(
        actor=Subject(user=expert), cube_id=change.pk, expected_version=1, data={"text": "Changed."}
    )
    PackItem.objects.filter(pack=pack, cube=remove).delete()
    added = market.pack_add_memories(actor=Subject(user=expert), pack=pack, items=[{"text": "New one."}])[0]
    new = release_publish(actor=Subject(user=expert), pack=pack, version="2.0.0")

    expected = {
        "added": [str(added.provenance_id)],
        "changed": [str(change.provenance_id)],
        "removed": [str(remove.provenance_id)],
        "unchanged": [str(keep.provenance_id)],
    }
    assert release_diff(old=old, new=new) == expected
    assert release_diff(old=None, new=old)["added"] == sorted(
        str(c.provenance_id) for c in (keep, change, remove)
    )
    client = api_for(alice)
    body = client.get(f"{BASE}/tips/releases/2.0.0/diff?from=1.0.0").json()
    assert body == {"from_version": "1.0.0", "to_version": "2.0.0", **expected}
    assert client.get(f"{BASE}/tips/releases/2.0.0/diff").json() == body  # default: the previous release
    first = client.get(f"{BASE}/tips/releases/1.0.0/diff").json()
    assert first["from_version"] is None and len(first["added"]) == 3


def test_diff_bad_input(expert, make_pack, api_for):
    make_pack(release=True)
    client = api_for(expert)
    resp = client.get(f"{BASE}/tips/releases/1.0.0/diff?from=1.0.0")
    assert resp.status_code == 400 and "another version" in resp.json()["error"]["message"]
    resp = client.get(f"{BASE}/tips/releases/1.0.0/diff?form=0.1.0")
    assert resp.status_code == 400 and "Unknown query parameter 'form'" in resp.json()["error"]["message"]


# --- concurrency (PostgreSQL) -------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_publishes_of_one_version_give_one_release(expert, make_pack):
    import threading

    from django.db import connection

    pack = make_pack()
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def publish() -> None:
        try:
            barrier.wait()
            release_publish(actor=Subject(user=expert), pack=pack, version="1.0.0")
            outcomes.append("published")
        except Conflict as exc:
            outcomes.append(exc.code)
        except Exception as exc:  # anything else is the bug this test is for
            outcomes.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=publish) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["published", "version_exists"]
    assert PackRelease.objects.filter(pack=pack).count() == 1
