"""Governance records. The audit log is append-only and hash-chained: each entry carries the hash of
the previous one, so an edited, deleted or reordered row breaks the chain at a findable place."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class AuditEvent(models.Model):
    seq = models.BigIntegerField(unique=True)  # position in the chain, 1-based, no gaps
    at = models.DateTimeField()
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="+")
    actor_label = models.CharField(max_length=200, blank=True)  # username, token id or remote instance
    operation = models.CharField(max_length=64, db_index=True)  # e.g. memory.read, memory.update
    namespace = models.ForeignKey("accounts.Namespace", null=True, blank=True, on_delete=models.SET_NULL,
                                  related_name="+")
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


class AuditChainHead(models.Model):
    """One row, locked while appending, so concurrent writers extend the chain one at a time."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    seq = models.BigIntegerField(default=0)
    hash = models.CharField(max_length=64, default="0" * 64)
