"""The release manifest: what a pack release ships, as canonical JSON (RFC 8785) signed with Ed25519.

This is the format MIP carries between instances (`docs/marketplace/manifest.md`). It names every item
by provenance id, version and content hash, the licence terms the release is sold under, the base
models its KV and LoRA parts fit, and the hashes of those blobs. The release id is the SHA-256 of the
canonical bytes; the signature is over the same bytes, so a verifier needs only the manifest, the
signature and the origin's public key (from its `/.well-known/mip`).

Plain functions of data: no database, no settings. The service (`marketplace.services.releases`)
gathers the inputs and stores the result.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import rfc8785

from core.signing import b64url_encode, ed25519_verify

MANIFEST_FORMAT = "memhub.pack-manifest"
MANIFEST_FORMAT_VERSION = 1
PLAINTEXT = "plaintext"

# Semantic Versioning 2.0.0, without build metadata: two releases differing only in `+build` would
# have equal precedence, and a release's version must order strictly after the one before it.
SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?$"
)
MAX_VERSION_CHARS = 40  # PackRelease.version


def semver_key(version: str) -> tuple[Any, ...]:
    """A sort key with SemVer 2.0.0 precedence (1.0.0-alpha < 1.0.0-alpha.1 < 1.0.0-beta < 1.0.0).
    ValueError if `version` is not a semantic version."""
    m = SEMVER.match(version) if len(version) <= MAX_VERSION_CHARS else None
    if m is None:
        raise ValueError(version)
    core = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
    if m.group(4) is None:
        return (*core, 1, ())  # a release sorts after every pre-release of the same core
    # Numeric identifiers sort numerically and before alphanumeric ones; a longer list wins ties.
    ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in m.group(4).split("."))
    return (*core, 0, ids)


def _iso(at: datetime) -> str:
    """UTC, whole seconds, `Z`: one spelling per instant, so the canonical bytes do not depend on how
    a database or a timezone setting renders it."""
    return at.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_item(
    *,
    provenance_id: Any,
    version: int,
    kind: str,
    content_sha256: str,
    blob_sha256: str = "",
    model_fingerprint: str = "",
    base_model: str = "",
) -> dict[str, Any]:
    """One item. KV (`activation`) and LoRA (`parameter`) items also carry their blob's hash and the
    model they were built for; plaintext items carry only their text's hash."""
    item: dict[str, Any] = {
        "provenance_id": str(provenance_id),
        "version": int(version),
        "kind": str(kind),
        "content_sha256": str(content_sha256),
    }
    if kind != PLAINTEXT:
        item.update(
            blob_sha256=str(blob_sha256),
            model_fingerprint=str(model_fingerprint),
            base_model=str(base_model),
        )
    return item


def manifest_build(
    *,
    origin_instance: str,
    key_id: str,
    publisher: str,
    pack: str,
    title: str,
    version: str,
    created_at: datetime,
    changelog: str,
    licence: Mapping[str, Any],
    base_models: Iterable[str],
    items: Iterable[Mapping[str, Any]],
) -> dict[str, Any]:
    """The manifest as a JSON object. Lists are sorted here (items by provenance id then version, base
    models and forms alphabetically), so two builds of the same release give the same bytes."""
    return {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_FORMAT_VERSION,
        "origin": {"instance": origin_instance, "key_id": key_id},
        "publisher": publisher,
        "pack": pack,
        "title": title,
        "version": version,
        "created_at": _iso(created_at),
        "changelog_sha256": sha256_hex(changelog.encode()),
        "licence": {
            "name": str(licence["name"]),
            "price_model": str(licence["price_model"]),
            "seats": int(licence["seats"]),
            "licence_days": None if licence.get("licence_days") is None else int(licence["licence_days"]),
            "quota_per_period": (
                None if licence.get("quota_per_period") is None else int(licence["quota_per_period"])
            ),
            "forms": sorted({str(f) for f in licence.get("forms") or []}),
            "federation_allowed": bool(licence.get("federation_allowed", False)),
        },
        "base_models": sorted({str(m) for m in base_models if str(m)}),
        "memories": sorted((dict(i) for i in items), key=lambda i: (i["provenance_id"], i["version"])),
    }


def manifest_canonical(manifest: Mapping[str, Any]) -> bytes:
    """The RFC 8785 (JCS) bytes of the manifest: keys sorted by UTF-16 code units, no whitespace,
    ECMAScript number forms, UTF-8. ValueError for anything JSON cannot carry exactly (an integer beyond
    2^53, NaN, a non-string key, a date object)."""
    try:
        return rfc8785.dumps(manifest)
    except rfc8785.CanonicalizationError as exc:
        raise ValueError(f"The manifest is not canonicalizable JSON: {exc}") from exc


def manifest_sha256(manifest: Mapping[str, Any]) -> str:
    """The release id: SHA-256 (hex) of the canonical bytes."""
    return sha256_hex(manifest_canonical(manifest))


def manifest_sign(manifest: Mapping[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """The Ed25519 signature of the canonical bytes, base64url without padding."""
    return b64url_encode(sign(manifest_canonical(manifest)))


def manifest_verify(manifest: Mapping[str, Any], signature: str, public_key_b64: str) -> bool:
    """True when `signature` (base64url) is the Ed25519 signature of the manifest's canonical bytes
    under `public_key_b64` (raw 32-byte key, base64url). False for any mismatch or malformed input."""
    try:
        data = manifest_canonical(manifest)
    except (ValueError, TypeError):
        return False
    return ed25519_verify(data=data, signature_b64=signature, public_key_b64=public_key_b64)
