"""Marketplace writes: publishers, packs, releases, installs of free packs.

Every service takes the caller's policy `Subject` (`actor`), so an API token's scopes and stated purpose
hold all the way down: each needs the `marketplace` scope, and writing a pack's memories needs
`memories:write` as any memory write does. Paid checkout (Stripe) is not built yet: installing a priced
pack is refused with a clear 402.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets

from django.db import IntegrityError, transaction

from accounts.models import NamespaceKind, Organization, Role, TokenScope
from accounts.services import namespace_create
from core.errors import ApplicationError, Conflict, NotFound, PermissionDenied
from governance.audit import audit_record
from governance.pii import pii_publish_gate
from governance.policy import Action, Subject, SubjectKind, authorize
from governance.watermarking import watermark_assign, watermark_embed
from marketplace.models import Installation, Pack, PackRelease, Publisher
from vault.models import LIVE_STATES, MemCube, MemCubeVersion, MemoryKind, VersionOperation
from vault.services import memory_create_batch, memory_import_batch

SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?$")


def _require_marketplace(actor: Subject) -> None:
    if actor.kind != SubjectKind.SYSTEM:
        actor.require_scope(TokenScope.MARKETPLACE.value)


def _require_publisher_admin(*, actor: Subject, publisher: Publisher) -> None:
    """Publishing is writing to the publisher's namespace: the policy decides (404 / 403)."""
    _require_marketplace(actor)
    authorize(subject=actor, action=Action.WRITE, namespace=publisher.namespace)


@transaction.atomic
def publisher_create(
    *, actor: Subject, organization: Organization, slug: str, display_name: str = ""
) -> Publisher:
    """Register an organization as a publisher (its owners and admins, or the platform)."""
    _require_marketplace(actor)
    if actor.kind != SubjectKind.SYSTEM:
        role = actor.roles.get(organization.pk) if actor.is_user else None
        if role is None:
            raise NotFound("Organization not found.")
        if role not in (Role.OWNER, Role.ADMIN):
            raise PermissionDenied("Only the organization's owners and admins register it as a publisher.")
    ns = namespace_create(
        kind=NamespaceKind.PUBLISHER, slug=slug, organization=organization, title=display_name or slug
    )
    publisher = Publisher(
        slug=slug, display_name=display_name or slug, organization=organization, namespace=ns
    )
    publisher.full_clean()
    publisher.save()
    return publisher


@transaction.atomic
def pack_create(
    *,
    actor: Subject,
    publisher: Publisher,
    slug: str,
    title: str,
    description: str = "",
    tags: list[str] | None = None,
    price_cents: int = 0,
    licence: str = "",
) -> Pack:
    _require_publisher_admin(actor=actor, publisher=publisher)
    pack = Pack(
        publisher=publisher,
        slug=slug,
        title=title,
        description=description,
        tags=tags or [],
        price_cents=price_cents,
        licence=licence or "memhub-standard-1.0",
    )
    pack.full_clean()
    try:
        pack.save()
    except IntegrityError as exc:
        raise Conflict(f"Pack '{slug}' exists.") from exc
    return pack


@transaction.atomic
def pack_add_memories(*, actor: Subject, pack: Pack, items: list[dict]) -> list[MemCube]:
    """Author memories for a pack in the publisher's namespace (tagged with the pack's slug)."""
    _require_publisher_admin(actor=actor, publisher=pack.publisher)
    for item in items:
        item.setdefault("tags", [])
        item["tags"] = [*item["tags"], f"pack:{pack.slug}"]
        item.setdefault("licence", pack.licence)
        item.setdefault("source", {"publisher": pack.publisher.slug, "pack": pack.slug})
    return memory_create_batch(actor=actor, namespace_key=pack.publisher.namespace.key, items=items)


def _pack_cubes(pack: Pack) -> list[MemCube]:
    ns = pack.publisher.namespace
    return [
        c
        for c in MemCube.objects.filter(namespace=ns, state__in=LIVE_STATES).order_by("created_at", "id")
        if f"pack:{pack.slug}" in c.tags
    ]


def release_publish(*, actor: Subject, pack: Pack, version: str, notes: str = "") -> PackRelease:
    """Publish an immutable release of the pack's live memories, once the PII gate lets it through.

    The gate runs (and stores its report) before the release transaction, so a refusal keeps the report
    the publisher needs in order to resolve the findings."""
    _require_publisher_admin(actor=actor, publisher=pack.publisher)
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


@transaction.atomic
def pack_install(*, actor: Subject, release: PackRelease) -> Installation:
    """Install a release for the calling user: its memories are copied, read-only, into a namespace of
    their own."""
    if not actor.is_user:
        raise PermissionDenied("Only a user installs packs.")
    _require_marketplace(actor)
    user = actor.user
    pack = release.pack
    if pack.price_cents > 0:
        raise ApplicationError(
            "This pack is paid; checkout is not available on this instance yet.",
            status=402,
            code="payment_required",
        )
    existing = Installation.objects.filter(release=release, user=user).first()
    if existing:
        return existing
    installation_id = secrets.token_hex(8)
    slug = f"{pack.publisher.slug}.{pack.slug}.{release.version}.{user.username}.{installation_id[:6]}"
    ns = namespace_create(
        kind=NamespaceKind.INSTALLATION, slug=slug, owner_user=user, title=f"{pack.title} {release.version}"
    )
    watermark_id = hashlib.sha256(f"{release.id}:{user.pk}:{installation_id}".encode()).hexdigest()[:32]
    installation = Installation.objects.create(
        release=release, user=user, namespace=ns, watermark_id=watermark_id
    )
    items = []
    # An erased memory stays erased: a release published before the erasure no longer carries it.
    versions = release.memory_versions.exclude(cube__versions__operation=VersionOperation.PURGE)
    for v in versions.select_related("cube").order_by("cube__provenance_id"):
        items.append(
            {
                "kind": v.kind,
                "text": v.text,
                "title": v.title,
                "tags": v.tags,
                "metadata": v.metadata,
                "source": {**v.source, "release": release.version, "installation": str(installation.id)},
                "semantic_type": v.semantic_type,
                "language": v.language,
                "entities": v.entities,
                "valid_from": v.valid_from,
                "valid_to": v.valid_to,
                "provenance_id": v.cube.provenance_id,
                **(
                    {
                        "blob_uri": v.blob_uri,
                        "blob_sha256": v.blob_sha256,
                        "model_fingerprint": v.model_fingerprint,
                        "blob_meta": v.blob_meta,
                    }
                    if v.kind != MemoryKind.PLAINTEXT
                    else {}
                ),
                "licence": pack.licence,
            }
        )
    # Each installation gets its own fingerprint: keyed lexical variants, canaries and a fragile layer.
    assignment = watermark_assign(
        source_namespace=pack.publisher.namespace, installation_id=watermark_id, installation_namespace=ns
    )
    items = watermark_embed(assignment=assignment, items=items)
    # The namespace is read-only to its owner by policy; the install itself is the authorised writer.
    memory_import_batch(
        actor=actor,
        namespace=ns,
        items=items,
        watermark_id=watermark_id,
        reason=f"install {pack} {release.version}",
    )
    audit_record(
        actor=actor,
        operation="pack.install",
        namespace=ns,
        object_type="installation",
        object_ids=[str(installation.id)],
        details={"pack": str(pack), "version": release.version},
    )
    return installation
