"""Idempotent demo data that shows the marketplace: a publisher with free, one-time, subscription and
metered packs (one authored by uploading a document), signed releases with pack cards, a demo user who
installed a free pack, bought a paid one on the built-in test ledger and reviewed one, and subscribes to
the free pack's feed, which carries a revision, an addition and a retraction since its release."""

from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction

from accounts import services as accounts
from accounts.models import Organization, User
from core import demo_data
from feeds.services.log import feed_for_pack
from feeds.services.publish import feed_memory_retract, feed_memory_upsert
from feeds.services.subscriptions import subscription_create
from governance.pii import pii_resolve, pii_scan_inline
from governance.policy import Subject
from marketplace import services as market
from marketplace.models import Pack, Publisher
from marketplace.payments.ledger import ledger_session_pay
from marketplace.services.catalog import catalog_reindex
from marketplace.services.orders import checkout_create
from marketplace.services.releases import evaluation_question_create
from marketplace.services.reviews import review_create
from marketplace.services.studio import pack_upload_create
from vault.services import memory_create_batch


class Command(BaseCommand):
    help = "Create demo data (safe to run again)."

    @transaction.atomic
    def handle(self, *args: object, **options: object) -> None:
        password = os.environ.get("MEMHUB_DEMO_PASSWORD", demo_data.DEMO_USER["password"])
        expert = User.objects.filter(username="expert").first() or accounts.user_create(
            username="expert", password=password
        )
        org = Organization.objects.filter(
            slug=demo_data.PUBLISHER["org"]
        ).first() or accounts.organization_create(
            owner=expert, slug=demo_data.PUBLISHER["org"], name=demo_data.PUBLISHER["name"]
        )
        publisher = Publisher.objects.filter(
            slug=demo_data.PUBLISHER["slug"]
        ).first() or market.publisher_create(
            actor=Subject(user=expert),
            organization=org,
            slug=demo_data.PUBLISHER["slug"],
            display_name=demo_data.PUBLISHER["name"],
        )
        listing_fields = ("summary", "category", "readme", "price_model", "seat_limit", "quota_per_period")
        for spec in demo_data.PACKS:
            pack = Pack.objects.filter(publisher=publisher, slug=spec["slug"]).first()
            if pack is None:
                pack = market.pack_create(
                    actor=Subject(user=expert),
                    publisher=publisher,
                    slug=spec["slug"],
                    title=spec["title"],
                    description=spec["description"],
                    tags=spec["tags"],
                    price_cents=spec.get("price_cents", 0),
                    **{k: spec[k] for k in listing_fields if k in spec},
                )
                cubes = market.pack_add_memories(
                    actor=Subject(user=expert),
                    pack=pack,
                    items=[{"text": t, "semantic_type": "fact"} for t in spec["memories"]],
                )
                for question, answer in spec.get("questions", []):
                    evaluation_question_create(
                        actor=Subject(user=expert),
                        pack=pack,
                        question=question,
                        answer_provenance_ids=[str(cubes[answer].provenance_id)],
                    )
                _clear_publish_gate(expert=expert, namespace_key=publisher.namespace.key, cubes=cubes)
                market.release_publish(
                    actor=Subject(user=expert), pack=pack, version="1.0.0", notes="First release."
                )
        _document_pack(expert=expert, publisher=publisher)
        demo = User.objects.filter(username=demo_data.DEMO_USER["username"]).first()
        if demo is None:
            demo = accounts.user_create(username=demo_data.DEMO_USER["username"], password=password)
            memory_create_batch(
                actor=Subject(user=demo),
                namespace_key="user:demo",
                items=[{"text": t, "semantic_type": "preference"} for t in demo_data.PRIVATE_MEMORIES],
            )
            as_demo = Subject(user=demo)
            free = Pack.objects.get(publisher=publisher, slug="python-pitfalls")
            market.pack_install(actor=as_demo, release=free.releases.get(version="1.0.0"))
            review_create(
                actor=as_demo, pack=free, rating=5, title="Saved my agent", body="Short, correct, useful."
            )
            # Buying goes through the same path a real buyer takes: checkout, then the gateway's signed
            # webhook grants the licence (here the built-in test ledger pays and signs).
            paid = Pack.objects.get(publisher=publisher, slug="kitchen-basics")
            order = checkout_create(actor=as_demo, pack=paid, idempotency_key="demo-kitchen-basics")
            ledger_session_pay(order.checkout_session_id)
            market.pack_install(actor=as_demo, release=paid.releases.get(version="1.0.0"))
            _feed_updates(expert=expert, demo=demo, pack=free)
        transaction.on_commit(catalog_reindex)  # listings searchable at once, worker or not
        self.stdout.write(self.style.SUCCESS(f"Demo data ready: user 'demo' / '{password}'"))


def _clear_publish_gate(*, expert: User, namespace_key: str, cubes: list[Any]) -> None:
    """What a publisher does before the first release: scan the pack (here, in this process rather than
    the worker) and review the findings. The demo packs name public places and terms (Paris, the
    Schengen area, Fahrenheit), none of them personal data, so the findings are accepted as such."""
    actor = Subject(user=expert)
    report = pii_scan_inline(actor=actor, namespace_key=namespace_key, memory_ids=[c.pk for c in cubes])
    finding_ids = [f["id"] for f in report.report.get("findings", [])]
    if finding_ids:
        pii_resolve(
            actor=actor,
            report_id=report.pk,
            action="accept",
            finding_ids=finding_ids,
            reason="Demo pack: public places and technical terms, not personal data.",
        )


def _document_pack(*, expert: User, publisher: Publisher) -> None:
    """A pack authored the way most experts will: by uploading a document, chunked along its headings."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    spec = demo_data.DOCUMENT_PACK
    if Pack.objects.filter(publisher=publisher, slug=spec["slug"]).exists():
        return
    actor = Subject(user=expert)
    pack = market.pack_create(
        actor=actor,
        publisher=publisher,
        slug=spec["slug"],
        title=spec["title"],
        description=spec["description"],
        tags=spec["tags"],
        price_cents=spec["price_cents"],
        **{k: spec[k] for k in ("summary", "category", "price_model")},
    )
    document = SimpleUploadedFile(spec["filename"], spec["document"].encode(), "text/markdown")
    pack_upload_create(actor=actor, pack=pack, kind="document", files={"file": document}, inline=True)
    cubes = list(pack.items.select_related("cube").values_list("cube", flat=True))
    from vault.models import MemCube

    _clear_publish_gate(
        expert=expert, namespace_key=publisher.namespace.key, cubes=list(MemCube.objects.filter(pk__in=cubes))
    )
    market.release_publish(actor=actor, pack=pack, version="1.0.0", notes="From the uploaded handbook.")


def _feed_updates(*, expert: User, demo: User, pack: Pack) -> None:
    """The demo user subscribes to the pack's feed; the publisher then pushes a revision, an addition and
    a retraction. Deliveries go out after the commit (the worker applies them to the installation)."""
    spec = demo_data.FEED_UPDATES
    as_expert = Subject(user=expert)
    subscription_create(actor=Subject(user=demo), feed=feed_for_pack(pack), name="Python Pitfalls updates")
    prefix, revised = spec["revise"]
    item = pack.items.select_related("cube").filter(cube__text__startswith=prefix).first()
    if item is not None:
        feed_memory_upsert(
            actor=as_expert,
            pack=pack,
            memory={"provenance_id": str(item.cube.provenance_id), "text": revised},
        )
    feed_memory_upsert(actor=as_expert, pack=pack, memory={"text": spec["add"], "semantic_type": "fact"})
    wrong, reason = spec["retract"]
    entry = feed_memory_upsert(actor=as_expert, pack=pack, memory={"text": wrong, "semantic_type": "fact"})
    feed_memory_retract(actor=as_expert, pack=pack, provenance_id=entry.provenance_id, reason=reason)
