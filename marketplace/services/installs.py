"""Marketplace writes (installs): publishers, packs, releases, installs of free packs.

Every service takes the caller's policy `Subject` (`actor`), so an API token's scopes and stated purpose
hold all the way down: each needs the `marketplace` scope, and writing a pack's memories needs
`memories:write` as any memory write does. Paid checkout (Stripe) is not built yet: installing a priced
pack is refused with a clear 402.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from django.db import transaction

from accounts.models import NamespaceKind
from accounts.services import namespace_create
from core.errors import ApplicationError, PermissionDenied
from governance.audit import audit_record
from governance.policy import Subject
from governance.watermarking import watermark_assign, watermark_embed
from marketplace.models import Installation, PackRelease
from marketplace.services.common import require_marketplace
from vault.models import MemoryKind, VersionOperation
from vault.services import memory_import_batch

SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?$")


@transaction.atomic
def pack_install(*, actor: Subject, release: PackRelease) -> Installation:
    """Install a release for the calling user: its memories are copied, read-only, into a namespace of
    their own."""
    if not actor.is_user:
        raise PermissionDenied("Only a user installs packs.")
    require_marketplace(actor)
    user = actor.user
    pack = release.pack
    if pack.price_cents > 0:
        raise ApplicationError(
            "This pack is paid; checkout is not available on this instance yet.",
            status=402,
            code="payment_required",
        )
    existing = Installation.objects.filter(release=release, user=user, removed_at__isnull=True).first()
    if existing:
        return existing
    installation_id = secrets.token_hex(8)
    slug = f"{pack.publisher.slug}.{pack.slug}.{release.version}.{user.username}.{installation_id[:6]}"
    ns = namespace_create(
        kind=NamespaceKind.INSTALLATION, slug=slug, owner_user=user, title=f"{pack.title} {release.version}"
    )
    watermark_id = hashlib.sha256(f"{release.id}:{user.pk}:{installation_id}".encode()).hexdigest()[:32]
    installation = Installation.objects.create(
        pack=pack, release=release, user=user, namespace=ns, watermark_id=watermark_id
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
