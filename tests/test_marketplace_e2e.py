"""The marketplace end to end, through the API only, as its users meet it.

An expert publishes a document pack (a personal-data finding is redacted before the release goes out),
another user buys it on the built-in test ledger, installs it, finds its memories in search and chat with
their provenance, uses up the licence's retrieval quota (402), and is refunded: from then on the pack is
gone from every door (search, lists, reads by id, chat).
"""

from __future__ import annotations

from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from marketplace.models import Licence, LicenceStatus, Order, OrderStatus
from vault.services import index_outbox_process

pytestmark = pytest.mark.django_db

MP = "/api/v1/marketplace"
SEARCH = "/api/v1/memories/search"
EMAIL = "jane.doe@northwind-traders.com"
DOCUMENT = f"""# Warehouse operations

## Opening hours

The warehouse opens at seven in the morning and closes early on public holidays. The loading bay
keys are kept in the night safe behind the reception desk.

## Returns

Returned goods are inspected within three working days and refunded when they are undamaged. Write
to {EMAIL} when a return arrives without its paperwork.

## Fragile goods

Fragile items are packed in double boxes with plenty of paper padding around them.
""".encode()


def chat(client: Any, content: str, **memhub: Any) -> Any:
    body: dict[str, Any] = {"model": "memhub", "messages": [{"role": "user", "content": content}]}
    if memhub:
        body["memhub"] = memhub
    return client.post("/v1/chat/completions", body, format="json")


@pytest.fixture
def people(make_user, api_for, settings):  # type: ignore[no-untyped-def]
    settings.MEMHUB_MODEL_PATH = ""  # chat answers in retrieval-only mode: no generator is loaded
    expert, buyer = make_user("expert"), make_user("buyer")
    return expert, api_for(expert), buyer, api_for(buyer)


def test_publish_buy_install_use_exhaust_and_refund(people):
    _expert, studio, buyer, client = people

    # --- the expert publishes a priced document pack ---------------------------------------------------
    assert studio.post("/api/v1/orgs", {"slug": "northwind"}, format="json").status_code == 201
    r = studio.post(
        f"{MP}/publishers",
        {"slug": "northwind", "display_name": "Northwind", "organization": "northwind"},
        format="json",
    )
    assert r.status_code == 201, r.json()
    r = studio.post(
        f"{MP}/publishers/northwind/packs",
        {
            "slug": "warehouse",
            "title": "Warehouse operations",
            "summary": "How our warehouse runs.",
            "price_model": "one_time",
            "price_cents": 1200,
            "quota_per_period": 12,
        },
        format="json",
    )
    assert r.status_code == 201, r.json()
    pack_url = f"{MP}/packs/northwind/warehouse"
    upload = studio.post(
        f"{pack_url}/uploads",
        {"kind": "document", "file": SimpleUploadedFile("warehouse.md", DOCUMENT, "text/markdown")},
        format="multipart",
    )
    assert upload.status_code == 201, upload.json()
    items = studio.get(f"{pack_url}/items").json()["results"]
    sections = {i["source"]["section_path"] for i in items}
    assert len(items) >= 3 and all(i["source"]["file"] == "warehouse.md" for i in items), items
    assert len(sections) >= 3  # chunked along the headings, each chunk naming its section

    # The release is held back until the personal data is dealt with; the publisher redacts it.
    held = studio.post(f"{pack_url}/releases", {"version": "1.0.0", "notes": "First release."}, format="json")
    assert held.status_code == 409, held.json()
    error = held.json()["error"]
    assert error["code"] == "pii_unresolved"
    report_id = error["extra"]["report"]
    finding_ids = [f["id"] for f in error["extra"]["findings"]]
    assert finding_ids
    resolved = studio.post(
        f"/api/v1/governance/pii/reports/{report_id}/resolve",
        {"action": "redact", "findings": finding_ids, "reason": "A staff address, not for sale."},
        format="json",
    )
    assert resolved.status_code == 200, resolved.json()
    released = studio.post(
        f"{pack_url}/releases", {"version": "1.0.0", "notes": "First release."}, format="json"
    )
    assert released.status_code == 201, released.json()
    verify = studio.get(f"{pack_url}/releases/1.0.0/verify").json()
    assert verify["valid"] is True, verify

    # --- another user buys it on the test ledger ---------------------------------------------------------
    refused = client.post(f"{pack_url}/install", {}, format="json")
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "licence_required"
    order = client.post(f"{pack_url}/checkout", {}, format="json", HTTP_IDEMPOTENCY_KEY="buy-warehouse-1")
    assert order.status_code == 201, order.json()
    order_id = order.json()["id"]
    assert not Licence.objects.filter(holder_user=buyer).exists()  # nothing before the payment is verified
    paid = client.post(f"{MP}/ledger/orders/{order_id}/action", {"action": "pay"}, format="json")
    assert paid.status_code == 200 and paid.json()["status"] == OrderStatus.PAID, paid.json()

    # --- installs it and finds it, with provenance -------------------------------------------------------
    installed = client.post(f"{pack_url}/install", {}, format="json")
    assert installed.status_code == 201, installed.json()
    ns = installed.json()["namespace"]
    index_outbox_process()
    found = client.post(SEARCH, {"query": "where are the loading bay keys?", "top_k": 2}, format="json")
    assert found.status_code == 200, found.json()
    hits = [h for h in found.json()["results"] if h["memory"]["namespace"] == ns]
    assert hits, found.json()
    # The best hit is the buyer's (watermarked) copy of the publisher's chunk that answers it.
    answering = {i["provenance_id"] for i in items if "night safe" in i["text"]}
    assert hits[0]["memory"]["provenance_id"] in answering, (hits, answering)
    everything = client.get(f"/api/v1/memories?namespace={ns}&limit=1").json()
    assert everything["count"] >= 3
    answer = chat(client, "where are the loading bay keys?")
    assert answer.status_code == 200, answer.json()
    used = [m for m in answer.json()["memhub"]["memories"] if m["namespace"] == ns]
    assert used and used[0]["provenance"]["provenance_id"], answer.json()["memhub"]
    assert ns in [n["namespace"] for n in answer.json()["memhub"]["namespaces"]]
    # The redacted address reached nobody.
    listed = client.get(f"/api/v1/memories?namespace={ns}&limit=50").json()["results"]
    assert not any(EMAIL in m["text"] for m in listed)

    # --- the quota runs out: 402 where memory is used -----------------------------------------------------
    for _ in range(12):
        last = client.post(SEARCH, {"query": "fragile items", "namespaces": [ns]}, format="json")
        if last.status_code == 402:
            break
    assert last.status_code == 402, last.json()
    assert last.json()["error"]["code"] == "quota_exhausted"
    assert chat(client, "fragile items", namespaces=[ns]).status_code == 402

    # --- refund: access is gone everywhere -----------------------------------------------------------------
    a_memory = listed[0]["id"]
    refund = studio.post(f"{MP}/orders/{order_id}/refund", {}, format="json")
    assert refund.status_code == 200, refund.json()
    assert Order.objects.get(pk=order_id).status == OrderStatus.REFUNDED
    assert Licence.objects.get(holder_user=buyer).status == LicenceStatus.REFUNDED
    gone = client.post(SEARCH, {"query": "fragile items", "top_k": 10}, format="json")
    assert gone.status_code == 200 and not [
        h for h in gone.json()["results"] if h["memory"]["namespace"] == ns
    ]
    assert client.post(SEARCH, {"query": "fragile items", "namespaces": [ns]}, format="json").status_code in (
        402,
        404,
    )
    assert client.get(f"/api/v1/memories/{a_memory}").status_code in (402, 404)
    assert not [m for m in client.get("/api/v1/memories?limit=100").json()["results"] if m["namespace"] == ns]
    after = chat(client, "fragile items")
    assert after.status_code in (200, 402)
    if after.status_code == 200:
        assert not [m for m in after.json()["memhub"]["memories"] if m["namespace"] == ns]
        consulted = {n["namespace"]: n["memories_used"] for n in after.json()["memhub"]["namespaces"]}
        assert not consulted.get(ns)
