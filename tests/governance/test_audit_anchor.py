"""Signed anchors over every audit chain's head (a signed tree head, Certificate Transparency style):
`manage.py audit_anchor` and the beat task write them with the instance's Ed25519 key, and
`audit_verify` checks their signatures, their links and every chain against them, so a chain rewritten,
truncated or deleted behind an anchor is found even when its head was rewritten too."""

from __future__ import annotations

import base64
from io import StringIO

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection

from governance import audit
from governance.audit import (
    audit_anchor_create,
    audit_head,
    audit_record,
    audit_verify,
    event_hash,
    merkle_root,
)
from governance.models import AuditAnchor, AuditChainHead, AuditEvent

pytestmark = pytest.mark.django_db
TABLE = AuditEvent._meta.db_table


@pytest.fixture(autouse=True)
def instance_key_file(tmp_path, monkeypatch):
    """The instance key (mip_protocol's identity, which signs anchors) in a file of this test."""
    from mip_protocol import identity

    monkeypatch.setenv("MEMHUB_INSTANCE_KEY_FILE", str(tmp_path / "instance.pem"))
    identity.reset_cache()
    yield
    identity.reset_cache()


@pytest.fixture
def log(alice, bob):
    for i in range(4):
        audit_record(actor=alice, operation="memory.read", namespace=alice.namespaces.get(), details={"i": i})
    for i in range(2):
        audit_record(actor=bob, operation="memory.read", namespace=bob.namespaces.get(), details={"i": i})
    audit_record(actor=None, operation="lifecycle.sweep")
    return {"alice": f"ns/{alice.namespaces.get().pk}", "bob": f"ns/{bob.namespaces.get().pk}"}


def sql(statement: str, params: list) -> None:
    with connection.cursor() as cur:
        cur.execute(statement, params)


def verify_fails() -> str:
    with pytest.raises(CommandError) as excinfo:
        call_command("audit_verify", stdout=StringIO())
    return str(excinfo.value)


def test_an_anchor_signs_every_chain_head_with_the_instance_key(log):
    from mip_protocol.identity import instance_key

    anchor = audit_anchor_create()
    assert anchor is not None
    assert anchor.chains == 3 and anchor.entries == 7
    assert {c for c, _, _ in anchor.heads} == {log["alice"], log["bob"], "system"}
    assert (anchor.entries, anchor.root) == audit_head()
    key_id, key = instance_key()
    assert anchor.key_id == key_id
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert base64.urlsafe_b64decode(anchor.public_key + "=" * (-len(anchor.public_key) % 4)) == raw
    assert audit_verify() is None


def test_anchors_form_a_line_and_repeat_only_when_something_changed(log, alice):
    first = audit_anchor_create()
    assert audit_anchor_create() is None  # nothing new
    audit_record(actor=alice, operation="memory.read", namespace=alice.namespaces.get())
    second = audit_anchor_create()
    assert second is not None and second.prev_digest == first.digest and first.prev_digest == ""
    assert dict((c, s) for c, s, _ in second.heads)[log["alice"]] == 5
    assert audit_verify() is None


def test_the_merkle_root_follows_rfc_6962():
    import hashlib

    def leaf(c, s, h):
        return hashlib.sha256(b"\x00" + f"{c}\n{s}\n{h}".encode()).digest()

    def node(a, b):
        return hashlib.sha256(b"\x01" + a + b).digest()

    heads = [["a", 1, "x"], ["b", 2, "y"], ["c", 3, "z"]]
    la, lb, lc = (leaf(*h) for h in heads)
    assert merkle_root(heads) == node(node(la, lb), lc).hex()
    assert merkle_root(heads[:1]) == la.hex()
    assert merkle_root([]) == hashlib.sha256(b"").hexdigest()


def test_a_chain_rewritten_behind_an_anchor_is_found(log):
    audit_anchor_create()
    chain = log["alice"]
    # the forger edits entry 2 and recomputes every hash after it, head included
    sql(f"UPDATE {TABLE} SET actor_label = %s WHERE chain = %s AND chain_seq = 2", ["mallory", chain])  # noqa: S608
    prev = AuditEvent.objects.get(chain=chain, chain_seq=1).hash
    for event in AuditEvent.objects.filter(chain=chain, chain_seq__gte=2).order_by("chain_seq"):
        event.prev_hash, event.hash = prev, ""
        event.hash = event_hash(event)
        AuditEvent.objects.filter(pk=event.pk).update(prev_hash=event.prev_hash, hash=event.hash)
        prev = event.hash
    AuditChainHead.objects.filter(chain=chain).update(hash=prev)
    message = verify_fails()
    assert chain in message and "signed anchor" in message


def test_a_chain_truncated_behind_an_anchor_is_found_even_with_its_head_fixed(log):
    audit_anchor_create()
    chain = log["bob"]
    sql(f"DELETE FROM {TABLE} WHERE chain = %s AND chain_seq = 2", [chain])  # noqa: S608
    kept = AuditEvent.objects.get(chain=chain, chain_seq=1)
    AuditChainHead.objects.filter(chain=chain).update(seq=1, hash=kept.hash)
    message = verify_fails()
    assert chain in message and "truncated" in message


def test_a_chain_deleted_outright_is_found(log):
    audit_anchor_create()
    AuditEvent.objects.filter(chain=log["bob"]).delete()
    AuditChainHead.objects.filter(chain=log["bob"]).delete()
    message = verify_fails()
    assert log["bob"] in message and "truncated" in message


def test_an_edited_anchor_is_found(log):
    anchor = audit_anchor_create()
    heads = [[c, s - 1 if c == log["alice"] else s, h] for c, s, h in anchor.heads]
    AuditAnchor.objects.filter(pk=anchor.pk).update(heads=heads)
    assert "do not give its root" in verify_fails()
    # recomputing the root and digest does not help without the key
    AuditAnchor.objects.filter(pk=anchor.pk).update(
        heads=heads, root=merkle_root(heads), entries=anchor.entries - 1
    )
    assert "digest" in verify_fails()


def test_an_anchor_forged_with_another_key_is_found(log):
    anchor = audit_anchor_create()
    forger = Ed25519PrivateKey.generate()
    anchor.key_id = "ed25519:0000000000000000"
    anchor.public_key = (
        base64.urlsafe_b64encode(
            forger.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
        .decode()
        .rstrip("=")
    )
    statement = audit._statement(anchor)
    import hashlib

    anchor.digest = hashlib.sha256(statement).hexdigest()
    anchor.signature = base64.urlsafe_b64encode(forger.sign(statement)).decode().rstrip("=")
    anchor.save()
    assert "not this instance's key" in verify_fails()


def test_a_bad_signature_is_found(log):
    anchor = audit_anchor_create()
    sig = bytearray(base64.urlsafe_b64decode(anchor.signature + "=="))
    sig[0] ^= 1
    AuditAnchor.objects.filter(pk=anchor.pk).update(
        signature=base64.urlsafe_b64encode(bytes(sig)).decode().rstrip("=")
    )
    assert "a signature that does not verify" in verify_fails()


def test_a_removed_anchor_is_found(log, alice):
    audit_anchor_create()
    for _ in range(2):
        audit_record(actor=alice, operation="memory.read", namespace=alice.namespaces.get())
        audit_anchor_create()
    AuditAnchor.objects.order_by("id")[1].delete()
    assert "does not follow the anchor before it" in verify_fails()


def test_the_command_and_the_beat_task_write_anchors(log, alice):
    out = StringIO()
    call_command("audit_anchor", stdout=out)
    assert "3 chains, 7 entries" in out.getvalue()
    out = StringIO()
    call_command("audit_anchor", stdout=out)
    assert "Nothing new" in out.getvalue()
    audit_record(actor=alice, operation="memory.read", namespace=alice.namespaces.get())
    from governance.tasks import audit_anchor as task

    result = task.delay().get()
    assert result["entries"] == 8 and AuditAnchor.objects.count() == 2
    assert task.delay().get() == {"anchor": None}
    entry = settings.CELERY_BEAT_SCHEDULE["governance-audit-anchor"]
    assert entry["task"] == "governance.tasks.audit_anchor"
    out = StringIO()
    call_command("audit_verify", stdout=out)
    assert "2 signed anchors verified" in out.getvalue()


def test_without_a_signing_key_anchoring_fails_clearly(log, monkeypatch):
    monkeypatch.setattr(audit, "_signer", None)
    with pytest.raises(CommandError, match="No audit signing key"):
        call_command("audit_anchor", stdout=StringIO())
