"""This instance's identity for the Memory Interchange Protocol: an Ed25519 signing key.

The private key is read from MEMHUB_INSTANCE_KEY_FILE (PEM, PKCS#8) or, on first use, generated into the
data directory with owner-only permissions. Peers learn the public key from `/.well-known/mip`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings

_lock = threading.Lock()
_cached: tuple[str, Ed25519PrivateKey] | None = None


def _key_path() -> Path:
    explicit = os.environ.get("MEMHUB_INSTANCE_KEY_FILE")
    return Path(explicit) if explicit else Path(settings.DATA_DIR) / "mip" / "instance_ed25519.pem"


def _load_or_create(path: Path) -> Ed25519PrivateKey:
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 private key.")
        return key
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    os.replace(tmp, path)  # atomic: a racing process either sees no file or a whole key
    return _load_or_create(path)


def instance_key() -> tuple[str, Ed25519PrivateKey]:
    """(key id, private key). The key id is `ed25519:` + the first 16 hex of SHA-256(raw public key)."""
    global _cached
    with _lock:
        if _cached is None:
            key = _load_or_create(_key_path())
            _cached = (key_id(key.public_key()), key)
        return _cached


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def public_key_b64(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def reset_cache() -> None:
    global _cached
    with _lock:
        _cached = None
