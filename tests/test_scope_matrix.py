"""The token-scope matrix, through the API: every endpoint of accounts, vault, governance, marketplace,
feeds and inference, each with the scope(s) it needs.

For each (endpoint, needed scope): a token holding every other scope is refused (403 naming the scope,
or 404 where the object is hidden from a caller who may not read it) and nothing is written; a token
holding just the endpoint's scopes passes the scope check. One request per cell, no model loaded (chat
answers in retrieval-only mode). A last test fails when an endpoint is added without a row here.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.apps import apps
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from accounts import services as account_services
from accounts.models import ALL_SCOPES, ApiToken, Invitation, Membership, NamespaceJoin
from feeds.models import Feed
from governance import timemachine
from governance.policy import Subject
from marketplace import services as market
from marketplace.models import PackItem
from marketplace.services.licences import licence_grant
from vault import services as vault_services
from vault.models import MemCube

pytestmark = pytest.mark.django_db

READ, WRITE, GOV, MARKET, INFER, ACCOUNT = (
    "memories:read",
    "memories:write",
    "governance",
    "marketplace",
    "inference",
    "account",
)


@dataclass
class World:
    users: dict[str, Any]
    memory: MemCube
    second: MemCube
    spare_token: ApiToken
    invitation: Invitation
    revocable_invitation: Invitation
    snapshot: Any
    ids: dict[str, str] = field(default_factory=dict)


@pytest.fixture
def world(make_user, settings) -> World:  # type: ignore[no-untyped-def]
    settings.MEMHUB_MODEL_PATH = ""  # chat stays in retrieval-only mode: no generator is loaded
    alice, bob, carol, _dave = (make_user(n) for n in ("alice", "bob", "carol", "dave"))
    org = account_services.organization_create(owner=alice, slug="acme")
    inv = account_services.invitation_create(actor=alice, org=org, username="carol", role="member")
    account_services.invitation_accept(user=carol, invitation_id=inv.pk)
    to_bob = account_services.invitation_create(actor=alice, org=org, username="bob", role="viewer")
    to_dave = account_services.invitation_create(actor=alice, org=org, username="dave", role="viewer")
    account_services.namespace_create(kind="shared", slug="tips", owner_user=bob)
    account_services.namespace_create(kind="shared", slug="recipes", owner_user=bob)
    account_services.namespace_join(user=alice, namespace_key="shared:tips")
    memory = vault_services.memory_create(
        actor=Subject(user=alice), namespace_key="user:alice", data={"text": "alice's note about otters"}
    )
    second = vault_services.memory_create(
        actor=Subject(user=alice), namespace_key="user:alice", data={"text": "otters hold hands asleep"}
    )
    spare, _ = account_services.api_token_create(user=alice, name="spare")
    snapshot = timemachine.snapshot_create(actor=Subject(user=alice), namespace_key="user:alice", name="s1")
    publisher = market.publisher_create(actor=Subject(user=alice), organization=org, slug="acme-press")
    pack = market.pack_create(actor=Subject(user=alice), publisher=publisher, slug="tips", title="Tips")
    market.pack_add_memories(
        actor=Subject(user=alice), pack=pack, items=[{"text": "Water the ferns on Mondays."}]
    )
    market.release_publish(actor=Subject(user=alice), pack=pack, version="1.0.0")
    licence_grant(pack=pack, holder_user=carol, reason="matrix: a licence holder who may review")
    return World(
        users={"alice": alice, "bob": bob, "carol": carol},
        memory=memory,
        second=second,
        spare_token=spare,
        invitation=to_bob,
        revocable_invitation=to_dave,
        snapshot=snapshot,
    )


@dataclass(frozen=True)
class Cell:
    route: str  # URL name (namespace included)
    method: str
    path: Callable[[World], str]
    needs: tuple[str, ...]
    body: Callable[[World], Any] | None = None
    actor: str = "alice"
    fmt: str = "json"
    ok: int | None = None  # the status a token with just `needs` gets, where it is cheap to reach


def mid(w: World) -> str:
    return str(w.memory.id)


NOWHERE = str(uuid.UUID(int=7))
FEEDS = "feeds"
SUB = f"/api/v1/subscriptions/{NOWHERE}"


def feed_id(w: World) -> str:
    """The `tips` pack's feed (its release in the world wrote the first entry)."""
    return str(Feed.objects.get(pack__publisher__slug="acme-press", pack__slug="tips").pk)


def FEED(w: World) -> str:
    return f"/api/v1/feeds/{feed_id(w)}"


MP = "/api/v1/marketplace"
PACK = f"{MP}/packs/acme-press/tips"

CELLS: list[Cell] = [
    # --- accounts ---------------------------------------------------------------------------------
    Cell("v1:orgs", "GET", lambda w: "/api/v1/orgs", (ACCOUNT,), ok=200),
    Cell("v1:orgs", "POST", lambda w: "/api/v1/orgs", (ACCOUNT,), lambda w: {"slug": "globex"}, ok=201),
    Cell("v1:org-members", "GET", lambda w: "/api/v1/orgs/acme/members", (ACCOUNT,), ok=200),
    Cell(
        "v1:org-members",
        "POST",
        lambda w: "/api/v1/orgs/acme/members",
        (ACCOUNT,),
        lambda w: {"username": "carol", "role": "owner"},
        ok=200,
    ),
    Cell("v1:org-member", "DELETE", lambda w: "/api/v1/orgs/acme/members/carol", (ACCOUNT,), ok=204),
    Cell("v1:org-invitations", "GET", lambda w: "/api/v1/orgs/acme/invitations", (ACCOUNT,), ok=200),
    Cell(
        "v1:org-invitations",
        "POST",
        lambda w: "/api/v1/orgs/acme/invitations",
        (ACCOUNT,),
        lambda w: {"username": "dave", "role": "owner"},
        ok=201,
    ),
    Cell(
        "v1:org-invitation",
        "DELETE",
        lambda w: f"/api/v1/orgs/acme/invitations/{w.revocable_invitation.pk}",
        (ACCOUNT,),
        ok=204,
    ),
    Cell("v1:invitations", "GET", lambda w: "/api/v1/invitations", (ACCOUNT,), actor="bob", ok=200),
    Cell(
        "v1:invitation-accept",
        "POST",
        lambda w: f"/api/v1/invitations/{w.invitation.pk}/accept",
        (ACCOUNT,),
        actor="bob",
        ok=200,
    ),
    Cell(
        "v1:invitation-decline",
        "POST",
        lambda w: f"/api/v1/invitations/{w.invitation.pk}/decline",
        (ACCOUNT,),
        actor="bob",
        ok=204,
    ),
    Cell("v1:tokens", "GET", lambda w: "/api/v1/tokens", (ACCOUNT,), ok=200),
    Cell("v1:tokens", "POST", lambda w: "/api/v1/tokens", (ACCOUNT,), lambda w: {"name": "minted"}, ok=201),
    Cell("v1:token", "DELETE", lambda w: f"/api/v1/tokens/{w.spare_token.pk}", (ACCOUNT,), ok=204),
    Cell("v1:namespaces", "GET", lambda w: "/api/v1/namespaces", (READ,), ok=200),
    Cell(
        "v1:namespaces",
        "POST",
        lambda w: "/api/v1/namespaces",
        (ACCOUNT,),
        lambda w: {"kind": "shared", "slug": "otters"},
        ok=201,
    ),
    Cell("v1:namespace-joins", "GET", lambda w: "/api/v1/namespaces/joined", (ACCOUNT,), ok=200),
    Cell(
        "v1:namespace-joins",
        "POST",
        lambda w: "/api/v1/namespaces/joined",
        (ACCOUNT,),
        lambda w: {"namespace": "shared:recipes"},
        ok=201,
    ),
    Cell(
        "v1:namespace-join", "DELETE", lambda w: "/api/v1/namespaces/joined/shared:tips", (ACCOUNT,), ok=204
    ),
    # --- vault --------------------------------------------------------------------------------------
    Cell("v1:memories", "GET", lambda w: "/api/v1/memories?namespace=user:alice", (READ,), ok=200),
    Cell(
        "v1:memories",
        "POST",
        lambda w: "/api/v1/memories",
        (WRITE,),
        lambda w: {"namespace": "user:alice", "text": "planted"},
        ok=201,
    ),
    Cell(
        "v1:memories-batch",
        "POST",
        lambda w: "/api/v1/memories/batch",
        (WRITE,),
        lambda w: {"namespace": "user:alice", "memories": [{"text": "planted"}]},
        ok=201,
    ),
    Cell(
        "v1:memories-merge",
        "POST",
        lambda w: "/api/v1/memories/merge",
        (READ, WRITE),
        lambda w: {"sources": [mid(w), str(w.second.id)], "text": "merged"},
        ok=201,
    ),
    Cell(
        "v1:memories-search",
        "POST",
        lambda w: "/api/v1/memories/search",
        (READ,),
        lambda w: {"query": "otters", "namespaces": ["user:alice"]},
        ok=200,
    ),
    Cell(
        "v1:memories-provenance",
        "GET",
        lambda w: f"/api/v1/memories/provenance/{w.memory.provenance_id}",
        (READ,),
        ok=200,
    ),
    Cell("v1:memory", "GET", lambda w: f"/api/v1/memories/{mid(w)}", (READ,), ok=200),
    Cell(
        "v1:memory",
        "PATCH",
        lambda w: f"/api/v1/memories/{mid(w)}",
        (READ, WRITE),
        lambda w: {"expected_version": 1, "text": "changed"},
        ok=200,
    ),
    Cell("v1:memory", "DELETE", lambda w: f"/api/v1/memories/{mid(w)}", (READ, WRITE), ok=204),
    Cell("v1:memory-history", "GET", lambda w: f"/api/v1/memories/{mid(w)}/history", (READ,), ok=200),
    Cell("v1:memory-acl", "GET", lambda w: f"/api/v1/memories/{mid(w)}/acl", (READ,), ok=200),
    Cell(
        "v1:memory-acl",
        "POST",
        lambda w: f"/api/v1/memories/{mid(w)}/acl",
        (READ, GOV),
        lambda w: {"user": "bob", "permission": "read"},
    ),
    Cell("v1:memory-acl", "DELETE", lambda w: f"/api/v1/memories/{mid(w)}/acl?user=bob", (READ, GOV)),
    Cell(
        "v1:memory-lifecycle",
        "POST",
        lambda w: f"/api/v1/memories/{mid(w)}/lifecycle",
        (READ, GOV),
        lambda w: {"action": "freeze"},
        ok=200,
    ),
    Cell(
        "v1:memory-purge",
        "POST",
        lambda w: f"/api/v1/memories/{mid(w)}/purge",
        (READ, GOV),
        lambda w: {"reason": "erasure request"},
    ),
    # --- governance ---------------------------------------------------------------------------------
    Cell("v1:governance-audit", "GET", lambda w: "/api/v1/governance/audit", (GOV,), ok=200),
    Cell(
        "v1:governance-snapshots",
        "GET",
        lambda w: "/api/v1/governance/snapshots?namespace=user:alice",
        (READ,),
    ),
    Cell(
        "v1:governance-snapshots",
        "POST",
        lambda w: "/api/v1/governance/snapshots",
        (GOV,),
        lambda w: {"namespace": "user:alice", "name": "s2"},
        ok=201,
    ),
    Cell(
        "v1:governance-snapshot",
        "GET",
        lambda w: f"/api/v1/governance/snapshots/{w.snapshot.pk}",
        (READ,),
        ok=200,
    ),
    Cell(
        "v1:governance-diff",
        "GET",
        lambda w: f"/api/v1/governance/timemachine/diff?namespace=user:alice&from={w.snapshot.pk}",
        (READ,),
        ok=200,
    ),
    Cell(
        "v1:governance-rollback",
        "POST",
        lambda w: "/api/v1/governance/timemachine/rollback",
        (GOV, WRITE),
        lambda w: {"namespace": "user:alice", "snapshot": str(w.snapshot.pk)},
    ),
    Cell(
        "v1:governance-pii-scan",
        "POST",
        lambda w: "/api/v1/governance/pii/scan",
        (WRITE,),
        lambda w: {"namespace": "user:alice", "texts": ["call me on 020 7946 0018"]},
    ),
    Cell(
        "v1:governance-pii-gate",
        "POST",
        lambda w: "/api/v1/governance/pii/gate",
        (WRITE,),
        lambda w: {"namespace": "user:alice"},
    ),
    Cell(
        "v1:governance-pii-reports",
        "GET",
        lambda w: "/api/v1/governance/pii/reports?namespace=user:alice",
        (READ,),
        ok=200,
    ),
    Cell("v1:governance-pii-report", "GET", lambda w: f"/api/v1/governance/pii/reports/{NOWHERE}", (READ,)),
    Cell(
        "v1:governance-pii-resolve",
        "POST",
        lambda w: f"/api/v1/governance/pii/reports/{NOWHERE}/resolve",
        (WRITE,),
        lambda w: {"action": "accept", "findings": ["f1"]},
    ),
    Cell(
        "v1:governance-watermark-detect",
        "POST",
        lambda w: "/api/v1/governance/watermark/detect",
        (GOV,),
        lambda w: {"text": "Water the ferns on Mondays."},
        ok=200,
    ),
    # --- marketplace --------------------------------------------------------------------------------
    Cell("v1:packs", "GET", lambda w: "/api/v1/marketplace/packs", (MARKET,), ok=200),
    Cell("v1:pack", "GET", lambda w: "/api/v1/marketplace/packs/acme-press/tips", (MARKET,), ok=200),
    Cell(
        "v1:pack-install",
        "POST",
        lambda w: "/api/v1/marketplace/packs/acme-press/tips/install",
        (MARKET,),
        lambda w: {},
        actor="bob",
        ok=201,
    ),
    Cell("v1:installations", "GET", lambda w: "/api/v1/marketplace/installations", (MARKET,), ok=200),
    Cell("v1:installs-detail", "GET", lambda w: f"{MP}/installations/{NOWHERE}", (MARKET,)),
    Cell("v1:installs-detail", "DELETE", lambda w: f"{MP}/installations/{NOWHERE}", (MARKET,)),
    Cell(
        "v1:installs-upgrade",
        "POST",
        lambda w: f"{MP}/installations/{NOWHERE}/upgrade",
        (MARKET,),
        lambda w: {"version": "1.1.0"},
    ),
    Cell("v1:installs-diff", "GET", lambda w: f"{MP}/installations/{NOWHERE}/diff", (MARKET,)),
    Cell("v1:installs-annotations", "GET", lambda w: f"{MP}/installations/{NOWHERE}/annotations", (MARKET,)),
    Cell(
        "v1:installs-annotation",
        "PUT",
        lambda w: f"{MP}/installations/{NOWHERE}/annotations/{NOWHERE}",
        (MARKET,),
        lambda w: {"note": "check this"},
    ),
    Cell(
        "v1:installs-annotation",
        "DELETE",
        lambda w: f"{MP}/installations/{NOWHERE}/annotations/{NOWHERE}",
        (MARKET,),
    ),
    # payments
    Cell(
        "v1:payments-checkout",
        "POST",
        lambda w: f"{MP}/packs/acme-press/tips/checkout",
        (MARKET,),
        lambda w: {"seats": 1},
        actor="bob",
    ),
    Cell("v1:payments-orders", "GET", lambda w: f"{MP}/orders", (MARKET,), ok=200),
    Cell("v1:payments-order", "GET", lambda w: f"{MP}/orders/{NOWHERE}", (MARKET,)),
    Cell(
        "v1:payments-order-refund", "POST", lambda w: f"{MP}/orders/{NOWHERE}/refund", (MARKET,), lambda w: {}
    ),
    Cell(
        "v1:payments-earnings",
        "GET",
        lambda w: f"{MP}/publishers/acme-press/earnings",
        (MARKET, READ),
        ok=200,
    ),
    Cell(
        "v1:payments-ledger-action",
        "POST",
        lambda w: f"{MP}/ledger/orders/{NOWHERE}/action",
        (MARKET,),
        lambda w: {"action": "pay"},
    ),
    # licences
    Cell("v1:licences-list", "GET", lambda w: f"{MP}/licences", (MARKET,), ok=200),
    Cell("v1:licences-detail", "GET", lambda w: f"{MP}/licences/{NOWHERE}", (MARKET,)),
    Cell("v1:licences-seats", "GET", lambda w: f"{MP}/licences/{NOWHERE}/seats", (MARKET,)),
    Cell(
        "v1:licences-seats",
        "POST",
        lambda w: f"{MP}/licences/{NOWHERE}/seats",
        (MARKET,),
        lambda w: {"username": "carol"},
    ),
    Cell("v1:licences-seat", "DELETE", lambda w: f"{MP}/licences/{NOWHERE}/seats/carol", (MARKET,)),
    Cell("v1:licences-usage", "GET", lambda w: f"{MP}/licences/{NOWHERE}/usage", (MARKET,)),
    # studio
    Cell("v1:studio-publishers", "GET", lambda w: f"{MP}/publishers", (MARKET,), ok=200),
    Cell(
        "v1:studio-publishers",
        "POST",
        lambda w: f"{MP}/publishers",
        (MARKET,),
        lambda w: {"slug": "alice-notes", "display_name": "Alice's notes"},
        ok=201,
    ),
    Cell("v1:studio-publisher", "GET", lambda w: f"{MP}/publishers/acme-press", (MARKET,), ok=200),
    Cell(
        "v1:studio-publisher",
        "PATCH",
        lambda w: f"{MP}/publishers/acme-press",
        (MARKET, WRITE),
        lambda w: {"bio": "Gardening notes."},
        ok=200,
    ),
    Cell(
        "v1:studio-publisher-members",
        "GET",
        lambda w: f"{MP}/publishers/acme-press/members",
        (MARKET,),
        ok=200,
    ),
    Cell(
        "v1:studio-publisher-members",
        "POST",
        lambda w: f"{MP}/publishers/acme-press/members",
        (MARKET, WRITE),
        lambda w: {"username": "carol", "role": "publisher"},
        ok=201,
    ),
    Cell(
        "v1:studio-publisher-member",
        "DELETE",
        lambda w: f"{MP}/publishers/acme-press/members/carol",
        (MARKET, WRITE),
    ),
    Cell(
        "v1:studio-publisher-packs", "GET", lambda w: f"{MP}/publishers/acme-press/packs", (MARKET,), ok=200
    ),
    Cell(
        "v1:studio-publisher-packs",
        "POST",
        lambda w: f"{MP}/publishers/acme-press/packs",
        (MARKET, WRITE),
        lambda w: {"slug": "more", "title": "More tips"},
        ok=201,
    ),
    Cell("v1:studio-pack-listing", "GET", lambda w: f"{PACK}/listing", (MARKET,), ok=200),
    Cell(
        "v1:studio-pack-listing",
        "PATCH",
        lambda w: f"{PACK}/listing",
        (MARKET, WRITE),
        lambda w: {"summary": "Care for ferns."},
        ok=200,
    ),
    Cell("v1:studio-pack-items", "GET", lambda w: f"{PACK}/items", (MARKET,), ok=200),
    Cell(
        "v1:studio-pack-items",
        "POST",
        lambda w: f"{PACK}/items",
        (MARKET, WRITE),
        lambda w: {"memories": [{"text": "Mist the ferns in summer."}]},
        ok=201,
    ),
    Cell("v1:studio-pack-item", "DELETE", lambda w: f"{PACK}/items/{NOWHERE}", (MARKET, WRITE)),
    Cell("v1:studio-pack-item-preview", "GET", lambda w: f"{PACK}/items/{NOWHERE}/preview", (MARKET, READ)),
    Cell("v1:studio-pack-uploads", "GET", lambda w: f"{PACK}/uploads", (MARKET,), ok=200),
    Cell(
        "v1:studio-pack-uploads",
        "POST",
        lambda w: f"{PACK}/uploads",
        (MARKET, WRITE),
        lambda w: {"kind": "jsonl", "file": _file(b'{"text": "Repot ferns in spring."}\n', "tips.jsonl")},
        fmt="multipart",
        ok=201,
    ),
    Cell("v1:studio-pack-upload", "GET", lambda w: f"{PACK}/uploads/{NOWHERE}", (MARKET,)),
    Cell(
        "v1:studio-pack-cover",
        "PUT",
        lambda w: f"{PACK}/cover",
        (MARKET, WRITE),
        lambda w: {"file": _file(b"not an image", "cover.png")},
        fmt="multipart",
    ),
    # releases
    Cell("v1:releases-list", "GET", lambda w: f"{PACK}/releases", (MARKET,), ok=200),
    Cell(
        "v1:releases-list",
        "POST",
        lambda w: f"{PACK}/releases",
        (MARKET, WRITE),
        lambda w: {"version": "1.1.0", "notes": "More tips."},
    ),
    Cell("v1:releases-detail", "GET", lambda w: f"{PACK}/releases/1.0.0", (MARKET,), ok=200),
    Cell("v1:releases-verify", "GET", lambda w: f"{PACK}/releases/1.0.0/verify", (MARKET,), ok=200),
    Cell("v1:releases-diff", "GET", lambda w: f"{PACK}/releases/1.0.0/diff", (MARKET,)),
    Cell(
        "v1:releases-evaluation-questions", "GET", lambda w: f"{PACK}/evaluation-questions", (MARKET,), ok=200
    ),
    Cell(
        "v1:releases-evaluation-questions",
        "POST",
        lambda w: f"{PACK}/evaluation-questions",
        (MARKET, WRITE),
        lambda w: {"question": "When do I water ferns?", "answer_provenance_ids": [str(NOWHERE)]},
    ),
    Cell(
        "v1:releases-evaluation-question",
        "PATCH",
        lambda w: f"{PACK}/evaluation-questions/999999",
        (MARKET, WRITE),
        lambda w: {"question": "When?"},
    ),
    Cell(
        "v1:releases-evaluation-question",
        "DELETE",
        lambda w: f"{PACK}/evaluation-questions/999999",
        (MARKET, WRITE),
    ),
    # catalog: reviews
    Cell("v1:catalog-reviews", "GET", lambda w: f"{PACK}/reviews", (MARKET,), ok=200),
    Cell(
        "v1:catalog-reviews",
        "POST",
        lambda w: f"{PACK}/reviews",
        (MARKET,),
        lambda w: {"rating": 5, "title": "Useful"},
        actor="carol",
        ok=201,
    ),
    Cell(
        "v1:catalog-review",
        "PATCH",
        lambda w: f"{PACK}/reviews/{NOWHERE}",
        (MARKET,),
        lambda w: {"rating": 4},
    ),
    Cell("v1:catalog-review", "DELETE", lambda w: f"{PACK}/reviews/{NOWHERE}", (MARKET,)),
    Cell(
        "v1:catalog-review-report",
        "POST",
        lambda w: f"{PACK}/reviews/{NOWHERE}/report",
        (MARKET,),
        lambda w: {"reason": "Spam."},
    ),
    # --- feeds --------------------------------------------------------------------------------------
    Cell("v1:feeds", "GET", lambda w: "/api/v1/feeds", (FEEDS,), ok=200),
    Cell("v1:feed", "GET", lambda w: FEED(w), (FEEDS,), ok=200),
    Cell("v1:feed-entries", "GET", lambda w: f"{FEED(w)}/entries", (FEEDS,), ok=200),
    Cell("v1:feed-events", "GET", lambda w: f"{FEED(w)}/events?since=0", (FEEDS,), ok=200),
    Cell(
        "v1:feed-memories",
        "POST",
        lambda w: f"{FEED(w)}/memories",
        (MARKET, WRITE),
        lambda w: {"text": "Prune the roses in March."},
        ok=201,
    ),
    Cell(
        "v1:feed-retractions",
        "POST",
        lambda w: f"{FEED(w)}/retractions",
        (MARKET, WRITE),
        lambda w: {"provenance_id": str(PackItem.objects.get(pack__slug="tips").cube.provenance_id)},
        ok=201,
    ),
    Cell("v1:subscriptions", "GET", lambda w: "/api/v1/subscriptions", (FEEDS,), ok=200),
    Cell(
        "v1:subscriptions",
        "POST",
        lambda w: "/api/v1/subscriptions",
        (FEEDS,),
        lambda w: {"feed": feed_id(w)},
        actor="carol",
        ok=201,
    ),
    Cell("v1:subscription", "GET", lambda w: SUB, (FEEDS,)),
    Cell("v1:subscription", "PATCH", lambda w: SUB, (FEEDS,), lambda w: {"name": "renamed"}),
    Cell("v1:subscription", "DELETE", lambda w: SUB, (FEEDS,)),
    Cell("v1:subscription-pause", "POST", lambda w: f"{SUB}/pause", (FEEDS,)),
    Cell("v1:subscription-resume", "POST", lambda w: f"{SUB}/resume", (FEEDS,)),
    Cell("v1:subscription-rotate-secret", "POST", lambda w: f"{SUB}/rotate-secret", (FEEDS,)),
    Cell("v1:subscription-deliveries", "GET", lambda w: f"{SUB}/deliveries", (FEEDS,)),
    Cell("v1:subscription-delivery", "GET", lambda w: f"{SUB}/deliveries/{NOWHERE}", (FEEDS,)),
    Cell("v1:subscription-delivery-retry", "POST", lambda w: f"{SUB}/deliveries/{NOWHERE}/retry", (FEEDS,)),
    Cell("v1:subscription-dead-letters", "GET", lambda w: f"{SUB}/dead-letters", (FEEDS,)),
    # --- inference ----------------------------------------------------------------------------------
    Cell(
        "inference:chat-completions",
        "POST",
        lambda w: "/v1/chat/completions",
        (INFER,),
        lambda w: {"model": "memhub", "messages": [{"role": "user", "content": "otters?"}]},
        ok=200,
    ),
    Cell(
        "inference:distillation-create",
        "POST",
        lambda w: "/v1/memhub/distillations",
        (GOV,),
        lambda w: {"namespace": "user:alice"},
    ),
    Cell("inference:distillation-detail", "GET", lambda w: f"/v1/memhub/distillations/{NOWHERE}", (READ,)),
    Cell(
        "inference:adapter-install",
        "POST",
        lambda w: "/v1/memhub/adapters",
        (GOV,),
        lambda w: {"namespace": "user:alice", "adapter_config": _file(b"{}"), "adapter_model": _file(b"x")},
        fmt="multipart",
    ),
    Cell("inference:decisions", "GET", lambda w: f"/v1/memhub/requests/{NOWHERE}/decisions", (READ,)),
]


def _file(content: bytes, name: str = "f") -> Any:
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, content)


def client_with(user: Any, scopes: list[str]) -> APIClient:
    _, raw = account_services.api_token_create(user=user, name="matrix", scopes=scopes)
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return c


def send(client: APIClient, cell: Cell, w: World) -> Any:
    call = getattr(client, cell.method.lower())
    body = cell.body(w) if cell.body else None
    if body is None:
        return call(cell.path(w))
    return call(cell.path(w), body, format=cell.fmt)


def state() -> dict[str, Any]:
    """Every row count of our apps, plus the fields a refused update would touch."""
    counts = {
        m._meta.label: m.objects.count()
        for app in ("accounts", "vault", "governance", "marketplace", "feeds", "inference")
        for m in apps.get_app_config(app).get_models()
        if m._meta.label not in ("governance.AuditEvent", "governance.AuditChainHead")  # denials are audited
        and not m._meta.label.startswith("governance.Audit")
    }
    return {
        "counts": counts,
        "memories": sorted(MemCube.objects.values_list("id", "version", "state", "frozen")),
        "roles": sorted(Membership.objects.values_list("user__username", "role")),
        "tokens": sorted((str(t), str(r)) for t, r in ApiToken.objects.values_list("id", "revoked_at")),
        "invitations": sorted((str(i), s) for i, s in Invitation.objects.values_list("id", "status")),
        "joins": sorted(NamespaceJoin.objects.values_list("user__username", "namespace__key")),
    }


NEGATIVE = [pytest.param(c, s, id=f"{c.route}-{c.method}-without-{s}") for c in CELLS for s in c.needs]


@pytest.mark.parametrize(("cell", "missing"), NEGATIVE)
def test_a_token_lacking_the_scope_is_refused_and_writes_nothing(world, cell, missing):
    client = client_with(world.users[cell.actor], [s for s in ALL_SCOPES if s != missing])
    before = state()

    resp = send(client, cell, world)

    assert resp.status_code in (403, 404), (cell.route, cell.method, missing, resp.status_code, resp.content)
    error = resp.json()["error"]
    if resp.status_code == 403:
        assert f"'{missing}' scope" in error["message"], error
    assert state() == before


@pytest.mark.parametrize("cell", [pytest.param(c, id=f"{c.route}-{c.method}") for c in CELLS])
def test_a_token_with_the_scope_passes_the_scope_check(world, cell):
    client = client_with(world.users[cell.actor], list(cell.needs))

    resp = send(client, cell, world)

    if cell.ok is not None:
        assert resp.status_code == cell.ok, (cell.route, cell.method, resp.status_code, resp.content)
    else:
        assert resp.status_code not in (401, 403), (cell.route, cell.method, resp.content)
        if resp.status_code >= 400:
            assert "scope" not in resp.json()["error"]["message"]


@pytest.mark.parametrize("cell", [pytest.param(c, id=f"{c.route}-{c.method}") for c in CELLS])
def test_no_credentials_is_a_401_and_writes_nothing(world, cell):
    before = state()

    resp = send(APIClient(), cell, world)

    assert resp.status_code == 401, (cell.route, cell.method, resp.status_code, resp.content)
    assert resp.json()["error"]["code"] == "not_authenticated"
    assert state() == before


# Who am I: any valid token may ask. The index dead-letter endpoints are for platform staff
# (IsAdminUser), checked below.
STAFF_ONLY = {("v1:index-dead-letters", "GET"), ("v1:index-dead-letters-retry", "POST")}
# Gateway webhooks carry no user credentials: the signature on the body is the credential (their own
# tests: tests/marketplace/test_payments_*.py refuse unsigned, forged and stale deliveries with 400).
WEBHOOKS = {("v1:payments-webhook-stripe", "POST"), ("v1:payments-webhook-ledger", "POST")}
EXEMPT = {("v1:me", "GET"), *STAFF_ONLY, *WEBHOOKS}


def test_staff_only_endpoints_refuse_other_users(world):
    client = client_with(world.users["alice"], list(ALL_SCOPES))
    before = state()
    assert client.get("/api/v1/admin/index/dead-letters").status_code == 403
    assert client.post("/api/v1/admin/index/dead-letters/retry", {}, format="json").status_code == 403
    assert state() == before


def test_staff_endpoints_need_the_governance_scope_too(world):
    staff = world.users["alice"]
    staff.is_staff = True
    staff.save(update_fields=["is_staff"])
    weak = client_with(staff, [s for s in ALL_SCOPES if s != "governance"])
    before = state()
    for resp in (
        weak.get("/api/v1/admin/index/dead-letters"),
        weak.post("/api/v1/admin/index/dead-letters/retry", {}, format="json"),
    ):
        assert resp.status_code == 403 and "'governance'" in resp.json()["error"]["message"]
    assert state() == before
    assert client_with(staff, ["governance"]).get("/api/v1/admin/index/dead-letters").status_code == 200


def _routes() -> set[tuple[str, str]]:
    """(url name, HTTP method) of every API endpoint: /api/v1/... and the OpenAI-compatible /v1/..."""
    found: set[tuple[str, str]] = set()

    def walk(patterns: Any, prefix: str, ns: str) -> None:
        for p in patterns:
            if isinstance(p, URLResolver):
                child_ns = f"{ns}:{p.namespace}".strip(":") if p.namespace else ns
                walk(p.url_patterns, prefix + str(p.pattern), child_ns)
            elif isinstance(p, URLPattern):
                route = prefix + str(p.pattern)
                view = getattr(p.callback, "view_class", None)
                if view is None or not (route.startswith("api/v1/") or route.startswith("v1/")):
                    continue
                for method in ("get", "post", "put", "patch", "delete"):
                    if hasattr(view, method):
                        found.add((f"{ns}:{p.name}".strip(":"), method.upper()))

    walk(get_resolver().url_patterns, "", "")
    return found


def test_every_api_endpoint_has_a_row_in_the_matrix():
    covered = {(c.route, c.method) for c in CELLS}
    missing = _routes() - covered - EXEMPT
    assert not missing, f"add these endpoints to the scope matrix: {sorted(missing)}"
