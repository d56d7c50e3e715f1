"""Installing a licensed release: licence, workspace, background copy with progress, vector reuse,
uninstall, upgrade with diff and annotations, and the API around them."""

from __future__ import annotations

import numpy as np
import pytest

from accounts import services as accounts
from accounts.models import Namespace, NamespaceKind
from core.errors import ApplicationError, Conflict, NotFound
from governance.models import AuditEvent
from governance.policy import Subject
from marketplace import hooks
from marketplace.models import Annotation, Installation, InstallationStatus, Licence
from marketplace.services import installs
from marketplace.services import releases as release_services
from vault.models import IndexOutbox, MemCube, MemoryState

pytestmark = pytest.mark.django_db

TEXTS = (
    "The warehouse opens at seven in the morning and closes early on public holidays.",
    "Large orders must be confirmed by the regional manager before they are shipped abroad.",
    "Returned goods are inspected within three working days and refunded if they are undamaged.",
    "Customers can change their delivery address until the parcel has left the depot.",
)


@pytest.fixture
def guide(make_pack, index_now):  # type: ignore[no-untyped-def]
    pack = make_pack(slug="guide", texts=TEXTS, release=True)
    index_now()  # the publisher's memories are in the index, with their vectors
    return pack


def copies(installation: Installation) -> dict[str, MemCube]:
    return {
        str(c.provenance_id): c
        for c in MemCube.objects.filter(namespace=installation.namespace, is_canary=False).exclude(
            state=MemoryState.DELETED
        )
    }


@pytest.fixture
def seen_events():  # type: ignore[no-untyped-def]
    events: list[hooks.InstallationEvent] = []
    hooks.register_installation_hook(events.append)
    yield events
    hooks.unregister_installation_hook(events.append)


# --- installing ----------------------------------------------------------------------------------------


def test_a_free_install_grants_a_licence_copies_watermarked_memories_and_reports_progress(
    guide, alice, seen_events
):
    release = guide.releases.get()
    installation = installs.pack_install(actor=Subject(user=alice), release=release)

    assert installation.status == InstallationStatus.READY and installation.progress["step"] == "ready"
    assert installation.progress["done"] == installation.progress["total"] == len(TEXTS)
    licence = Licence.objects.get(pack=guide, holder_user=alice)
    assert installation.licence_id == licence.pk
    origin = {str(c.provenance_id): c.text for c in MemCube.objects.filter(pack_items__pack=guide)}
    got = copies(installation)
    assert set(got) == set(origin)
    assert {c.watermark_id for c in got.values()} == {installation.watermark_id}
    assert any(got[p].text != origin[p] for p in origin)  # the watermark marked at least one copy
    assert MemCube.objects.filter(namespace=installation.namespace, is_canary=True).count() == 3
    ops = list(
        AuditEvent.objects.filter(namespace_key=installation.namespace.key)
        .order_by("seq")
        .values_list("operation", flat=True)
    )
    assert ops[0] == "pack.install" and "pack.install.progress" in ops and "pack.install.ready" in ops
    assert [e.kind for e in seen_events] == ["ready"]
    assert seen_events[0].installation_id == str(installation.pk)


def test_installed_copies_reuse_the_publishers_vectors_and_are_searchable(guide, alice, api_for):
    from vault.index import get_index

    installation = installs.pack_install(actor=Subject(user=alice), release=guide.releases.get())
    assert installation.progress["vectors"] == {"reused": len(TEXTS), "embedded": 0}
    # indexed by the installer itself: no outbox row left for the index worker
    ids = [c.id for c in copies(installation).values()]
    assert not IndexOutbox.objects.filter(cube_id__in=ids, processed_at__isnull=True).exists()
    # a reused vector is close to what embedding the watermarked copy would give
    index = get_index()
    stored = index.vectors([str(i) for i in ids])
    texts = {str(c.id): c.text for c in copies(installation).values()}
    fresh = index.embedder.embed([texts[i] for i in stored])
    cosines = [float(np.dot(stored[i][1], f)) for i, f in zip(stored, fresh, strict=True)]
    assert len(cosines) == len(TEXTS) and min(cosines) > 0.95, cosines
    resp = api_for(alice).post(
        "/api/v1/memories/search",
        {"query": "regional manager confirms large orders", "namespaces": [installation.namespace.key]},
        format="json",
    )
    assert resp.status_code == 200, resp.json()
    hits = resp.json()["results"]
    assert hits and hits[0]["provenance"]["namespace"] == installation.namespace.key


def test_vector_reuse_can_be_turned_off(guide, alice, settings):
    settings.VAULT_INSTALL_VECTOR_REUSE = False
    installation = installs.pack_install(actor=Subject(user=alice), release=guide.releases.get())
    assert installation.progress["vectors"] == {"reused": 0, "embedded": len(TEXTS)}


def test_a_copy_that_changed_beyond_the_watermark_is_embedded_afresh(guide, alice):
    from vault.index.reuse import vector_reusable, word_similarity
    from vault.services import VectorSource, index_upsert_reusing

    installation = installs.pack_install(actor=Subject(user=alice), release=guide.releases.get())
    cube = next(iter(copies(installation).values()))
    source = MemCube.objects.get(provenance_id=cube.provenance_id, namespace__kind=NamespaceKind.PUBLISHER)
    other = VectorSource(
        cube_id=source.id, version=source.version, text="Something else entirely about ferries."
    )
    assert index_upsert_reusing(cube_ids=[cube.id], sources={cube.id: other}) == {
        "reused": 0,
        "embedded": 1,
        "removed": 0,
    }
    # a stale version (the publisher edited it since) is not reused either
    stale = VectorSource(cube_id=source.id, version=source.version + 1, text=source.text)
    assert index_upsert_reusing(cube_ids=[cube.id], sources={cube.id: stale})["reused"] == 0
    same = VectorSource(cube_id=source.id, version=source.version, text=source.text)
    assert index_upsert_reusing(cube_ids=[cube.id], sources={cube.id: same})["reused"] == 1
    assert word_similarity("In order to ship, call.", "To ship, call.") < 1.0
    assert vector_reusable(original="a b c d e f g h i j", copy="a b c d e f g h i k")
    assert not vector_reusable(original="a b c d", copy="w x y z")


def test_installing_twice_returns_the_same_installation(guide, alice):
    release = guide.releases.get()
    first = installs.pack_install(actor=Subject(user=alice), release=release)
    again = installs.pack_install(actor=Subject(user=alice), release=release)
    assert again.pk == first.pk
    assert Installation.objects.count() == 1 and Licence.objects.filter(holder_user=alice).count() == 1


def test_another_release_in_the_same_workspace_points_at_the_upgrade(guide, alice, expert):
    installs.pack_install(actor=Subject(user=alice), release=guide.releases.get())
    from marketplace import services as market

    market.pack_add_memories(
        actor=Subject(user=expert), pack=guide, items=[{"text": "Parcels weigh at most 30 kg."}]
    )
    newer = release_services.release_publish(actor=Subject(user=expert), pack=guide, version="1.1.0")
    with pytest.raises(Conflict, match="upgrade") as exc:
        installs.pack_install(actor=Subject(user=alice), release=newer)
    assert exc.value.code == "already_installed" and Installation.objects.count() == 1


def test_a_paid_pack_needs_a_licence_and_nothing_is_written_without_one(make_pack, alice, api_for):
    from marketplace.services.licences import licence_grant

    pack = make_pack(
        slug="paid",
        texts=("Premium fact about tides.",),
        release=True,
        price_model="one_time",
        price_cents=900,
    )
    resp = api_for(alice).post("/api/v1/marketplace/packs/acme/paid/install", {}, format="json")
    assert resp.status_code == 402, resp.json()
    assert resp.json()["error"]["code"] == "licence_required" and "licence" in resp.json()["error"]["message"]
    assert not Installation.objects.exists() and not Licence.objects.filter(holder_user=alice).exists()
    assert not Namespace.objects.filter(kind=NamespaceKind.INSTALLATION).exists()
    licence_grant(pack=pack, holder_user=alice, reason="test purchase")
    resp = api_for(alice).post("/api/v1/marketplace/packs/acme/paid/install", {}, format="json")
    assert resp.status_code == 201, resp.json()
    assert resp.json()["status"] == "ready"


def test_workspace_is_the_users_or_one_of_their_agents(guide, alice, bob, api_for):
    client = api_for(alice)
    for bad, why in (
        ("robot", "agent:<API token id>"),
        ("agent:" + "0" * 8 + "-0000-0000-0000-" + "0" * 12, "No live API token"),
    ):
        resp = client.post("/api/v1/marketplace/packs/acme/guide/install", {"workspace": bad}, format="json")
        assert resp.status_code == 400, resp.json()
        assert why in resp.json()["error"]["message"] and resp.json()["error"]["code"] == "invalid_workspace"
    bobs_token, _ = accounts.api_token_create(user=bob, name="bob-agent")
    resp = client.post(
        "/api/v1/marketplace/packs/acme/guide/install", {"workspace": f"agent:{bobs_token.pk}"}, format="json"
    )
    assert resp.status_code == 400 and "No live API token" in resp.json()["error"]["message"]
    assert not Installation.objects.exists()

    token, _ = accounts.api_token_create(user=alice, name="support-agent")
    own = client.post("/api/v1/marketplace/packs/acme/guide/install", {}, format="json")
    agent = client.post(
        "/api/v1/marketplace/packs/acme/guide/install", {"workspace": f"agent:{token.pk}"}, format="json"
    )
    assert own.status_code == 201 and agent.status_code == 201, agent.json()
    assert agent.json()["workspace"] == f"agent:{token.pk}" and own.json()["workspace"] == ""
    assert agent.json()["namespace"] != own.json()["namespace"]
    # one licence covers both workspaces
    assert Licence.objects.filter(holder_user=alice).count() == 1


def test_a_large_pack_is_copied_in_celery_after_commit(guide, alice, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        installation = installs.pack_install(
            actor=Subject(user=alice), release=guide.releases.get(), inline=False
        )
    assert installation.status == InstallationStatus.PENDING and not copies(installation)
    assert installation.progress == {"step": "queued", "done": 0, "total": len(TEXTS)}
    for callback in callbacks:  # Celery is eager in tests: the task runs here
        callback()
    installation.refresh_from_db()
    assert installation.status == InstallationStatus.READY and len(copies(installation)) == len(TEXTS)
    # idempotent: a second run changes nothing
    installs.installation_run(installation_id=installation.pk)
    assert MemCube.objects.filter(namespace=installation.namespace).count() == len(TEXTS) + 3


def test_a_failed_copy_is_marked_and_a_rerun_completes_it_without_duplicates(
    guide, alice, monkeypatch, settings
):
    settings.MARKETPLACE_INSTALL_CHUNK = 2
    real = installs.memory_import_batch
    calls = {"n": 0}

    def flaky(**kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("database went away")
        return real(**kwargs)

    monkeypatch.setattr(installs, "memory_import_batch", flaky)
    installation = installs.pack_install(
        actor=Subject(user=alice), release=guide.releases.get(), inline=False
    )
    installation = installs.installation_run(installation_id=installation.pk)
    assert installation.status == InstallationStatus.FAILED and "database went away" in installation.error
    assert installation.progress["done"] == 2  # the first chunk was committed
    assert AuditEvent.objects.filter(operation="pack.install.failed").exists()
    installation = installs.installation_run(installation_id=installation.pk)
    assert installation.status == InstallationStatus.READY
    assert len(copies(installation)) == len(TEXTS)
    assert MemCube.objects.filter(namespace=installation.namespace, is_canary=True).count() == 3


# --- the API: detail, uninstall, reinstall ---------------------------------------------------------------


def test_installation_detail_shows_status_and_progress_and_others_get_404(guide, alice, bob, api_for):
    body = api_for(alice).post("/api/v1/marketplace/packs/acme/guide/install", {}, format="json").json()
    resp = api_for(alice).get(f"/api/v1/marketplace/installations/{body['id']}")
    assert resp.status_code == 200 and resp.json()["status"] == "ready"
    assert resp.json()["progress"]["done"] == len(TEXTS)
    for path in ("", "/diff", "/annotations"):
        assert api_for(bob).get(f"/api/v1/marketplace/installations/{body['id']}{path}").status_code == 404
    assert api_for(bob).delete(f"/api/v1/marketplace/installations/{body['id']}").status_code == 404
    up = api_for(bob).post(
        f"/api/v1/marketplace/installations/{body['id']}/upgrade", {"version": "2.0.0"}, format="json"
    )
    assert up.status_code == 404
    assert Installation.objects.get().status == InstallationStatus.READY


def test_uninstall_removes_access_everywhere_and_reinstalling_works(
    guide, alice, api_for, index_now, seen_events
):
    client = api_for(alice)
    body = client.post("/api/v1/marketplace/packs/acme/guide/install", {}, format="json").json()
    ns_key = body["namespace"]
    search = {"query": "regional manager confirms large orders", "namespaces": [ns_key]}
    assert client.post("/api/v1/memories/search", search, format="json").json()["results"]

    resp = client.delete(f"/api/v1/marketplace/installations/{body['id']}")
    assert resp.status_code == 200 and resp.json()["status"] == "removed" and resp.json()["removed_at"]
    index_now()
    installation = Installation.objects.get(pk=body["id"])
    assert not MemCube.objects.filter(namespace=installation.namespace).exists()
    assert installation.namespace.suspended_reason
    assert client.get(f"/api/v1/memories?namespace={ns_key}").status_code == 404
    assert client.post("/api/v1/memories/search", search, format="json").status_code in (403, 404)
    everywhere = client.post(
        "/api/v1/memories/search", {"query": "regional manager confirms large orders"}, format="json"
    )
    assert all(h["provenance"]["namespace"] != ns_key for h in everywhere.json()["results"])
    assert [e.kind for e in seen_events] == ["ready", "removed"]
    assert client.get("/api/v1/marketplace/installations").json() == []
    assert AuditEvent.objects.filter(operation="pack.uninstall").exists()

    again = client.post("/api/v1/marketplace/packs/acme/guide/install", {}, format="json")
    assert again.status_code == 201 and again.json()["id"] != body["id"]
    assert Licence.objects.filter(holder_user=alice).count() == 1


# --- upgrade, diff, annotations --------------------------------------------------------------------------


@pytest.fixture
def upgraded_setup(guide, expert, alice, api_for):  # type: ignore[no-untyped-def]
    """alice installs 1.0.0 and annotates; the publisher changes one memory, deletes one, adds one, 1.1.0."""
    from marketplace import services as market
    from vault.services import memory_delete, memory_update

    client = api_for(alice)
    body = client.post("/api/v1/marketplace/packs/acme/guide/install", {}, format="json").json()
    installation = Installation.objects.get(pk=body["id"])
    before = copies(installation)
    publisher_cubes = {c.text: c for c in MemCube.objects.filter(pack_items__pack=guide)}
    changed, removed, kept = publisher_cubes[TEXTS[0]], publisher_cubes[TEXTS[1]], publisher_cubes[TEXTS[2]]
    for cube in (changed, kept):
        resp = client.put(
            f"/api/v1/marketplace/installations/{body['id']}/annotations/{cube.provenance_id}",
            {"note": f"my note on {cube.text[:10]}", "tags": ["mine"]},
            format="json",
        )
        assert resp.status_code == 200, resp.json()
    memory_update(
        actor=Subject(user=expert),
        cube_id=changed.id,
        expected_version=changed.version,
        data={"text": "The warehouse opens at eight in the morning and closes early on public holidays."},
    )
    memory_delete(actor=Subject(user=expert), cube_id=removed.id)
    added = market.pack_add_memories(
        actor=Subject(user=expert),
        pack=guide,
        items=[{"text": "Parcels heavier than thirty kilograms travel by freight."}],
    )[0]
    release_services.release_publish(actor=Subject(user=expert), pack=guide, version="1.1.0")
    return {
        "client": client,
        "id": body["id"],
        "installation": installation,
        "before": before,
        "changed": changed,
        "removed": removed,
        "kept": kept,
        "added": added,
    }


def test_upgrade_applies_the_diff_in_place_and_keeps_annotations(upgraded_setup, seen_events):
    s = upgraded_setup
    client, iid = s["client"], s["id"]
    resp = client.post(
        f"/api/v1/marketplace/installations/{iid}/upgrade", {"version": "1.1.0"}, format="json"
    )
    assert resp.status_code == 200, resp.json()
    assert resp.json()["version"] == "1.1.0" and resp.json()["previous_version"] == "1.0.0"
    installation = Installation.objects.get(pk=iid)
    after = copies(installation)
    kept, changed = str(s["kept"].provenance_id), str(s["changed"].provenance_id)
    removed, added = str(s["removed"].provenance_id), str(s["added"].provenance_id)
    # unchanged: the very same row, untouched
    assert after[kept].id == s["before"][kept].id and after[kept].version == s["before"][kept].version
    assert after[kept].updated_at == s["before"][kept].updated_at
    # changed: a new version of the same copy, watermarked for this installation
    assert after[changed].id == s["before"][changed].id and after[changed].version == 2
    assert "eight" in after[changed].text and after[changed].watermark_id == installation.watermark_id
    assert removed not in after
    assert MemCube.objects.get(pk=s["before"][removed].id).state == MemoryState.DELETED
    assert added in after and after[added].watermark_id == installation.watermark_id
    assert set(Annotation.objects.filter(installation=installation).values_list("note", flat=True)) == {
        f"my note on {s['changed'].text[:10]}",
        f"my note on {s['kept'].text[:10]}",
    }
    diff = client.get(f"/api/v1/marketplace/installations/{iid}/diff").json()
    assert diff["from_version"] == "1.0.0" and diff["to_version"] == "1.1.0"
    assert diff["changed"] == [changed] and diff["removed"] == [removed] and diff["added"] == [added]
    assert kept in diff["unchanged"] and diff["counts"]["unchanged"] == 2
    # (the hook was registered after the install): the upgrade tells inference to rebuild
    assert [(e.kind, e.reason) for e in seen_events] == [("ready", "upgraded to 1.1.0")]
    assert AuditEvent.objects.filter(operation="pack.upgrade").exists()
    # searchable at once: the changed and added copies were indexed by the upgrade
    hits = client.post(
        "/api/v1/memories/search",
        {
            "query": "parcels heavier than thirty kilograms freight",
            "namespaces": [installation.namespace.key],
        },
        format="json",
    ).json()["results"]
    assert hits and hits[0]["provenance"]["provenance_id"] == added


def test_upgrade_bad_input_changes_nothing(upgraded_setup, alice):
    s = upgraded_setup
    client, iid = s["client"], s["id"]
    resp = client.post(
        f"/api/v1/marketplace/installations/{iid}/upgrade", {"version": "9.9.9"}, format="json"
    )
    assert resp.status_code == 404 and "9.9.9" in resp.json()["error"]["message"]
    resp = client.post(
        f"/api/v1/marketplace/installations/{iid}/upgrade", {"version": "1.0.0"}, format="json"
    )
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "not_newer"
    resp = client.post(
        f"/api/v1/marketplace/installations/{iid}/upgrade", {"versoin": "1.1.0"}, format="json"
    )
    assert resp.status_code == 400
    installation = Installation.objects.get(pk=iid)
    assert installation.release.version == "1.0.0" and installation.last_diff == {}
    assert {p: c.version for p, c in copies(installation).items()} == {
        p: c.version for p, c in s["before"].items()
    }


def test_annotations_crud_and_bad_input(guide, alice, bob, api_for):
    client = api_for(alice)
    body = client.post("/api/v1/marketplace/packs/acme/guide/install", {}, format="json").json()
    pid = str(next(iter(MemCube.objects.filter(pack_items__pack=guide))).provenance_id)
    base = f"/api/v1/marketplace/installations/{body['id']}/annotations"
    put = client.put(f"{base}/{pid}", {"note": "check this", "tags": ["todo"]}, format="json")
    assert put.status_code == 200 and put.json()["note"] == "check this"
    put = client.put(f"{base}/{pid}", {"note": "checked"}, format="json")
    assert put.status_code == 200 and put.json()["tags"] == []
    listed = client.get(base).json()
    assert [(a["provenance_id"], a["note"]) for a in listed] == [(pid, "checked")]
    # bad input: unknown memory, bad tags, unknown field; nothing written
    unknown = client.put(f"{base}/00000000-0000-0000-0000-000000000000", {"note": "x"}, format="json")
    assert (
        unknown.status_code == 404 and "not part of this installation" in unknown.json()["error"]["message"]
    )
    assert client.put(f"{base}/{pid}", {"tags": [""]}, format="json").status_code == 400
    assert client.put(f"{base}/{pid}", {"nope": 1}, format="json").status_code == 400
    assert client.put(f"{base}/{pid}", {"tags": ["x"] * 51}, format="json").status_code == 400
    assert Annotation.objects.get().note == "checked" and Annotation.objects.count() == 1
    assert api_for(bob).put(f"{base}/{pid}", {"note": "mine"}, format="json").status_code == 404
    assert api_for(bob).delete(f"{base}/{pid}").status_code == 404
    assert client.delete(f"{base}/{pid}").status_code == 204
    assert client.delete(f"{base}/{pid}").status_code == 404
    assert not Annotation.objects.exists()


def test_services_refuse_others_and_bad_values(guide, alice, bob):
    installation = installs.pack_install(actor=Subject(user=alice), release=guide.releases.get())
    with pytest.raises(NotFound):
        installs.installation_remove(actor=Subject(user=bob), installation=installation)
    with pytest.raises(NotFound):
        installs.installation_upgrade(actor=Subject(user=bob), installation=installation, version="1.0.0")
    pid = next(iter(copies(installation)))
    with pytest.raises(ApplicationError, match="'note'"):
        installs.annotation_put(
            actor=Subject(user=alice), installation=installation, provenance_id=pid, note="x" * 10_001
        )
    installation.refresh_from_db()
    assert installation.status == InstallationStatus.READY and not Annotation.objects.exists()


def test_a_lost_race_on_the_unique_constraint_returns_the_winner(guide, alice, monkeypatch):
    """If the check before creating misses a concurrent install, the constraint answers, not a 500."""
    release = guide.releases.get()
    winner = installs.pack_install(actor=Subject(user=alice), release=release)
    real = installs._live_installation
    calls = {"n": 0}

    def blind_first(**kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        return None if calls["n"] == 1 else real(**kwargs)

    monkeypatch.setattr(installs, "_live_installation", blind_first)
    assert installs.pack_install(actor=Subject(user=alice), release=release).pk == winner.pk
    assert calls["n"] == 2 and Installation.objects.count() == 1
    assert Namespace.objects.filter(kind=NamespaceKind.INSTALLATION).count() == 1
