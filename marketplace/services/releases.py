"""Marketplace writes (releases): publishers, packs, releases, installs of free packs.

Every service takes the caller's policy `Subject` (`actor`), so an API token's scopes and stated purpose
hold all the way down: each needs the `marketplace` scope, and writing a pack's memories needs
`memories:write` as any memory write does. Paid checkout (Stripe) is not built yet: installing a priced
pack is refused with a clear 402.
"""

from __future__ import annotations

import hashlib
import json
import re

from django.db import transaction

from core.errors import ApplicationError, Conflict
from governance.audit import audit_record
from governance.pii import pii_publish_gate
from governance.policy import Subject
from marketplace.models import Pack, PackRelease
from marketplace.services.common import require_publisher_admin
from vault.models import LIVE_STATES, MemCube, MemCubeVersion, MemoryKind

SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?$")


def _pack_cubes(pack: Pack) -> list[MemCube]:
    return list(
        MemCube.objects.filter(pack_items__pack=pack, state__in=LIVE_STATES).order_by(
            "pack_items__position", "id"
        )
    )


def release_publish(*, actor: Subject, pack: Pack, version: str, notes: str = "") -> PackRelease:
    """Publish an immutable release of the pack's live memories, once the PII gate lets it through.

    The gate runs (and stores its report) before the release transaction, so a refusal keeps the report
    the publisher needs in order to resolve the findings."""
    require_publisher_admin(actor=actor, publisher=pack.publisher)
    if not SEMVER.match(version):
        raise ApplicationError(f"'{version}' is not a semantic version (e.g. 1.2.0).")
    if pack.releases.filter(version=version).exists():
        raise Conflict(f"Release {version} exists; releases are immutable, publish a new version.")
    cubes = _pack_cubes(pack)
    if not cubes:
        raise ApplicationError("The pack has no live memories to release.")
    pii_publish_gate(
        actor=actor,
        namespace_key=pack.publisher.namespace.key,
        memory_ids=[c.id for c in cubes if c.kind == MemoryKind.PLAINTEXT],
    )
    return _release_create(pack=pack, cubes=cubes, version=version, notes=notes, actor=actor)


@transaction.atomic
def _release_create(
    *, pack: Pack, cubes: list[MemCube], version: str, notes: str, actor: Subject
) -> PackRelease:
    versions = list(
        MemCubeVersion.objects.filter(cube__in=cubes, version__in={c.version for c in cubes}).select_related(
            "cube"
        )
    )
    versions = [v for v in versions if v.version == v.cube.version]
    manifest = {
        "publisher": pack.publisher.slug,
        "pack": pack.slug,
        "version": version,
        "licence": pack.licence,
        "memories": sorted(
            (
                {
                    "provenance_id": str(v.cube.provenance_id),
                    "version": v.version,
                    "kind": v.kind,
                    "content_sha256": v.content_sha256,
                    "model_fingerprint": v.model_fingerprint,
                }
                for v in versions
            ),
            key=lambda m: str(m["provenance_id"]),
        ),
    }
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    release = PackRelease.objects.create(
        pack=pack, version=version, notes=notes, manifest=manifest, manifest_sha256=digest
    )
    release.memory_versions.set(versions)
    audit_record(
        actor=actor,
        operation="pack.release",
        namespace=pack.publisher.namespace,
        object_type="pack",
        object_ids=[str(pack.id)],
        details={"version": version, "manifest_sha256": digest},
    )
    return release
