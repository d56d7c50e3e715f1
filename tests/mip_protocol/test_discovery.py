import base64
import os
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mip_protocol import identity


@pytest.fixture(autouse=True)
def _fresh_key(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMHUB_INSTANCE_KEY_FILE", str(tmp_path / "key.pem"))
    identity.reset_cache()
    yield
    identity.reset_cache()


def test_well_known_publishes_a_usable_verify_key(client, tmp_path):
    resp = client.get("/.well-known/mip")
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["protocol"] == "mip" and "0.1" in doc["versions"]
    ((kid, entry),) = doc["verify_keys"].items()
    raw = base64.urlsafe_b64decode(entry["key"] + "=" * (-len(entry["key"]) % 4))
    public = Ed25519PublicKey.from_public_bytes(raw)
    _, private = identity.instance_key()
    public.verify(private.sign(b"hello"), b"hello")  # raises if the published key is not ours
    assert kid == identity.key_id(public)
    mode = stat.S_IMODE(os.stat(tmp_path / "key.pem").st_mode)
    assert mode == 0o600


def test_key_is_stable_across_restarts(client):
    first = client.get("/.well-known/mip").json()["verify_keys"]
    identity.reset_cache()
    assert client.get("/.well-known/mip").json()["verify_keys"] == first


def test_only_get_is_allowed(client):
    assert client.post("/.well-known/mip").status_code == 405
