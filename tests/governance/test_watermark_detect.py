"""Watermark detection through the API: installations get watermarked copies; leaked text names the
installation that leaked it, with a score and the probability that an innocent one scores as high."""

from __future__ import annotations

import unicodedata

import pytest

from accounts import services as account_services
from accounts.models import NamespaceKind
from core.errors import ApplicationError, Conflict
from governance.models import AuditEvent, WatermarkAssignment
from governance.policy import Subject
from governance.watermarking import watermark_assign, watermark_embed
from tests.governance.factories import org_with_roles
from vault.models import MemCube
from vault.services import memory_import_batch

pytestmark = pytest.mark.django_db
DETECT = "/api/v1/governance/watermark/detect"

PACK = [
    "We don't organize the harbour's colour charts by hand. It isn't hard to recognize the tide, and you "
    "won't need to analyze it. Honestly, the centre of the programme is the grey catalogue, which we've "
    "finalized and won't revise.",
    "Afterwards, we'll apologize and prioritize the travelling crews, though they aren't ready. Usually, the "
    "neighbours favour the theatre, and they don't realize it's the labour of the defence team. I haven't "
    "memorized the behaviour of the metres of jewellery.",
]


@pytest.fixture
def market(make_user):
    """A publisher org with five installations of its pack, each holding its own watermarked copy."""
    org, users = org_with_roles(make_user)
    source = account_services.namespace_create(kind=NamespaceKind.PUBLISHER, slug="tides", organization=org)
    buyers = [make_user(f"buyer{i}") for i in range(5)]
    copies = {}
    for i, buyer in enumerate(buyers):
        ns = account_services.namespace_create(
            kind=NamespaceKind.INSTALLATION, slug=f"tides-{i}", owner_user=buyer
        )
        assignment = watermark_assign(
            source_namespace=source, installation_id=f"inst-{i}", installation_namespace=ns
        )
        items = watermark_embed(
            assignment=assignment, items=[{"text": t, "tags": ["pack:tides"]} for t in PACK]
        )
        cubes = memory_import_batch(
            actor=Subject(user=buyer), namespace=ns, items=items, watermark_id=assignment.watermark_id
        )
        copies[f"inst-{i}"] = [c.text for c in cubes]
    return users, source, copies


def test_copies_differ_per_installation_and_keep_their_meaning(market):
    _, _, copies = market
    firsts = {texts[0] for texts in copies.values()}
    assert len(firsts) == 5  # every installation got its own copy
    for texts in copies.values():
        assert len(texts) == 2 + 3  # the pack's memories plus three canaries
        visible = "".join(ch for ch in texts[0] if unicodedata.category(ch) != "Cf")
        assert "harbour" in visible or "harbor" in visible
    assert MemCube.objects.filter(watermark_id="inst-2").count() == 5


def test_a_leak_names_its_installation(market, api_for):
    users, _source, copies = market
    leak = "\n".join(copies["inst-3"][:2])
    resp = api_for(users["owner"]).post(DETECT, {"text": leak}, format="json")
    assert resp.status_code == 200, resp.json()
    body = resp.json()
    assert body["installation_id"] == "inst-3" and body["accused"] is True
    assert body["most_likely"] == {
        "installation_id": "inst-3",
        "source_namespace": "publisher:tides",
        "installation_namespace": "installation:tides-3",
    }
    assert body["score"] > 0.9 and body["candidates"] == 5
    assert body["adjusted_p_value"] <= body["alpha"] and body["adjusted_p_value"] < 1e-6
    ev = AuditEvent.objects.get(operation="watermark.detect")
    assert ev.namespace_key == "publisher:tides" and ev.object_ids == ["inst-3"]
    assert leak not in str(ev.details)  # the leaked text itself is not kept, only its hash


def test_a_leak_survives_format_stripping_and_an_excerpt(market, api_for):
    users, _, copies = market
    text = " ".join(copies["inst-1"][:2])
    stripped = "".join(ch for ch in unicodedata.normalize("NFKC", text) if unicodedata.category(ch) != "Cf")
    words = stripped.split()
    excerpt = " ".join(words[len(words) // 4 :])  # the last three quarters, zero-width layer gone
    body = (
        api_for(users["admin"])
        .post(DETECT, {"text": excerpt, "namespaces": ["publisher:tides"]}, format="json")
        .json()
    )
    assert body["installation_id"] == "inst-1"


def test_a_canary_alone_names_its_installation(market, api_for):
    users, _, copies = market
    canary = copies["inst-4"][-1]
    body = api_for(users["owner"]).post(DETECT, {"text": canary}, format="json").json()
    assert body["most_likely"]["installation_id"] == "inst-4" and body["ranking"][0]["canary_hit"] is True


def test_unwatermarked_text_accuses_nobody(market, api_for):
    users, _, _ = market
    body = api_for(users["owner"]).post(DETECT, {"text": "\n".join(PACK)}, format="json").json()
    assert body["installation_id"] is None and body["accused"] is False
    assert body["adjusted_p_value"] > body["alpha"]


def test_who_may_detect(market, api_for, make_user):
    users, _, copies = market
    leak = copies["inst-0"][0]
    member = api_for(users["member"]).post(
        DETECT, {"text": leak, "namespaces": ["publisher:tides"]}, format="json"
    )
    assert member.status_code == 403
    outsider = api_for(users["outsider"]).post(
        DETECT, {"text": leak, "namespaces": ["publisher:tides"]}, format="json"
    )
    assert outsider.status_code == 404
    # without naming namespaces, an outsider simply has no candidates
    body = api_for(users["outsider"]).post(DETECT, {"text": leak}, format="json").json()
    assert body["candidates"] == 0 and body["installation_id"] is None and body["most_likely"] is None
    scoped = api_for(users["owner"], scopes=["memories:read"]).post(DETECT, {"text": leak}, format="json")
    assert scoped.status_code == 403 and "governance" in scoped.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"text": ""}, "text"),
        ({"text": "   "}, "must not be empty"),
        ({"text": 42}, "text"),
        ({}, "text"),
        ({"text": "x", "alpha": 0.9}, "alpha"),
        ({"text": "x", "namespaces": ["publisher:nope"]}, "not found"),
        ({"text": "x", "installation": "inst-1"}, "Unknown field 'installation'"),
    ],
)
def test_bad_detection_requests_are_4xx_and_write_nothing(market, api_for, body, needle):
    users, _, _ = market
    written = AuditEvent.objects.exclude(operation="access.denied")  # a refusal audits only itself
    audits = written.count()
    resp = api_for(users["owner"]).post(DETECT, body, format="json")
    assert 400 <= resp.status_code < 500 and needle in resp.json()["error"]["message"], resp.json()
    assert written.count() == audits


def test_assignment_is_idempotent_and_checked(market):
    _, source, _ = market
    again = watermark_assign(source_namespace=source, installation_id="inst-0")
    assert again == WatermarkAssignment.objects.get(watermark_id="inst-0")
    other = account_services.namespace_create(
        kind=NamespaceKind.PUBLISHER, slug="other", owner_user=source.organization.memberships.first().user
    )
    with pytest.raises(Conflict):
        watermark_assign(source_namespace=other, installation_id="inst-0")
    with pytest.raises(ApplicationError):
        watermark_assign(source_namespace=source, installation_id="has spaces")
    assert WatermarkAssignment.objects.count() == 5


def test_canaries_are_flagged_for_the_vault_and_written_in_the_packs_words(market):
    _, _, copies = market
    assignment = WatermarkAssignment.objects.get(watermark_id="inst-2")
    items = watermark_embed(assignment=assignment, items=[{"text": t, "tags": ["pack:tides"]} for t in PACK])
    canaries = [i for i in items if i.get("canary")]
    assert len(canaries) == assignment.canaries and all(i["canary"] is True for i in canaries)
    assert all(i["tags"] == ["pack:tides"] for i in canaries)  # dressed like the pack's memories
    assert not any("canary" in i for i in items if i not in canaries)
    # the copy the installation holds has them as canaries: same texts, flagged in the vault
    held = MemCube.objects.filter(namespace__key="installation:tides-2", is_canary=True)
    assert sorted(c.text for c in held) == sorted(i["text"] for i in canaries) == sorted(copies["inst-2"][2:])
