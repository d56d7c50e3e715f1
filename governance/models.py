"""Governance records. The audit log is append-only and hash-chained: each entry carries the hash of
the previous one, so an edited, deleted or reordered row breaks the chain at a findable place."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class AuditEvent(models.Model):
    """One entry of the audit log. The log is many hash chains, one per namespace (plus one per user for
    entries that name no namespace, and one for the system), so writers to different namespaces never
    wait for each other; `AuditAnchor` ties all the chains' heads together from time to time."""

    # Position in the whole log, assigned by the database without a lock: it orders entries across
    # chains (the audit API, the live-activity cursor). Gaps are possible (an aborted write uses one up).
    seq = models.BigAutoField(primary_key=True)
    chain = models.CharField(max_length=80)  # ns/<namespace id>, user/<user id>, system; legacy: pre-chains
    chain_seq = models.BigIntegerField()  # position in its chain, 1-based, no gaps: what the hashes cover
    at = models.DateTimeField()
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_label = models.CharField(max_length=200, blank=True)  # username, token id or remote instance
    operation = models.CharField(max_length=64, db_index=True)  # e.g. memory.read, memory.update
    namespace = models.ForeignKey(
        "accounts.Namespace", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    namespace_key = models.CharField(max_length=160, blank=True, db_index=True)
    organization_id = models.UUIDField(null=True, blank=True, db_index=True)
    owner_user_id = models.UUIDField(null=True, blank=True, db_index=True)
    object_type = models.CharField(max_length=32, blank=True)
    object_ids = models.JSONField(default=list)
    memory_kind = models.CharField(max_length=16, blank=True)
    details = models.JSONField(default=dict)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["chain", "chain_seq"], name="audit_chain_position")]
        indexes = [models.Index(fields=["at"], name="audit_at")]
        ordering = ["seq"]

    def __str__(self) -> str:
        return f"audit #{self.seq} ({self.chain} #{self.chain_seq}) {self.operation}"


class AuditChainHead(models.Model):
    """The last entry of one chain. Writers to a chain lock its head row (and only its own), so the
    chain grows one entry at a time while other chains grow beside it."""

    chain = models.CharField(max_length=80, primary_key=True)
    seq = models.BigIntegerField(default=0)
    hash = models.CharField(max_length=64, default="0" * 64)

    def __str__(self) -> str:
        return f"audit head {self.chain} #{self.seq}"


class AuditAnchor(models.Model):
    """A signed statement of every chain's head at one moment (like a Certificate Transparency signed
    tree head): `root` is the Merkle root over `heads`, signed with the instance's Ed25519 key, and each
    anchor names the digest of the one before it. Truncating or rewriting a chain behind an anchor, or
    deleting a chain outright, no longer matches it."""

    id = models.BigAutoField(primary_key=True)
    created_at = models.DateTimeField()
    chains = models.PositiveIntegerField()
    entries = models.BigIntegerField()  # sum of the heads' seqs
    heads = models.JSONField(default=list)  # [[chain, seq, hash], ...] sorted by chain
    root = models.CharField(max_length=64)
    # Digest of the previous anchor ("" for the first); unique, so two anchors can never fork the line.
    prev_digest = models.CharField(max_length=64, blank=True, unique=True)
    digest = models.CharField(max_length=64, unique=True)  # SHA-256 of the signed statement
    key_id = models.CharField(max_length=64)
    public_key = models.CharField(max_length=64)  # raw Ed25519 public key, base64url
    signature = models.CharField(max_length=128)  # Ed25519 over the signed statement, base64url

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"audit anchor #{self.id} ({self.chains} chains, {self.entries} entries)"


class Snapshot(models.Model):
    """A named point in a namespace's history: the (memory, version) pairs live at `at`.

    Rolling back to a snapshot writes new versions that restore those pairs; history is never rewritten.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    namespace = models.ForeignKey("accounts.Namespace", on_delete=models.CASCADE, related_name="snapshots")
    name = models.CharField(max_length=120)
    at = models.DateTimeField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    memory_count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["namespace", "name"], name="uniq_snapshot_name")]
        indexes = [models.Index(fields=["namespace", "-at"], name="snapshot_ns_at")]

    def __str__(self) -> str:
        return f"{self.namespace_id}@{self.name}"


class SnapshotEntry(models.Model):
    snapshot = models.ForeignKey(Snapshot, on_delete=models.CASCADE, related_name="entries")
    cube_id = models.UUIDField()
    version = models.PositiveIntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["snapshot", "cube_id"], name="uniq_snapshot_cube")]

    def __str__(self) -> str:
        return f"{self.cube_id} v{self.version}"


class PiiScanReport(models.Model):
    """A stored de-identification report for one upload, batch or namespace scan.

    The report never holds the values it found (masked previews only). For memory scans each scanned text
    is pinned to the (memory, version, content hash) it came from, so a finding can be resolved later
    and goes stale when the memory changes."""

    class Source(models.TextChoices):
        MEMORIES = "memories", "Memories of a namespace"
        TEXTS = "texts", "Texts given with the request"
        GATE = "gate", "Publish gate check"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    namespace = models.ForeignKey("accounts.Namespace", on_delete=models.CASCADE, related_name="pii_reports")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    source = models.CharField(max_length=16, choices=Source.choices)
    mode = models.CharField(max_length=16)  # report | redact | pseudonymize
    threshold = models.FloatField()
    min_score = models.FloatField()
    report = models.JSONField(default=dict)  # governance.deid PiiReport.to_dict(), findings keyed by id
    subjects = models.JSONField(default=list)  # per text index: {memory_id, version, content_sha256}
    applied = models.JSONField(default=dict)  # memory id -> version written by redact / pseudonymize
    # finding ids resolved here: accepted (text scans; memory scans record PiiAcceptance rows instead) or
    # redacted / pseudonymized (memory scans)
    resolved = models.JSONField(default=list)

    class Meta:
        indexes = [models.Index(fields=["namespace", "-created_at"], name="pii_report_ns_created")]

    def __str__(self) -> str:
        return f"pii report {self.id}"


class PiiAcceptance(models.Model):
    """A publisher's "this is not personal data" for one finding in one version of one memory's text."""

    namespace = models.ForeignKey("accounts.Namespace", on_delete=models.CASCADE, related_name="+")
    finding_id = models.CharField(max_length=200)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reason = models.CharField(max_length=300, blank=True)
    report = models.ForeignKey(
        PiiScanReport, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["namespace", "finding_id"], name="uniq_pii_acceptance")
        ]

    def __str__(self) -> str:
        return self.finding_id


class PseudonymKey(models.Model):
    """Per-namespace pseudonymisation key and state, so pseudonyms agree across a pack and its releases.
    The state holds keyed digests and counters, never the values replaced."""

    namespace = models.OneToOneField("accounts.Namespace", on_delete=models.CASCADE, related_name="+")
    key_hex = models.CharField(max_length=64)
    state = models.JSONField(default=dict)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"pseudonym key {self.namespace_id}"


class WatermarkKey(models.Model):
    """The secret a source (publisher) namespace watermarks its installations' copies with."""

    namespace = models.OneToOneField("accounts.Namespace", on_delete=models.CASCADE, related_name="+")
    key_hex = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"watermark key {self.namespace_id}"


class WatermarkAssignment(models.Model):
    """One installation's watermark: the id its copies are keyed by (`MemCube.watermark_id`), the source
    namespace whose key embeds it, and how many canary memories it was issued."""

    watermark_id = models.CharField(max_length=64, unique=True)
    source_namespace = models.ForeignKey(
        "accounts.Namespace", on_delete=models.CASCADE, related_name="watermark_assignments"
    )
    installation_namespace = models.ForeignKey(
        "accounts.Namespace", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    canaries = models.PositiveSmallIntegerField(default=3)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.watermark_id
