"""Idempotent demo data: a publisher with packs and releases, a demo user with an installed pack."""

from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction

from accounts import services as accounts
from accounts.models import Organization, User
from core import demo_data
from governance.pii import pii_resolve, pii_scan_inline
from governance.policy import Subject
from marketplace import services as market
from marketplace.models import Pack, Publisher
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
                )
                cubes = market.pack_add_memories(
                    actor=Subject(user=expert),
                    pack=pack,
                    items=[{"text": t, "semantic_type": "fact"} for t in spec["memories"]],
                )
                _clear_publish_gate(expert=expert, namespace_key=publisher.namespace.key, cubes=cubes)
                market.release_publish(
                    actor=Subject(user=expert), pack=pack, version="1.0.0", notes="First release."
                )
        demo = User.objects.filter(username=demo_data.DEMO_USER["username"]).first()
        if demo is None:
            demo = accounts.user_create(username=demo_data.DEMO_USER["username"], password=password)
            memory_create_batch(
                actor=Subject(user=demo),
                namespace_key="user:demo",
                items=[{"text": t, "semantic_type": "preference"} for t in demo_data.PRIVATE_MEMORIES],
            )
            free = Pack.objects.get(publisher=publisher, slug="python-pitfalls")
            market.pack_install(actor=Subject(user=demo), release=free.releases.get(version="1.0.0"))
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
