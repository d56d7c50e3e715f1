"""Marketplace fixtures: an expert's organization publishing packs, and a pack factory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from accounts import services as accounts
from governance.policy import Subject
from marketplace.models import Pack, PackRelease, Publisher


@pytest.fixture
def expert(make_user):  # type: ignore[no-untyped-def]
    return make_user("expert")


@pytest.fixture
def publisher(expert) -> Publisher:  # type: ignore[no-untyped-def]
    """`acme`, an organization publisher whose owner is `expert`."""
    from marketplace import services as market

    org = accounts.organization_create(owner=expert, slug="acme")
    return market.publisher_create(
        actor=Subject(user=expert), organization=org, slug="acme", display_name="Acme"
    )


@pytest.fixture
def make_pack(expert, publisher) -> Callable[..., Pack]:  # type: ignore[no-untyped-def]
    """A pack of `acme` with plaintext memories (`texts`); `release` publishes 1.0.0 of it."""
    from marketplace import services as market

    def make(
        slug: str = "tips",
        texts: tuple[str, ...] = ("Tip one.", "Tip two."),
        release: bool = False,
        bare_release: bool = False,
        **fields: Any,
    ) -> Pack:
        pack = market.pack_create(
            actor=Subject(user=expert),
            publisher=publisher,
            slug=slug,
            title=fields.pop("title", slug.title()),
            **fields,
        )
        if texts:
            market.pack_add_memories(
                actor=Subject(user=expert), pack=pack, items=[{"text": t} for t in texts]
            )
        if release:
            market.release_publish(actor=Subject(user=expert), pack=pack, version="1.0.0")
        if bare_release:
            # A release row without content, for tests about selling rather than about content (a pack
            # with no release cannot be bought).
            PackRelease.objects.create(
                pack=pack, version="1.0.0", manifest={"memories": []}, manifest_sha256=f"{pack.pk.hex:0<64}"
            )
        return pack

    return make
