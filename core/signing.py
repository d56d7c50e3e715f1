"""The instance's signing key, as a hook the lower layers use without importing the layer that owns it.

The key is MIP's instance identity (`mip_protocol.identity`), but the marketplace (release manifests)
sits below `mip_protocol` and must not import it: `mip_protocol`'s `AppConfig.ready()` registers a
factory here, and callers ask `instance_signer()` for the key id, a signing function and the public key.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from core.errors import ApplicationError


class InstanceSigner(NamedTuple):
    """`key_id` (`ed25519:` + 16 hex of SHA-256 of the raw public key), `sign(bytes) -> 64-byte Ed25519
    signature`, and `public_key_b64` (the raw 32-byte public key, base64url without padding)."""

    key_id: str
    sign: Callable[[bytes], bytes]
    public_key_b64: str


SignerFactory = Callable[[], InstanceSigner]

_factory: SignerFactory | None = None


def instance_signer_register(factory: SignerFactory | None) -> None:
    """Name the callable that returns this instance's signer (None: no signer)."""
    global _factory
    _factory = factory


def instance_signer() -> InstanceSigner:
    """This instance's signer. 503 when no app registered one (a deployment without `mip_protocol`)."""
    if _factory is None:
        raise ApplicationError(
            "This instance has no signing key configured; enable the mip_protocol app.",
            status=503,
            code="signing_unavailable",
        )
    return _factory()


def b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    """Base64url with or without padding; ValueError on anything else."""
    if not isinstance(text, str) or not text or any(c not in _B64URL for c in text.rstrip("=")):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def ed25519_verify(*, data: bytes, signature_b64: str, public_key_b64: str) -> bool:
    """True when `signature_b64` is a valid Ed25519 signature of `data` under the public key; False for a
    bad signature and for a malformed signature or key (a verifier answers, it does not raise)."""
    try:
        public = Ed25519PublicKey.from_public_bytes(b64url_decode(public_key_b64))
        signature = b64url_decode(signature_b64)
    except ValueError:
        return False
    if len(signature) != 64:
        return False
    try:
        public.verify(signature, data)
    except InvalidSignature:
        return False
    return True
