"""The publisher studio: profiles, members, listings with price and terms, explicit content, previews."""

from __future__ import annotations

import pytest

from accounts import services as accounts
from core.errors import ApplicationError, Conflict, NotFound, PermissionDenied
from governance.models import AuditEvent
from governance.policy import Subject
from marketplace import services as market
from marketplace.models import Pack, PackItem, Publisher, PublisherMember
from marketplace.selectors.studio import pack_items
from marketplace.services import studio
from vault.models import MemCube, MemCubeVersion

pytestmark = pytest.mark.django_db

BASE = "/api/v1/marketplace"


@pytest.fixture
def client(expert, api_for, publisher):  # type: ignore[no-untyped-def]
    return api_for(expert)


# --- publishers ----------------------------------------------------------------------------------------


def test_personal_publisher_is_owned_by_its_user(alice, api_for):
    resp = api_for(alice).post(
        f"{BASE}/publishers", {"slug": "alice-notes", "display_name": "Alice"}, format="json"
    )
    assert resp.status_code == 201, resp.json()
    body = resp.json()
    assert body["owner"] == "alice" and body["organization"] is None and body["role"] == "owner"
    assert body["namespace"] == "publisher:alice-notes"
    pub = Publisher.objects.get(slug="alice-notes")
    assert pub.owner_user == alice and pub.namespace.owner_user == alice
    assert AuditEvent.objects.filter(operation="publisher.create", actor=alice).exists()
    listed = api_for(alice).get(f"{BASE}/publishers").json()
    assert [p["slug"] for p in listed] == ["alice-notes"]


def test_org_publisher_through_the_api_needs_an_org_admin(alice, bob, api_for):
    org = accounts.organization_create(owner=alice, slug="globex")
    resp = api_for(bob).post(
        f"{BASE}/publishers", {"slug": "globex", "organization": "globex"}, format="json"
    )
    assert resp.status_code == 404  # bob is not in the organization: it does not exist for him
    resp = api_for(alice).post(
        f"{BASE}/publishers", {"slug": "globex", "organization": "globex"}, format="json"
    )
    assert resp.status_code == 201 and resp.json()["organization"] == "globex"
    assert Publisher.objects.get(slug="globex").organization == org
    again = api_for(alice).post(
        f"{BASE}/publishers", {"slug": "globex2", "organization": "globex"}, format="json"
    )
    assert again.status_code == 409 and "already has a publisher" in again.json()["error"]["message"]


def test_publisher_bad_input_writes_nothing(alice, bob, api_for):
    accounts.organization_create(owner=bob, slug="initech")
    client = api_for(alice)
    for body, needle in (
        ({"slug": "Bad Slug"}, "slug"),
        ({"slug": "ok", "website": "not a url"}, "website"),
        ({"slug": "ok", "colour": "red"}, "Unknown field 'colour'"),
        ({"slug": "initech"}, "organization's name"),
    ):
        resp = client.post(f"{BASE}/publishers", body, format="json")
        assert resp.status_code in (400, 409), (body, resp.json())
        assert needle in str(resp.json()["error"]), (body, resp.json())
    assert not Publisher.objects.exclude(slug="acme").exists()
    with pytest.raises(Conflict):
        studio.publisher_create(actor=Subject(user=alice), slug="alice-a")
        studio.publisher_create(actor=Subject(user=alice), slug="alice-a")


def test_profile_is_public_and_only_owners_edit_it(publisher, expert, alice, api_for):
    resp = api_for(alice).get(f"{BASE}/publishers/acme")
    assert resp.status_code == 200 and resp.json()["display_name"] == "Acme" and resp.json()["role"] is None
    denied = api_for(alice).patch(f"{BASE}/publishers/acme", {"bio": "hacked"}, format="json")
    assert denied.status_code == 403 and "do not publish for 'acme'" in denied.json()["error"]["message"]
    ok = api_for(expert).patch(
        f"{BASE}/publishers/acme", {"bio": "Guides", "website": "https://acme.test"}, format="json"
    )
    assert ok.status_code == 200 and ok.json()["bio"] == "Guides"
    bad = api_for(expert).patch(f"{BASE}/publishers/acme", {"display_name": ""}, format="json")
    assert bad.status_code == 400
    publisher.refresh_from_db()
    assert publisher.bio == "Guides" and publisher.display_name == "Acme"
    assert api_for(alice).get(f"{BASE}/publishers/nope").status_code == 404


def test_members_are_managed_by_owners(publisher, expert, alice, bob, api_for):
    owner = api_for(expert)
    resp = owner.post(f"{BASE}/publishers/acme/members", {"username": "alice"}, format="json")
    assert (
        resp.status_code == 201 and resp.json()["role"] == "publisher" and resp.json()["added_by"] == "expert"
    )
    # a publisher (not an owner) may not add members, nor edit the profile
    resp = api_for(alice).post(f"{BASE}/publishers/acme/members", {"username": "bob"}, format="json")
    assert resp.status_code == 403 and "Only the owners" in resp.json()["error"]["message"]
    assert api_for(alice).patch(f"{BASE}/publishers/acme", {"bio": "x"}, format="json").status_code == 403
    # members see the member list, outsiders do not
    assert [m["username"] for m in api_for(alice).get(f"{BASE}/publishers/acme/members").json()] == ["alice"]
    assert api_for(bob).get(f"{BASE}/publishers/acme/members").status_code == 403
    # a role change is a 200; unknown users and roles are refused
    assert (
        owner.post(
            f"{BASE}/publishers/acme/members", {"username": "alice", "role": "owner"}, format="json"
        ).status_code
        == 200
    )
    assert (
        owner.post(f"{BASE}/publishers/acme/members", {"username": "ghost"}, format="json").status_code == 404
    )
    assert (
        owner.post(
            f"{BASE}/publishers/acme/members", {"username": "bob", "role": "king"}, format="json"
        ).status_code
        == 400
    )
    assert not PublisherMember.objects.filter(user=bob).exists()
    # the publisher is listed for its member
    assert [p["slug"] for p in api_for(alice).get(f"{BASE}/publishers").json()] == ["acme"]
    # removal: outsiders 403, owners 204, then 404
    assert api_for(bob).delete(f"{BASE}/publishers/acme/members/alice").status_code == 403
    assert owner.delete(f"{BASE}/publishers/acme/members/alice").status_code == 204
    assert owner.delete(f"{BASE}/publishers/acme/members/alice").status_code == 404
    assert not PublisherMember.objects.exists()


def test_a_member_may_leave(publisher, expert, alice, api_for):
    studio.publisher_member_set(actor=Subject(user=expert), publisher=publisher, username="alice")
    assert api_for(alice).delete(f"{BASE}/publishers/acme/members/alice").status_code == 204
    assert not PublisherMember.objects.exists()


# --- packs: listing, price and terms -------------------------------------------------------------------


def test_create_a_pack_with_listing_price_and_terms(client):
    body = {
        "slug": "harbour",
        "title": "Harbour guide",
        "summary": "Ferries, tides and office hours.",
        "readme": "# Harbour\n\nEverything about the port.",
        "category": "travel",
        "tags": ["ferries", "tides"],
        "base_models": ["Qwen/Qwen2-0.5B"],
        "price_model": "subscription",
        "price_cents": 900,
        "seats": 5,
        "seat_limit": 100,
        "licence_days": 30,
        "quota_per_period": 10000,
        "forms": ["plaintext", "lora"],
        "federation_allowed": True,
    }
    resp = client.post(f"{BASE}/publishers/acme/packs", body, format="json")
    assert resp.status_code == 201, resp.json()
    out = resp.json()
    assert (
        out["price_display"] == "9.00 USD / month"
        and out["forms"] == ["plaintext", "lora"]
        and out["items"] == 0
    )
    pack = Pack.objects.get(slug="harbour")
    assert (pack.seats, pack.seat_limit, pack.licence_days, pack.quota_per_period) == (5, 100, 30, 10000)
    assert pack.federation_allowed and pack.category == "travel"
    assert AuditEvent.objects.filter(operation="pack.create").exists()
    listing = client.get(f"{BASE}/packs/acme/harbour/listing")
    assert listing.status_code == 200 and listing.json()["readme"].startswith("# Harbour")


def test_legacy_pack_create_with_a_price_is_one_time(publisher, expert):
    pack = market.pack_create(
        actor=Subject(user=expert), publisher=publisher, slug="paid", title="Paid", price_cents=500
    )
    assert pack.price_model == "one_time" and pack.price_display == "5.00 USD"
    free = market.pack_create(actor=Subject(user=expert), publisher=publisher, slug="free", title="Free")
    assert free.price_model == "free" and free.is_free


BAD_PACKS = [
    ({"price_model": "weekly", "price_cents": 100}, "price_model"),
    ({"price_model": "one_time", "price_cents": -1}, "price_cents must not be negative"),
    ({"price_model": "one_time", "price_cents": 0}, "needs a price above 0"),
    ({"price_model": "subscription"}, "needs a price above 0"),
    ({"price_model": "metered", "price_cents": 0}, "needs a price above 0"),
    ({"price_model": "free", "price_cents": 100}, "A free pack has no price"),
    ({"forms": ["plaintext", "telepathy"]}, "forms"),
    ({"seats": 0}, "seats (per licence) must be at least 1"),
    ({"seats": 5, "seat_limit": 2}, "below the 5 seats of one licence"),
    ({"seat_limit": 0}, "seat_limit must be at least 1"),
    ({"licence_days": 0}, "licence_days"),
    ({"quota_per_period": 0}, "quota_per_period"),
    ({"currency": "USD"}, "currency"),
    ({"category": "Not A Slug"}, "category"),
    ({"title": ""}, "title"),
    ({"tags": ["x" * 65]}, "tags"),
    ({"price_cents": "ten"}, "price_cents"),
    ({"flavour": "mint"}, "Unknown field 'flavour'"),
]


@pytest.mark.parametrize(("fields", "needle"), BAD_PACKS)
def test_bad_pack_input_is_a_400_naming_the_field(client, fields, needle):
    body = {"slug": "bad", "title": "Bad", **fields}
    resp = client.post(f"{BASE}/publishers/acme/packs", body, format="json")
    assert resp.status_code == 400, resp.json()
    assert needle in str(resp.json()["error"]), resp.json()
    assert not Pack.objects.filter(slug="bad").exists()


@pytest.mark.parametrize(("fields", "needle"), [f for f in BAD_PACKS if "Unknown field" not in f[1]])
def test_bad_pack_update_is_a_400_and_changes_nothing(client, make_pack, fields, needle):
    make_pack("tips", texts=())
    resp = client.patch(f"{BASE}/packs/acme/tips/listing", fields, format="json")
    assert resp.status_code == 400, resp.json()
    assert needle in str(resp.json()["error"]), resp.json()
    pack = Pack.objects.get(slug="tips")
    assert (pack.price_model, pack.price_cents, pack.seats, pack.forms, pack.title) == (
        "free",
        0,
        1,
        [],
        "Tips",
    )


def test_service_rules_hold_without_the_api(publisher, expert):
    actor = Subject(user=expert)
    for fields, needle in (
        ({"price_model": "weekly", "price_cents": 5}, "Unknown price model 'weekly'"),
        ({"forms": ["kv", "hologram"]}, "Unknown form 'hologram'"),
        ({"seats": 0}, "seats"),
        ({"price_cents": -5, "price_model": "one_time"}, "negative"),
    ):
        with pytest.raises(ApplicationError, match=needle) as exc:
            studio.pack_create(actor=actor, publisher=publisher, slug="svc", title="Svc", **fields)
        assert exc.value.status == 400 and exc.value.extra["field"] in fields
    assert not Pack.objects.filter(slug="svc").exists()


def test_seat_limit_cannot_drop_below_seats_sold(client, make_pack):
    pack = make_pack("seats", texts=(), price_model="one_time", price_cents=100, seat_limit=10)
    Pack.objects.filter(pk=pack.pk).update(seats_sold=7)
    resp = client.patch(f"{BASE}/packs/acme/seats/listing", {"seat_limit": 6}, format="json")
    assert resp.status_code == 400 and "below the 7 seats already sold" in resp.json()["error"]["message"]
    assert Pack.objects.get(pk=pack.pk).seat_limit == 10
    ok = client.patch(
        f"{BASE}/packs/acme/seats/listing", {"seat_limit": 7, "summary": "Seven left"}, format="json"
    )
    assert ok.status_code == 200 and ok.json()["seat_limit"] == 7


def test_price_change_to_paid_and_back(client, make_pack):
    make_pack("flip", texts=())
    paid = client.patch(
        f"{BASE}/packs/acme/flip/listing", {"price_model": "metered", "price_cents": 25}, format="json"
    )
    assert paid.status_code == 200 and paid.json()["price_display"] == "0.25 USD / 1,000 retrievals"
    half = client.patch(f"{BASE}/packs/acme/flip/listing", {"price_model": "free"}, format="json")
    assert half.status_code == 400  # still priced: free needs price_cents 0 too
    free = client.patch(
        f"{BASE}/packs/acme/flip/listing", {"price_model": "free", "price_cents": 0}, format="json"
    )
    assert free.status_code == 200 and free.json()["price_display"] == "free"


def test_duplicate_pack_slug_is_a_409(client, make_pack):
    make_pack("tips", texts=())
    resp = client.post(f"{BASE}/publishers/acme/packs", {"slug": "tips", "title": "Again"}, format="json")
    assert resp.status_code == 409 and Pack.objects.filter(slug="tips").count() == 1


def test_listing_changes_sync_the_catalog_on_commit(
    publisher, expert, django_capture_on_commit_callbacks, monkeypatch
):
    seen: list = []
    monkeypatch.setattr(studio, "catalog_sync_enqueue", seen.append)
    with django_capture_on_commit_callbacks(execute=True):
        pack = studio.pack_create(actor=Subject(user=expert), publisher=publisher, slug="cat", title="Cat")
    with django_capture_on_commit_callbacks(execute=True):
        studio.pack_update(actor=Subject(user=expert), pack=pack, summary="Now with a summary")
    with django_capture_on_commit_callbacks(execute=True):
        studio.pack_add_memories(actor=Subject(user=expert), pack=pack, items=[{"text": "A fact."}])
    assert seen == [pack.id, pack.id, pack.id]


# --- tenancy and scopes --------------------------------------------------------------------------------


def test_outsiders_cannot_author_and_unlisted_packs_do_not_exist_for_them(make_pack, alice, api_for):
    make_pack("public", texts=("Fact.",))
    make_pack("hidden", texts=("Secret.",), listed=False)
    outsider = api_for(alice)
    resp = outsider.patch(f"{BASE}/packs/acme/public/listing", {"title": "Mine"}, format="json")
    assert resp.status_code == 403 and "do not publish for 'acme'" in resp.json()["error"]["message"]
    assert (
        outsider.post(
            f"{BASE}/packs/acme/public/items", {"memories": [{"text": "Planted."}]}, format="json"
        ).status_code
        == 403
    )
    assert outsider.get(f"{BASE}/packs/acme/public/items").status_code == 403
    assert outsider.get(f"{BASE}/packs/acme/public/uploads").status_code == 403
    for path in ("listing", "items", "uploads"):
        assert outsider.get(f"{BASE}/packs/acme/hidden/{path}").status_code == 404
    assert (
        outsider.post(f"{BASE}/publishers/acme/packs", {"slug": "x", "title": "X"}, format="json").status_code
        == 403
    )
    assert [p["slug"] for p in outsider.get(f"{BASE}/publishers/acme/packs").json()] == ["public"]
    assert not MemCube.objects.filter(text="Planted.").exists() and not Pack.objects.filter(slug="x").exists()
    assert Pack.objects.get(slug="public").title == "Public"


def test_a_token_without_the_marketplace_scope_is_refused(make_pack, expert, api_for):
    make_pack("tips", texts=("Fact.",))
    client = api_for(expert, scopes=["memories:read", "memories:write"])
    for resp in (
        client.get(f"{BASE}/publishers"),
        client.post(f"{BASE}/publishers", {"slug": "mine"}, format="json"),
        client.get(f"{BASE}/publishers/acme"),
        client.get(f"{BASE}/publishers/acme/members"),
        client.post(f"{BASE}/publishers/acme/packs", {"slug": "x", "title": "X"}, format="json"),
        client.patch(f"{BASE}/packs/acme/tips/listing", {"title": "Y"}, format="json"),
        client.get(f"{BASE}/packs/acme/tips/items"),
        client.post(f"{BASE}/packs/acme/tips/items", {"memories": [{"text": "x"}]}, format="json"),
        client.get(f"{BASE}/packs/acme/tips/uploads"),
    ):
        assert resp.status_code == 403, resp.content
        assert "'marketplace' scope" in resp.json()["error"]["message"]
    assert Pack.objects.count() == 1 and not Publisher.objects.filter(slug="mine").exists()


def test_authoring_needs_memories_write(make_pack, expert, api_for):
    make_pack("tips", texts=())
    client = api_for(expert, scopes=["marketplace", "memories:read"])
    resp = client.post(f"{BASE}/packs/acme/tips/items", {"memories": [{"text": "x"}]}, format="json")
    assert resp.status_code == 403 and "'memories:write' scope" in resp.json()["error"]["message"]
    assert client.get(f"{BASE}/packs/acme/tips/items").status_code == 200  # reading the studio is fine


# --- explicit content ----------------------------------------------------------------------------------


def test_items_are_explicit_pack_items_listed_with_pagination(client, make_pack):
    pack = make_pack("tips", texts=("One.", "Two.", "Three."))
    assert PackItem.objects.filter(pack=pack).count() == 3
    # a tag is no longer what makes content: the cubes carry none
    assert all("pack:tips" not in c.tags for c in pack_items(pack))
    page = client.get(f"{BASE}/packs/acme/tips/items?limit=2").json()
    assert page["count"] == 3 and [m["text"] for m in page["results"]] == ["One.", "Two."]
    assert page["results"][0]["source"] == {"publisher": "acme", "pack": "tips"}
    resp = client.post(
        f"{BASE}/packs/acme/tips/items", {"memories": [{"text": "Four.", "tags": ["extra"]}]}, format="json"
    )
    assert resp.status_code == 201 and resp.json()[0]["licence"] == "memhub-standard-1.0"
    assert [c.text for c in pack_items(pack)] == ["One.", "Two.", "Three.", "Four."]


def test_bad_items_write_nothing(client, make_pack):
    pack = make_pack("tips", texts=())
    for body, needle in (
        ({"memories": [{"text": "ok"}, {"text": ""}]}, "non-empty 'text'"),
        (
            {"memories": [{"text": "ok"}, {"text": "x", "namespace": "user:alice"}]},
            "Unknown field 'namespace'",
        ),
        (
            {"memories": [{"text": "x", "provenance_id": "0b8f1e0a-4a4f-4c3e-9d6c-1f6b1f0b8f1e"}]},
            "provenance_id",
        ),
        ({"memories": [{"text": "x", "kind": "parameter"}]}, "kind"),
        ({"memories": []}, "memories"),
    ):
        resp = client.post(f"{BASE}/packs/acme/tips/items", body, format="json")
        assert resp.status_code == 400, (body, resp.json())
        assert needle in str(resp.json()["error"]), (body, resp.json())
    assert not PackItem.objects.filter(pack=pack).exists()
    assert not MemCube.objects.filter(namespace=pack.publisher.namespace).exists()


def test_remove_an_item(client, make_pack):
    pack = make_pack("tips", texts=("One.", "Two."))
    first = pack_items(pack).first()
    assert client.delete(f"{BASE}/packs/acme/tips/items/{first.id}").status_code == 204
    assert [c.text for c in pack_items(pack)] == ["Two."]
    assert MemCube.objects.filter(pk=first.pk).exists()  # the memory stays; the pack no longer ships it
    assert client.delete(f"{BASE}/packs/acme/tips/items/{first.id}").status_code == 404


def test_a_member_outside_the_org_authors_with_the_audit_naming_them(publisher, expert, alice, api_for):
    """alice publishes for acme without being in the acme organization: the namespace policy would refuse
    her write, the marketplace's own check lets it through, and the record names her."""
    studio.publisher_member_set(actor=Subject(user=expert), publisher=publisher, username="alice")
    market.pack_create(actor=Subject(user=expert), publisher=publisher, slug="tips", title="Tips")
    resp = api_for(alice).post(
        f"{BASE}/packs/acme/tips/items", {"memories": [{"text": "By alice."}]}, format="json"
    )
    assert resp.status_code == 201, resp.json()
    cube = MemCube.objects.get(text="By alice.")
    assert cube.namespace.key == "publisher:acme" and cube.owner == alice
    assert MemCubeVersion.objects.get(cube=cube).actor == alice
    event = AuditEvent.objects.get(operation="memory.create", object_ids__contains=[str(cube.id)])
    assert event.actor == alice and event.namespace_key == "publisher:acme"
    # she may not write the namespace directly through the Memory API
    direct = api_for(alice).post(
        "/api/v1/memories", {"namespace": "publisher:acme", "text": "Direct."}, format="json"
    )
    assert direct.status_code in (403, 404) and not MemCube.objects.filter(text="Direct.").exists()
    # removed from the publisher, she can no longer author
    studio.publisher_member_remove(actor=Subject(user=expert), publisher=publisher, username="alice")
    again = api_for(alice).post(
        f"{BASE}/packs/acme/tips/items", {"memories": [{"text": "Late."}]}, format="json"
    )
    assert again.status_code == 403 and not MemCube.objects.filter(text="Late.").exists()


def test_pack_item_cap(settings, publisher, expert):
    settings.MEMHUB_PACK_MAX_ITEMS = 2
    pack = studio.pack_create(actor=Subject(user=expert), publisher=publisher, slug="cap", title="Cap")
    with pytest.raises(ApplicationError, match="limit is 2"):
        studio.pack_add_memories(actor=Subject(user=expert), pack=pack, items=[{"text": t} for t in "abc"])
    assert not pack.items.exists()


# --- preview -------------------------------------------------------------------------------------------

LONG = (
    "The harbour office opens at six in the morning and it closes at nine in the evening, and "
    "the ferries leave every forty minutes from the third pier when the weather is good."
)


def test_preview_shows_the_memory_as_an_installation_holds_it(make_pack, expert, alice, api_for):
    pack = make_pack("guide", texts=(LONG,), release=False)
    cube = pack_items(pack).first()
    resp = api_for(expert).get(f"{BASE}/packs/acme/guide/items/{cube.id}/preview")
    assert resp.status_code == 200, resp.json()
    body = resp.json()
    assert body["original_text"] == LONG and body["provenance_id"] == str(cube.provenance_id)
    assert body["source"]["publisher"] == "acme" and body["source"]["installation"] == body["watermark_id"]
    assert body["licence"] == pack.licence
    # the same keyed transform an install applies (governance.watermarking), for a preview id
    from governance.models import WatermarkAssignment
    from governance.watermarking import watermark_embed

    expected = watermark_embed(
        assignment=WatermarkAssignment(
            watermark_id=body["watermark_id"], source_namespace=pack.publisher.namespace, canaries=0
        ),
        items=[{"text": LONG}],
    )[0]["text"]
    assert body["text"] == expected and body["watermarked"] == (expected != LONG)
    assert not WatermarkAssignment.objects.exists()  # a preview records no assignment
    # buyers and outsiders do not preview unreleased content
    assert api_for(alice).get(f"{BASE}/packs/acme/guide/items/{cube.id}/preview").status_code == 403


def test_preview_of_a_memory_not_in_the_pack_is_404(make_pack, client):
    make_pack("one", texts=("Fact one.",))
    other = make_pack("two", texts=("Fact two.",))
    foreign = pack_items(other).first()
    assert client.get(f"{BASE}/packs/acme/one/items/{foreign.id}/preview").status_code == 404


def test_services_refuse_outsiders(publisher, make_pack, alice):
    pack = make_pack("tips", texts=("Fact.",))
    cube = pack_items(pack).first()
    with pytest.raises(PermissionDenied):
        studio.pack_update(actor=Subject(user=alice), pack=pack, title="Mine")
    with pytest.raises(PermissionDenied):
        studio.pack_item_preview(actor=Subject(user=alice), pack=pack, cube_id=cube.id)
    with pytest.raises(PermissionDenied):
        studio.pack_item_remove(actor=Subject(user=alice), pack=pack, cube_id=cube.id)
    with pytest.raises(NotFound):
        studio.publisher_member_remove(actor=Subject(user=alice), publisher=publisher, username="alice")
    assert pack_items(pack).count() == 1
