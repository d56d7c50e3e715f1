"""Publishing an immutable release and installing it into a read-only namespace."""

import pytest

from accounts import services as accounts
from core.errors import NotFound, PermissionDenied
from governance.models import AuditEvent
from governance.policy import Subject
from marketplace import services as market
from marketplace.models import Installation, Publisher
from vault.models import MemCube

pytestmark = pytest.mark.django_db


@pytest.fixture
def publisher(make_user):
    expert = make_user("expert")
    org = accounts.organization_create(owner=expert, slug="acme")
    return expert, market.publisher_create(
        actor=Subject(user=expert), organization=org, slug="acme", display_name="Acme"
    )


@pytest.fixture
def released_pack(publisher):
    expert, pub = publisher
    pack = market.pack_create(actor=Subject(user=expert), publisher=pub, slug="tips", title="Tips")
    market.pack_add_memories(
        actor=Subject(user=expert), pack=pack, items=[{"text": "Tip one."}, {"text": "Tip two."}]
    )
    release = market.release_publish(actor=Subject(user=expert), pack=pack, version="1.0.0")
    return pack, release


def test_release_manifest_lists_each_memory_with_its_hash(released_pack):
    _, release = released_pack
    hashes = {m["content_sha256"] for m in release.manifest["memories"]}
    assert len(hashes) == 2 and len(release.manifest_sha256) == 64


def test_release_versions_are_immutable_and_semver(publisher, released_pack):
    expert, _ = publisher
    pack, _ = released_pack
    with pytest.raises(Exception, match="immutable"):
        market.release_publish(actor=Subject(user=expert), pack=pack, version="1.0.0")
    with pytest.raises(Exception, match="semantic version"):
        market.release_publish(actor=Subject(user=expert), pack=pack, version="v1")


def test_install_via_api_copies_memories_read_only_with_provenance(released_pack, alice, api_for):
    _pack, _release = released_pack
    client = api_for(alice)
    resp = client.post("/api/v1/marketplace/packs/acme/tips/install", {}, format="json")
    assert resp.status_code == 201, resp.json()
    ns_key = resp.json()["namespace"]
    listed = client.get(f"/api/v1/memories?namespace={ns_key}").json()
    origin = {str(c.provenance_id): c.text for c in MemCube.objects.filter(namespace__key="publisher:acme")}
    copies = {m["provenance_id"]: m for m in listed["results"] if m["provenance_id"] in origin}
    assert set(copies) == set(origin)  # every released memory, traceable to its original
    # the rest are this installation's canaries, indistinguishable from pack memories
    assert len(listed["results"]) > len(origin)
    watermark_ids = {m["watermark_id"] for m in listed["results"]}
    assert len(watermark_ids) == 1 and "" not in watermark_ids
    # installed memories are read-only for their holder
    mid = listed["results"][0]["id"]
    patch = client.patch(f"/api/v1/memories/{mid}", {"expected_version": 1, "text": "edited"}, format="json")
    assert patch.status_code == 403 and "read-only" in patch.json()["error"]["message"]
    # installing twice is idempotent: the same installation, 200 rather than 201
    again = client.post("/api/v1/marketplace/packs/acme/tips/install", {}, format="json")
    assert again.status_code == 200 and again.json()["id"] == resp.json()["id"]
    assert Installation.objects.filter(user=alice).count() == 1


def test_other_users_do_not_see_an_installation(released_pack, alice, bob, api_for):
    ns_key = (
        api_for(alice)
        .post("/api/v1/marketplace/packs/acme/tips/install", {}, format="json")
        .json()["namespace"]
    )
    assert api_for(bob).get(f"/api/v1/memories?namespace={ns_key}").status_code == 404
    assert api_for(bob).get("/api/v1/marketplace/installations").json() == []


def test_paid_pack_install_is_refused_with_402(publisher, alice, api_for):
    expert, pub = publisher
    pack = market.pack_create(
        actor=Subject(user=expert), publisher=pub, slug="paid", title="Paid", price_cents=500
    )
    market.pack_add_memories(actor=Subject(user=expert), pack=pack, items=[{"text": "Premium fact."}])
    market.release_publish(actor=Subject(user=expert), pack=pack, version="1.0.0")
    resp = api_for(alice).post("/api/v1/marketplace/packs/acme/paid/install", {}, format="json")
    assert resp.status_code == 402 and resp.json()["error"]["code"] == "licence_required"
    assert "licence" in resp.json()["error"]["message"]
    assert not Installation.objects.exists()


def test_install_bad_input(released_pack, alice, api_for):
    client = api_for(alice)
    assert client.post("/api/v1/marketplace/packs/acme/nope/install", {}, format="json").status_code == 404
    resp = client.post("/api/v1/marketplace/packs/acme/tips/install", {"version": "9.9.9"}, format="json")
    assert resp.status_code == 404 and "9.9.9" in resp.json()["error"]["message"]
    resp = client.post("/api/v1/marketplace/packs/acme/tips/install", {"versoin": "1.0.0"}, format="json")
    assert resp.status_code == 400
    assert not Installation.objects.exists()


def test_catalog_lists_packs(released_pack, alice, api_for, index_now):
    from marketplace.services.catalog import catalog_sync

    catalog_sync(pack_id=released_pack[0].pk)  # on commit in production; tests run in a transaction
    index_now()
    # The catalog is paginated and shows each listing's latest release (docs/marketplace/catalog.md).
    packs = api_for(alice).get("/api/v1/marketplace/packs?q=tip").json()["results"]
    assert [p["slug"] for p in packs] == ["tips"] and packs[0]["latest_release"]["version"] == "1.0.0"


def test_publishing_is_refused_while_pii_findings_remain(publisher):
    expert, pub = publisher
    pack = market.pack_create(actor=Subject(user=expert), publisher=pub, slug="leaky", title="Leaky")
    market.pack_add_memories(
        actor=Subject(user=expert),
        pack=pack,
        items=[
            {"text": "Write to jane.doe@northwind-traders.com or call +44 7700 900123 for the spreadsheet."}
        ],
    )
    with pytest.raises(Exception, match="personal-data") as exc:
        market.release_publish(actor=Subject(user=expert), pack=pack, version="1.0.0")
    assert exc.value.code == "pii_unresolved"
    assert not pack.releases.exists()


def test_leaked_installation_text_is_attributed_to_its_installer(
    released_pack, publisher, alice, bob, api_for
):
    """End to end: two users install; text leaked from alice's copy names alice's installation."""
    expert, pub = publisher
    pack = market.pack_create(actor=Subject(user=expert), publisher=pub, slug="guide", title="Guide")
    market.pack_add_memories(
        actor=Subject(user=expert),
        pack=pack,
        items=[
            {"text": t}
            for t in (
                "The warehouse opens at seven in the morning and closes early on public holidays.",
                "Large orders must be confirmed by the regional manager before they are shipped abroad.",
                "Returned goods are inspected within three working days and refunded if they are undamaged.",
                "Customers can change their delivery address until the parcel has left the depot.",
                "Fragile items are packed in double boxes with plenty of paper padding around them.",
            )
        ],
    )
    market.release_publish(actor=Subject(user=expert), pack=pack, version="1.0.0")
    installs = {
        u.username: api_for(u).post("/api/v1/marketplace/packs/acme/guide/install", {}, format="json").json()
        for u in (alice, bob)
    }
    leaked = "\n".join(
        m["text"]
        for m in api_for(alice)
        .get(f"/api/v1/memories?namespace={installs['alice']['namespace']}")
        .json()["results"]
    )
    resp = api_for(expert).post("/api/v1/governance/watermark/detect", {"text": leaked}, format="json")
    assert resp.status_code == 200, resp.json()
    body = resp.json()
    alice_wm = Installation.objects.get(user=alice, release__pack=pack).watermark_id
    assert body["accused"] and body["installation_id"] == alice_wm
    assert body["adjusted_p_value"] < 0.001


# --- the caller's Subject (scopes, purpose) holds all the way down ------------------------------------


def test_marketplace_endpoints_need_the_marketplace_scope(released_pack, alice, api_for):
    client = api_for(alice, scopes=["memories:read", "memories:write"])
    for resp in (
        client.get("/api/v1/marketplace/packs"),
        client.get("/api/v1/marketplace/packs/acme/tips"),
        client.post("/api/v1/marketplace/packs/acme/tips/install", {}, format="json"),
        client.get("/api/v1/marketplace/installations"),
    ):
        assert resp.status_code == 403, resp.content
        assert "'marketplace' scope" in resp.json()["error"]["message"]
    assert not Installation.objects.exists()


def test_services_refuse_a_subject_without_the_marketplace_scope(publisher, released_pack, alice):
    expert, pub = publisher
    _pack, release = released_pack
    no_market = frozenset({"memories:read", "memories:write"})
    with pytest.raises(PermissionDenied, match="'marketplace' scope"):
        market.pack_install(actor=Subject(user=alice, scopes=no_market), release=release)
    with pytest.raises(PermissionDenied, match="'marketplace' scope"):
        market.pack_create(actor=Subject(user=expert, scopes=no_market), publisher=pub, slug="x", title="X")
    assert not Installation.objects.exists() and pub.packs.count() == 1


def test_publishing_with_a_token_lacking_memories_write_is_refused(publisher):
    expert, pub = publisher
    pack = market.pack_create(actor=Subject(user=expert), publisher=pub, slug="ro", title="Read-only")
    read_only = Subject(user=expert, scopes=frozenset({"marketplace", "memories:read"}))
    with pytest.raises(PermissionDenied, match="'memories:write' scope"):
        market.pack_add_memories(actor=read_only, pack=pack, items=[{"text": "Planted."}])
    assert not MemCube.objects.filter(tags__contains=["pack:ro"]).exists()


def test_only_org_admins_register_a_publisher(make_user, alice):
    expert = make_user("expert")
    org = accounts.organization_create(owner=expert, slug="globex")
    with pytest.raises(NotFound):
        market.publisher_create(actor=Subject(user=alice), organization=org, slug="globex")
    assert not Publisher.objects.filter(slug="globex").exists()


def test_install_audit_keeps_the_tokens_purpose(released_pack, alice, api_for):
    client = api_for(alice, scopes=["marketplace", "memories:read"])
    resp = client.post(
        "/api/v1/marketplace/packs/acme/tips/install", {}, format="json", HTTP_X_MEMHUB_PURPOSE="onboarding"
    )
    assert resp.status_code == 201, resp.json()
    event = AuditEvent.objects.filter(operation="pack.install").latest("at")
    assert event.details["purpose"] == "onboarding" and event.details["token"]


def test_a_memory_erased_after_release_is_not_installed_from_that_release(publisher, released_pack, alice):
    from vault.services import memory_purge

    expert, _ = publisher
    _pack, release = released_pack
    erased = MemCube.objects.get(namespace__key="publisher:acme", text="Tip two.")
    memory_purge(actor=Subject(user=expert), cube_id=erased.pk, reason="erasure request")

    installation = market.pack_install(actor=Subject(user=alice), release=release)

    copies = MemCube.objects.filter(namespace=installation.namespace)
    kept = MemCube.objects.get(namespace__key="publisher:acme", text="Tip one.")
    assert not copies.filter(provenance_id=erased.provenance_id).exists()
    # matched by provenance: the watermark may change the copy's wording or add zero-width marks
    assert copies.filter(provenance_id=kept.provenance_id).exists()
    assert not copies.filter(text__contains="[erased]").exists()


def test_prices_read_as_amounts_with_their_currency():
    from marketplace.models import Pack

    assert Pack(price_cents=0).price_display == "free"
    assert Pack(price_model="one_time", price_cents=499).price_display == "4.99 USD"
    assert Pack(price_model="one_time", price_cents=1000, currency="eur").price_display == "10.00 EUR"
    assert Pack(price_model="subscription", price_cents=900).price_display == "9.00 USD / month"
    assert Pack(price_model="metered", price_cents=50).price_display == "0.50 USD / 1,000 retrievals"
