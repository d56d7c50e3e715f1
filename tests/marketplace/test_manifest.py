"""The release manifest format: RFC 8785 canonical bytes, SHA-256 release id, Ed25519 signature, SemVer
order, and the worked test vector in docs/marketplace/manifest.md."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core import signing
from core.errors import ApplicationError
from core.signing import b64url_encode, instance_signer
from marketplace.manifest import (
    manifest_build,
    manifest_canonical,
    manifest_item,
    manifest_sha256,
    manifest_sign,
    manifest_verify,
    semver_key,
)
from vault.services import content_hash

DOC = Path(__file__).resolve().parents[2] / "docs" / "marketplace" / "manifest.md"
RFC8032_KEY_1 = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"


def _key() -> tuple[Ed25519PrivateKey, str]:
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(RFC8032_KEY_1))
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key, b64url_encode(raw)


def _doc_value(label: str) -> str:
    m = re.search(rf"- {re.escape(label)}: `([^`]+)`", DOC.read_text())
    assert m, f"{label} missing from {DOC}"
    return m.group(1)


def _doc_block(info: str) -> str:
    m = re.search(rf"```{re.escape(info)}\n(.*?)\n```", DOC.read_text(), re.S)
    assert m, f"block {info} missing from {DOC}"
    return m.group(1)


def _manifest(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "origin_instance": "hub.test",
        "key_id": "ed25519:0000000000000000",
        "publisher": "acme",
        "pack": "tips",
        "title": "Tips",
        "version": "1.0.0",
        "created_at": datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        "changelog": "First.",
        "licence": {
            "name": "memhub-standard-1.0",
            "price_model": "free",
            "seats": 1,
            "licence_days": None,
            "quota_per_period": None,
            "forms": ["plaintext", "kv"],
            "federation_allowed": False,
        },
        "base_models": ["b-model", "a-model", "a-model"],
        "items": [
            manifest_item(provenance_id="b" * 8, version=1, kind="plaintext", content_sha256="1" * 64),
            manifest_item(provenance_id="a" * 8, version=3, kind="plaintext", content_sha256="2" * 64),
        ],
    }
    args.update(overrides)
    return manifest_build(**args)


# --- the documented test vector -----------------------------------------------------------------------


def test_the_documented_vector_reproduces():
    manifest = json.loads(_doc_block("json vector-manifest"))
    canonical = _doc_block("text vector-canonical").encode()
    key, public = _key()

    assert manifest_canonical(manifest) == canonical
    assert hashlib.sha256(canonical).hexdigest() == _doc_value("SHA-256 (release id)")
    assert manifest_sha256(manifest) == _doc_value("SHA-256 (release id)")
    # Ed25519 is deterministic: the documented signature is exactly what the test key produces.
    assert manifest_sign(manifest, key.sign) == _doc_value("Ed25519 signature (base64url)")
    assert _doc_value("public key (base64url)") == public
    assert manifest_verify(manifest, _doc_value("Ed25519 signature (base64url)"), public)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert _doc_value("key id") == "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]
    assert manifest["origin"]["key_id"] == _doc_value("key id")


def test_the_documented_vector_hashes_are_the_vaults():
    manifest = json.loads(_doc_block("json vector-manifest"))
    by_kind = {m["kind"]: m for m in manifest["memories"]}
    text = "Reset the router by holding its button for ten seconds."
    assert by_kind["plaintext"]["content_sha256"] == content_hash(kind="plaintext", text=text)
    lora = by_kind["parameter"]
    assert lora["content_sha256"] == content_hash(
        kind="parameter", text="Support answers adapter", blob_sha256=lora["blob_sha256"]
    )
    assert manifest["changelog_sha256"] == hashlib.sha256(b"## 1.2.0\n\n- Adds the adapter.\n").hexdigest()


# --- canonical form -----------------------------------------------------------------------------------


def test_canonical_bytes_ignore_key_order_and_whitespace():
    manifest = _manifest()
    shuffled = json.loads(json.dumps(manifest, indent=3, sort_keys=False))
    reordered = dict(reversed(list(shuffled.items())))
    assert manifest_canonical(reordered) == manifest_canonical(manifest)
    assert b" " not in manifest_canonical(manifest) and b"\n" not in manifest_canonical(manifest)


def test_build_sorts_items_forms_and_base_models_and_normalizes_time():
    manifest = _manifest(created_at=datetime(2026, 1, 2, 5, 4, 5, 999, tzinfo=timezone(timedelta(hours=2))))
    assert [m["provenance_id"] for m in manifest["memories"]] == ["a" * 8, "b" * 8]
    assert manifest["licence"]["forms"] == ["kv", "plaintext"]
    assert manifest["base_models"] == ["a-model", "b-model"]
    assert manifest["created_at"] == "2026-01-02T03:04:05Z"
    assert manifest["changelog_sha256"] == hashlib.sha256(b"First.").hexdigest()
    assert manifest["format"] == "memhub.pack-manifest" and manifest["format_version"] == 1


def test_blob_items_carry_blob_hash_and_model_and_plaintext_does_not():
    lora = manifest_item(
        provenance_id="p",
        version=1,
        kind="parameter",
        content_sha256="c" * 64,
        blob_sha256="d" * 64,
        model_fingerprint="fp",
        base_model="Qwen",
    )
    assert (
        lora["blob_sha256"] == "d" * 64 and lora["model_fingerprint"] == "fp" and lora["base_model"] == "Qwen"
    )
    plain = manifest_item(provenance_id="p", version=1, kind="plaintext", content_sha256="c" * 64)
    assert set(plain) == {"provenance_id", "version", "kind", "content_sha256"}


@pytest.mark.parametrize("bad", [2**60, float("nan"), datetime(2026, 1, 1, tzinfo=UTC)])
def test_values_json_cannot_carry_exactly_are_refused(bad):
    with pytest.raises(ValueError, match="not canonicalizable"):
        manifest_canonical({"x": bad})


# --- signatures ---------------------------------------------------------------------------------------


def test_any_change_breaks_the_signature():
    key, public = _key()
    manifest = _manifest()
    signature = manifest_sign(manifest, key.sign)
    assert manifest_verify(manifest, signature, public)
    for mutate in (
        lambda m: m["memories"][0].update(content_sha256="f" * 64),
        lambda m: m["licence"].update(seats=2),
        lambda m: m.update(version="1.0.1"),
        lambda m: m["memories"].pop(),
        lambda m: m.update(extra=True),
    ):
        tampered = copy.deepcopy(manifest)
        mutate(tampered)
        assert not manifest_verify(tampered, signature, public)
        assert manifest_sha256(tampered) != manifest_sha256(manifest)


def test_wrong_key_and_malformed_signatures_do_not_verify():
    key, public = _key()
    manifest = _manifest()
    signature = manifest_sign(manifest, key.sign)
    other = Ed25519PrivateKey.generate().public_key()
    other_b64 = b64url_encode(other.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    assert not manifest_verify(manifest, signature, other_b64)
    for bad_sig in ("", "!!!", signature[:-4], "A" * 86, signature + "AAAA"):
        assert not manifest_verify(manifest, bad_sig, public)
    for bad_key in ("", "not-a-key!", public[:-2]):
        assert not manifest_verify(manifest, signature, bad_key)


def test_the_instance_signer_is_the_mip_identity(tmp_path, monkeypatch):
    from mip_protocol import identity

    monkeypatch.setenv("MEMHUB_INSTANCE_KEY_FILE", str(tmp_path / "key.pem"))
    identity.reset_cache()
    try:
        signer = instance_signer()
        kid, key = identity.instance_key()
        assert signer.key_id == kid
        assert signer.public_key_b64 == identity.public_key_b64(key.public_key())
        manifest = _manifest(key_id=kid)
        assert manifest_verify(manifest, manifest_sign(manifest, signer.sign), signer.public_key_b64)
    finally:
        identity.reset_cache()


def test_without_a_registered_signer_signing_is_a_503(monkeypatch):
    monkeypatch.setattr(signing, "_factory", None)
    with pytest.raises(ApplicationError) as exc:
        instance_signer()
    assert exc.value.status == 503 and exc.value.code == "signing_unavailable"


# --- versions -----------------------------------------------------------------------------------------


def test_semver_precedence_follows_the_spec():
    ordered = [
        "0.9.9",
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.0.1",
        "1.10.0",
        "2.0.0",
    ]
    assert sorted(reversed(ordered), key=semver_key) == ordered


@pytest.mark.parametrize(
    "bad",
    ["", "1", "1.0", "v1.0.0", "01.0.0", "1.0.0+build.1", "1.0.0-", "1.0.0-01", "1.0.0 ", "1." * 30 + "0"],
)
def test_malformed_versions_are_refused(bad):
    with pytest.raises(ValueError):
        semver_key(bad)
