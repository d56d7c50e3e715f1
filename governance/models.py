"""Governance records. The audit log is append-only and hash-chained: each entry carries the hash of
the previous one, so an edited, deleted or reordered row breaks the chain at a findable place."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class AuditEvent(models.Model):
    seq = models.BigIntegerField(unique=True)  # position in the chain, 1-based, no gaps
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
        indexes = [models.Index(fields=["at"], name="audit_at")]
        ordering = ["seq"]

    def __str__(self) -> str:
        return f"audit #{self.seq} {self.operation}"


class AuditChainHead(models.Model):
    """One row, locked while appending, so concurrent writers extend the chain one at a time."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    seq = models.BigIntegerField(default=0)
    hash = models.CharField(max_length=64, default="0" * 64)

    def __str__(self) -> str:
        return f"audit head #{self.seq}"


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
