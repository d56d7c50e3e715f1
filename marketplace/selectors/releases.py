"""Marketplace reads (releases): a pack's releases, one release, its verification, evaluation questions."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from core.errors import NotFound, PermissionDenied
from core.signing import instance_signer
from governance.policy import Subject
from marketplace.manifest import manifest_sha256, manifest_verify, semver_key
from marketplace.models import EvaluationQuestion, Pack, PackRelease
from marketplace.services.common import publisher_role, require_marketplace
from vault.models import VersionOperation
from vault.services import content_hash


def release_pack_get(*, actor: Subject, publisher_slug: str, slug: str) -> Pack:
    """A pack whose releases the caller may see: a listed one, or any of a publisher they publish for.
    404 otherwise (an unlisted pack is not public)."""
    require_marketplace(actor)
    pack = (
        Pack.objects.select_related("publisher__namespace")
        .filter(publisher__slug=publisher_slug, slug=slug)
        .first()
    )
    if pack is None or (not pack.listed and publisher_role(actor=actor, publisher=pack.publisher) is None):
        raise NotFound(f"Pack '{publisher_slug}/{slug}' not found.")
    return pack


def release_list(*, pack: Pack) -> list[PackRelease]:
    """The pack's releases, newest version first (SemVer precedence, not creation time)."""
    return sorted(pack.releases.all(), key=lambda r: semver_key(r.version), reverse=True)


def release_get(*, pack: Pack, version: str) -> PackRelease:
    release = pack.releases.filter(version=version).first()
    if release is None:
        raise NotFound(f"Release '{version[:60]}' of '{pack.publisher.slug}/{pack.slug}' not found.")
    return release


def release_previous(*, release: PackRelease) -> PackRelease | None:
    """The release before this one in version order (None for the first)."""
    key = semver_key(release.version)
    older = [r for r in release.pack.releases.all() if semver_key(r.version) < key]
    return max(older, key=lambda r: semver_key(r.version)) if older else None


def release_verify(*, release: PackRelease) -> dict[str, Any]:
    """Check a stored release as a buyer or a peer would: the manifest's SHA-256 is the release id, the
    signature verifies under the signing key, and each item's content in the vault still hashes to what
    the manifest says. An item erased since (a GDPR purge) is reported as `erased`, not as tampering:
    erasure is the one change to history the platform makes on purpose."""
    try:
        recomputed = manifest_sha256(release.manifest)
    except ValueError:
        recomputed = ""
    hash_ok = recomputed == release.manifest_sha256
    signer = instance_signer()
    key_known = release.signing_key_id == signer.key_id
    signature_ok = key_known and manifest_verify(release.manifest, release.signature, signer.public_key_b64)
    origin_ok = (release.manifest.get("origin") or {}).get("key_id") == release.signing_key_id
    rows = {
        (str(v.cube.provenance_id), v.version): v
        for v in release.memory_versions.select_related("cube").order_by("cube__provenance_id")
    }
    purged = set(
        release.memory_versions.filter(cube__versions__operation=VersionOperation.PURGE).values_list(
            "cube__provenance_id", flat=True
        )
    )
    purged_ids = {str(p) for p in purged}
    mismatched: list[str] = []
    missing: list[str] = []
    erased: list[str] = []
    ok = 0
    items = release.manifest.get("memories") or []
    for item in items:
        pid = str(item.get("provenance_id"))
        row = rows.get((pid, item.get("version")))
        if row is None:
            missing.append(pid)
            continue
        actual = content_hash(kind=row.kind, text=row.text, blob_sha256=row.blob_sha256)
        if actual == item.get("content_sha256") and row.content_sha256 == actual:
            ok += 1
        else:
            (erased if pid in purged_ids else mismatched).append(pid)
    listed = {(str(i.get("provenance_id")), i.get("version")) for i in items}
    unlisted = sorted(p for (p, v) in rows if (p, v) not in listed)  # shipped, yet not in the manifest
    return {
        "release_id": release.manifest_sha256,
        "valid": hash_ok and signature_ok and origin_ok and not (mismatched or missing or unlisted),
        "manifest_sha256_ok": hash_ok,
        "recomputed_sha256": recomputed,
        "signature_ok": signature_ok,
        "signing_key_id": release.signing_key_id,
        "key_known": key_known,
        "items": {
            "checked": len(items),
            "ok": ok,
            "mismatched": mismatched,
            "missing": missing,
            "unlisted": unlisted,
            "erased": erased,
        },
    }


def evaluation_question_list(*, actor: Subject, pack: Pack) -> QuerySet[EvaluationQuestion]:
    """The pack's evaluation questions: for the people who publish it (they may hint at its content)."""
    require_marketplace(actor)
    if publisher_role(actor=actor, publisher=pack.publisher) is None:
        raise PermissionDenied(f"You do not publish for '{pack.publisher.slug}'.")
    return pack.evaluation_questions.order_by("id")
