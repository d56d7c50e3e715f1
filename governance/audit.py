"""Append-only, hash-chained audit log: one chain per namespace, tied together by signed anchors.

Each namespace's entries form their own hash chain (`ns/<namespace id>`); entries that name no namespace
go to their actor's chain (`user/<user id>`) or the system's (`system`). A writer locks only the head
row of the chain it extends, so tenants never queue behind each other, and `(chain, chain_seq)` is
unique, so two processes can never both write the same position (the loser retries).

Per-chain hashes catch an edited, deleted or reordered entry; the head catches entries removed from
the end. A chain rewritten wholesale (every hash recomputed, head included), or deleted outright, is
caught by anchors: from time to time `audit_anchor_create` signs the Merkle root of every chain's head
with the instance's Ed25519 key, Certificate Transparency style, and `audit_verify` checks every chain
against every anchor, and every anchor's signature and link to the one before it.

The signing key comes from a callable registered with `audit_signer_register` (mip_protocol registers
the instance identity in its `ready()`): the audit kernel sits below mip_protocol and imports nothing
from it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings
from django.db import IntegrityError, OperationalError, connection, transaction
from django.utils import timezone

from governance.models import AuditAnchor, AuditChainHead, AuditEvent

logger = logging.getLogger("governance.audit")

GENESIS = "0" * 64
LEGACY_CHAIN = "legacy"  # entries written before the log had chains: hashed in the original format
SYSTEM_CHAIN = "system"
ANCHOR_TYPE = "memhub.audit.anchor/v1"
APPEND_ATTEMPTS = 5

Signer = Callable[[], tuple[str, Ed25519PrivateKey]]
_signer: Signer | None = None


# --- chains and hashes ------------------------------------------------------------------------------


def chain_for(*, namespace: Any = None, user: Any = None) -> str:
    """The chain an entry belongs to: its namespace's, else its actor's, else the system's."""
    if namespace is not None and getattr(namespace, "pk", None):
        return f"ns/{namespace.pk}"
    if user is not None and getattr(user, "pk", None):
        return f"user/{user.pk}"
    return SYSTEM_CHAIN


def _canonical(event: AuditEvent) -> bytes:
    if event.chain == LEGACY_CHAIN:
        # The original single chain's format, so entries written before chains still verify.
        body: dict[str, Any] = {
            "seq": event.chain_seq,
            "at": event.at.isoformat(),
            "actor": str(event.actor_id) if event.actor_id else None,
            "actor_label": event.actor_label,
            "operation": event.operation,
            "namespace_key": event.namespace_key,
            "object_type": event.object_type,
            "object_ids": event.object_ids,
            "memory_kind": event.memory_kind,
            "details": event.details,
            "prev_hash": event.prev_hash,
        }
    else:
        # Foreign keys that the database nulls on deletion (actor, namespace) stay out of the hash, so
        # deleting a user or a namespace does not look like tampering; the label and key are kept.
        body = {
            "v": 2,
            "chain": event.chain,
            "seq": event.chain_seq,
            "at": event.at.isoformat(),
            "actor_label": event.actor_label,
            "operation": event.operation,
            "namespace_key": event.namespace_key,
            "organization_id": str(event.organization_id) if event.organization_id else None,
            "owner_user_id": str(event.owner_user_id) if event.owner_user_id else None,
            "object_type": event.object_type,
            "object_ids": event.object_ids,
            "memory_kind": event.memory_kind,
            "details": event.details,
            "prev_hash": event.prev_hash,
        }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()


def event_hash(event: AuditEvent) -> str:
    return hashlib.sha256(_canonical(event)).hexdigest()


# --- appending ----------------------------------------------------------------------------------------


def _actor_fields(actor: Any) -> tuple[Any, str, dict[str, Any]]:
    """(user row or None, label, context details) for a policy Subject, a user, or None (the system)."""
    from governance.policy import Subject

    if isinstance(actor, Subject):
        user = actor.user if actor.is_user else None
        extra: dict[str, Any] = dict(actor.context.as_dict())
        extra.pop("operation", None)
        if actor.token_id:
            extra["token"] = str(actor.token_id)
        return user, actor.label, extra
    if actor is None:
        return None, "system", {}
    user = actor if getattr(actor, "pk", None) and getattr(actor, "is_authenticated", False) else None
    return user, getattr(actor, "username", "") or str(actor), {}


def _append(event: AuditEvent) -> None:
    """Extend the event's chain by it. Runs inside a transaction (or savepoint) of its own."""
    head = AuditChainHead.objects.select_for_update().filter(chain=event.chain).first()
    if head is None:
        head = AuditChainHead(chain=event.chain)
        head.save(force_insert=True)  # a racing first writer makes this an IntegrityError: retried
    _extend(event, head)


def _extend(event: AuditEvent, head: AuditChainHead) -> None:
    """Write `event` after `head` (whose row the caller has locked) and move the head on."""
    event.chain_seq = head.seq + 1
    event.prev_hash = head.hash
    event.at = timezone.now()  # taken under the lock, so times never go backwards within a chain
    event.hash = event_hash(event)
    event.save(force_insert=True)
    AuditChainHead.objects.filter(chain=event.chain).update(seq=event.chain_seq, hash=event.hash)


def audit_record(
    *,
    actor: Any,
    operation: str,
    namespace: Any = None,
    object_type: str = "",
    object_ids: Iterable[Any] | None = None,
    memory_kind: str = "",
    details: dict[str, Any] | None = None,
    chain: str | None = None,
) -> AuditEvent:
    """Append one entry to its namespace's chain (see `chain_for`; `chain` overrides). `actor` is a
    policy Subject, a user, or None (the system); the subject's context (purpose, licence,
    installation) and API token id are kept with the entry.

    Cheap enough for every read: three statements, and a lock on this namespace's head row only (held
    until the caller's transaction ends, when called inside one)."""
    user, label, context = _actor_fields(actor)
    event = AuditEvent(
        chain=chain or chain_for(namespace=namespace, user=user),
        at=timezone.now(),
        actor=user,
        actor_label=label[:200],
        operation=operation,
        namespace=namespace,
        namespace_key=getattr(namespace, "key", ""),
        organization_id=getattr(namespace, "organization_id", None),
        owner_user_id=getattr(namespace, "owner_user_id", None),
        object_type=object_type,
        object_ids=[str(i) for i in list(object_ids or [])[:1000]],
        memory_kind=memory_kind,
        details={**context, **(details or {})},
    )
    outermost = not connection.in_atomic_block
    if not outermost and connection.vendor == "postgresql":
        # Inside the caller's transaction, on a database with row locks: once the chain's head row is
        # locked nobody else can take the next position, so the append cannot conflict and needs no
        # savepoint to retry in (two round trips less on every audited write). A chain without a head
        # yet, where a racing first writer can conflict, takes the retrying path below.
        head = AuditChainHead.objects.select_for_update().filter(chain=event.chain).first()
        if head is not None:
            _extend(event, head)
            return event
    for attempt in range(1, APPEND_ATTEMPTS + 1):
        try:
            with transaction.atomic():
                _append(event)
            return event
        except IntegrityError:
            # Another process took this position (SQLite takes no row locks) or created the head
            # first: the savepoint is gone, read the head again.
            if attempt == APPEND_ATTEMPTS:
                raise
        except OperationalError as exc:
            # SQLite refuses a stale deferred transaction ("database is locked"); only a transaction
            # of our own can be retried.
            if not (outermost and connection.vendor == "sqlite" and attempt < APPEND_ATTEMPTS):
                raise
            logger.info("audit append retried after %s", exc)
        event.pk = None
        event._state.adding = True
    raise AssertionError("unreachable")  # pragma: no cover


# --- denied attempts ------------------------------------------------------------------------------------


def audit_denied(*, request: Any, error: Exception, status: int) -> None:
    """Record a refused request of an authenticated caller as `access.denied`. Called by the exception
    handler (core.exceptions) after the refused transaction has rolled back.

    When the code that refused named what was asked for (`core.exceptions.deny_target`), the entry goes
    to that namespace's chain, for its owners to see. Otherwise it goes to the caller's own chain, which
    only instance administrators read: showing callers their own denials would tell them which ids
    exist elsewhere (a denial of an existing object would go to its owner, a missing one to them)."""
    from core.exceptions import denied_target
    from governance.policy import Subject

    target = denied_target(error)
    code = getattr(error, "code", "") or getattr(error, "default_code", "")
    audit_record(
        actor=Subject.from_request(request),
        operation="access.denied",
        namespace=target.namespace if target else None,
        object_type=target.object_type if target else "",
        object_ids=list(target.object_ids) if target else [],
        details={
            "method": getattr(request, "method", ""),
            "path": str(getattr(request, "path", ""))[:300],
            "status": status,
            "code": str(code)[:64],
        },
    )


# --- verification -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainBreak:
    seq: int  # position in `chain` (0 with no chain: the break is in the anchors)
    problem: str
    chain: str = ""

    def __str__(self) -> str:
        where = f"chain {self.chain} " if self.chain else ""
        return f"{where}entry {self.seq}: {self.problem}"


def _anchored_points(anchors: list[AuditAnchor]) -> tuple[dict[str, dict[int, str]], ChainBreak | None]:
    """chain -> {seq: hash} named by the anchors, after checking each anchor's signature, root and link
    to the one before it, and that no chain shrinks or vanishes from one anchor to the next."""
    points: dict[str, dict[int, str]] = {}
    trusted = _trusted_key_ids() if anchors else None
    prev: AuditAnchor | None = None
    for anchor in anchors:
        problem = _anchor_problem(anchor, prev, trusted)
        if problem:
            return points, ChainBreak(0, f"anchor #{anchor.id} {problem}")
        now = {c: s for c, s, _ in anchor.heads}
        for c, s, _ in prev.heads if prev is not None else ():
            if now.get(c, -1) < s:
                return points, ChainBreak(s, f"anchor #{anchor.id} has this chain shorter than before", c)
        for c, s, h in anchor.heads:
            seen = points.setdefault(c, {})
            if seen.get(s, h) != h:
                return points, ChainBreak(s, f"anchor #{anchor.id} disagrees with an earlier anchor", c)
            seen[s] = h
        prev = anchor
    return points, None


def audit_verify(
    *,
    chunk: int = 2000,
    anchor: tuple[str, int, str] | None = None,
    chain: str | None = None,
) -> ChainBreak | None:
    """Walk every chain (or one) in order; report the first entry whose position, link or content does
    not check out, a head that does not match its chain's end, or a disagreement with an anchor.

    Checked against every stored anchor (their signatures too) and, if given, `anchor`: a
    (chain, seq, hash) published elsewhere earlier, e.g. from `audit_head(chain=...)`."""
    anchors = list(AuditAnchor.objects.order_by("id"))
    points, broken = _anchored_points(anchors)
    if broken is not None:
        return broken
    if anchor is not None:
        a_chain, a_seq, a_hash = anchor
        if points.get(a_chain, {}).get(a_seq, a_hash) != a_hash:
            return ChainBreak(a_seq, "the given anchor disagrees with a stored anchor", a_chain)
        points.setdefault(a_chain, {})[a_seq] = a_hash
    if chain is not None:
        points = {chain: points.get(chain, {})}

    heads = {h.chain: h for h in AuditChainHead.objects.filter(**({"chain": chain} if chain else {}))}
    events: Iterator[AuditEvent] = (
        AuditEvent.objects.filter(**({"chain": chain} if chain else {}))
        .order_by("chain", "chain_seq")
        .iterator(chunk_size=chunk)
    )
    ends: dict[str, tuple[int, str]] = {}
    current, prev_hash, expected = "", GENESIS, 1
    for event in events:
        if event.chain != current:
            current, prev_hash, expected = event.chain, GENESIS, 1
        if event.chain_seq != expected:
            return ChainBreak(
                expected, f"entry {expected} is missing (next entry is {event.chain_seq})", current
            )
        if event.prev_hash != prev_hash:
            return ChainBreak(
                event.chain_seq,
                "previous-hash link does not match the entry before it "
                "(an entry was removed, inserted or moved)",
                current,
            )
        if event_hash(event) != event.hash:
            return ChainBreak(event.chain_seq, "entry content does not match its hash (edited)", current)
        published = points.get(current, {}).get(event.chain_seq)
        if published is not None and published != event.hash:
            return ChainBreak(
                event.chain_seq, "entry hash differs from the signed anchor (chain rewritten)", current
            )
        prev_hash, expected = event.hash, expected + 1
        ends[current] = (event.chain_seq, event.hash)

    for name in sorted(set(ends) | set(heads) | set(points)):
        last, last_hash = ends.get(name, (0, GENESIS))
        head = heads.get(name)
        if head is None and last:
            return ChainBreak(last, "the chain has entries but no head (head row removed)", name)
        if head is not None and head.seq != last:
            return ChainBreak(
                last + 1,
                f"chain ends at {last} but the head says {head.seq} (entries removed from the end)",
                name,
            )
        if head is not None and last and head.hash != last_hash:
            return ChainBreak(last, "the last entry's hash differs from the head's (chain rewritten)", name)
        anchored = max(points.get(name, {}), default=0)
        if anchored > last:
            return ChainBreak(
                last + 1, f"an anchor names entry {anchored} but the chain ends at {last} (truncated)", name
            )
    return None


def audit_head(*, chain: str | None = None) -> tuple[int, str]:
    """One chain's current (seq, hash); without `chain`, the whole log's tree head: (entries in all
    chains, Merkle root over every chain's head), what an anchor signs."""
    if chain is not None:
        head = AuditChainHead.objects.filter(chain=chain).first()
        return (head.seq, head.hash) if head else (0, GENESIS)
    heads = _current_heads()
    return sum(s for _, s, _ in heads), merkle_root(heads)


# --- anchors ------------------------------------------------------------------------------------------


def audit_signer_register(signer: Signer | None) -> None:
    """Name the callable that returns (key id, Ed25519 private key) for signing anchors (None: none)."""
    global _signer
    _signer = signer


def _current_heads() -> list[list[Any]]:
    rows = AuditChainHead.objects.filter(seq__gt=0).values_list("chain", "seq", "hash")
    return [[c, s, h] for c, s, h in sorted(rows)]  # Python's order: the same on every database


def _leaf(chain: str, seq: int, digest: str) -> bytes:
    return hashlib.sha256(b"\x00" + f"{chain}\n{seq}\n{digest}".encode()).digest()


def merkle_root(heads: Iterable[Iterable[Any]]) -> str:
    """RFC 6962 Merkle tree hash over the heads (sorted by chain): leaves 0x00-prefixed, nodes 0x01."""
    level = [_leaf(str(c), int(s), str(h)) for c, s, h in heads]
    if not level:
        return hashlib.sha256(b"").hexdigest()
    while len(level) > 1:
        nxt = [
            hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            nxt.append(level[-1])  # an odd node moves up unpaired, as RFC 6962's split does
        level = nxt
    return level[0].hex()


def _statement(anchor: AuditAnchor) -> bytes:
    body = {
        "type": ANCHOR_TYPE,
        "created_at": anchor.created_at.isoformat(),
        "chains": anchor.chains,
        "entries": anchor.entries,
        "root": anchor.root,
        "prev": anchor.prev_digest,
        "key_id": anchor.key_id,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _raw_public(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _trusted_key_ids() -> set[str] | None:
    """Key ids whose anchors verify: the signer's own, plus MEMHUB_AUDIT_TRUSTED_KEY_IDS (keys this
    instance used before a rotation). None when no signer is registered: signatures are then checked
    against the key stored with each anchor only."""
    if _signer is None:
        return None
    kid, _ = _signer()
    return {kid, *getattr(settings, "MEMHUB_AUDIT_TRUSTED_KEY_IDS", [])}


def _anchor_problem(anchor: AuditAnchor, prev: AuditAnchor | None, trusted: set[str] | None) -> str:
    if anchor.prev_digest != (prev.digest if prev else ""):
        return "does not follow the anchor before it (an anchor was removed or inserted)"
    if merkle_root(anchor.heads) != anchor.root or anchor.chains != len(anchor.heads):
        return "has heads that do not give its root (edited)"
    if anchor.entries != sum(int(s) for _, s, _ in anchor.heads):
        return "has an entry count that does not match its heads (edited)"
    statement = _statement(anchor)
    if hashlib.sha256(statement).hexdigest() != anchor.digest:
        return "has a digest that does not match its content (edited)"
    if trusted is not None and anchor.key_id not in trusted:
        return f"is signed by {anchor.key_id}, which is not this instance's key"
    try:
        public = Ed25519PublicKey.from_public_bytes(_unb64(anchor.public_key))
        public.verify(_unb64(anchor.signature), statement)
    except (InvalidSignature, ValueError):
        return "has a signature that does not verify"
    return ""


def audit_anchor_create(*, force: bool = False) -> AuditAnchor | None:
    """Sign every chain's current head (a signed tree head). None when nothing changed since the last
    anchor (unless `force`) or when another process anchored at the same moment. Safe to run twice."""
    if _signer is None:
        raise RuntimeError(
            "No audit signing key: register one with governance.audit.audit_signer_register "
            "(mip_protocol does so for the instance key when it is installed)."
        )
    key_id, key = _signer()
    try:
        with transaction.atomic():
            last = AuditAnchor.objects.select_for_update().order_by("-id").first()
            heads = _current_heads()
            if not force and (last.heads == heads if last is not None else not heads):
                return None
            anchor = AuditAnchor(
                created_at=timezone.now(),
                chains=len(heads),
                entries=sum(s for _, s, _ in heads),
                heads=heads,
                root=merkle_root(heads),
                prev_digest=last.digest if last else "",
                key_id=key_id,
                public_key=_b64(_raw_public(key.public_key())),
            )
            statement = _statement(anchor)
            anchor.digest = hashlib.sha256(statement).hexdigest()
            anchor.signature = _b64(key.sign(statement))
            anchor.save(force_insert=True)
    except IntegrityError:
        return None  # a concurrent anchor took this place in the anchor chain; it covers the same heads
    return anchor


def audit_anchor_latest() -> AuditAnchor | None:
    return AuditAnchor.objects.order_by("-id").first()
