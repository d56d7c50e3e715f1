"""Shared helpers for the licence, enforcement and metering tests (no tests here).

Installations are built as rows, the way an install leaves them (a read-only `installation:` namespace
holding copies of the release's memories, linked to a licence), so these tests exercise the licence
rules without depending on the install pipeline's own steps."""

from __future__ import annotations

import secrets
from typing import Any

from django.db.models import F

from accounts import services as accounts
from accounts.models import NamespaceKind, User
from governance.policy import Subject
from marketplace.models import Installation, Licence, Pack, PackRelease
from vault.models import MemCube, MemCubeVersion
from vault.services import memory_import_batch

HARBOUR = (
    "Ferries from Port Elin to Tarsk leave every forty minutes from pier three.",
    "The Port Elin lighthouse keeper is Mara Voss, on duty since 2019.",
    "The harbour office at Port Elin opens at six and closes at nine.",
)


def released(make_pack: Any, slug: str = "tips", **terms: Any) -> PackRelease:
    """A pack of `acme` (free, so the studio accepts it) with a release row freezing its memories;
    `terms` are then set on the pack as a paid listing would carry them (price model, quota, forms,
    licence days, seats). The release is a row, not `release_publish`: its PII scan and signing are the
    releases tests' business, and the scan takes half a minute here."""
    pack = make_pack(slug=slug, texts=HARBOUR)
    if terms:
        Pack.objects.filter(pk=pack.pk).update(**terms)
    pack.refresh_from_db()
    release = PackRelease.objects.create(
        pack=pack, version="1.0.0", manifest={"memories": []}, manifest_sha256=secrets.token_hex(32)
    )
    cubes = MemCube.objects.filter(pack_items__pack=pack)
    release.memory_versions.set(MemCubeVersion.objects.filter(cube__in=cubes, version=F("cube__version")))
    return PackRelease.objects.select_related("pack__publisher").get(pk=release.pk)


def install(user: User, release: PackRelease, licence: Licence | None, workspace: str = "") -> Installation:
    pack = release.pack
    ns = accounts.namespace_create(
        kind=NamespaceKind.INSTALLATION,
        slug=f"{pack.publisher.slug}.{pack.slug}.{user.username}.{secrets.token_hex(3)}",
        owner_user=user,
        title=pack.title,
    )
    inst = Installation.objects.create(
        pack=pack,
        release=release,
        user=user,
        workspace=workspace,
        namespace=ns,
        watermark_id=secrets.token_hex(16),
        licence=licence,
    )
    items = [
        {"text": v.text, "title": v.title, "provenance_id": v.cube.provenance_id, "licence": pack.licence}
        for v in release.memory_versions.select_related("cube").order_by("cube__provenance_id")
    ]
    memory_import_batch(
        actor=Subject(user=user), namespace=ns, items=items, watermark_id=inst.watermark_id, reason="test"
    )
    return inst
