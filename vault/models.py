"""The MemCube: one memory unit, its immutable version history and the index outbox.

The relational database is the source of truth. `MemCube` is the head (current state) of one memory;
every change writes an immutable `MemCubeVersion` linked to its parent, so history is never overwritten.
Vectors in Milvus are derived: `IndexOutbox` rows, written in the same transaction as the change, tell the
index worker what to (re)index, so a crash can delay the index but never silently desynchronise it.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class MemoryKind(models.TextChoices):
    PLAINTEXT = "plaintext", "Plaintext"
    ACTIVATION = "activation", "Activation (KV cache)"
    PARAMETER = "parameter", "Parameter (LoRA adapter)"


class MemoryState(models.TextChoices):
    GENERATED = "generated", "Generated"
    ACTIVATED = "activated", "Activated"
    MERGED = "merged", "Merged"
    ARCHIVED = "archived", "Archived"
    EXPIRED = "expired", "Expired"
    DELETED = "deleted", "Deleted"


# States whose memories are live: present in the hot index and found by search. Merged sources are
# superseded by the memory they were merged into; archived and expired ones wait for a restore; all of
# them stay readable by id and in lists.
LIVE_STATES = (MemoryState.GENERATED, MemoryState.ACTIVATED)


class Sensitivity(models.TextChoices):
    PUBLIC = "public", "Public"
    INTERNAL = "internal", "Internal"
    CONFIDENTIAL = "confidential", "Confidential"
    RESTRICTED = "restricted", "Restricted"


class VersionOperation(models.TextChoices):
    CREATE = "create", "Create"
    OVERWRITE = "overwrite", "Overwrite"
    APPEND = "append", "Append"
    MERGE = "merge", "Merge"
    DELETE = "delete", "Delete"
    RESTORE = "restore", "Restore"
    LIFECYCLE = "lifecycle", "Lifecycle change"
    PURGE = "purge", "Purge (erasure)"


class MemoryContent(models.Model):
    """Fields that every version carries (what a memory says and how it is described)."""

    kind = models.CharField(max_length=16, choices=MemoryKind.choices, default=MemoryKind.PLAINTEXT)
    text = models.TextField(blank=True)
    title = models.CharField(max_length=300, blank=True)
    tags = models.JSONField(default=list, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    source = models.JSONField(default=dict, blank=True)  # who/what produced it; origin instance
    semantic_type = models.CharField(max_length=32, blank=True)  # fact, event, preference, procedure, ...
    language = models.CharField(max_length=16, blank=True)
    entities = models.JSONField(default=list, blank=True)
    valid_from = models.DateTimeField(null=True, blank=True)  # when the fact starts to hold
    valid_to = models.DateTimeField(null=True, blank=True)  # when it stopped holding (None: still holds)
    # activation / parameter payloads live in blob storage; the row holds the reference and identity.
    blob_uri = models.CharField(max_length=500, blank=True)
    blob_sha256 = models.CharField(max_length=64, blank=True)
    model_fingerprint = models.CharField(max_length=128, blank=True)
    blob_meta = models.JSONField(default=dict, blank=True)
    content_sha256 = models.CharField(max_length=64)
    state = models.CharField(max_length=16, choices=MemoryState.choices, default=MemoryState.ACTIVATED)

    class Meta:
        abstract = True


class MemCube(MemoryContent):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    version = models.PositiveIntegerField(default=1)
    provenance_id = models.UUIDField(default=uuid.uuid4, db_index=True)  # stable across versions, instances
    namespace = models.ForeignKey("accounts.Namespace", on_delete=models.PROTECT, related_name="memories")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="memories")
    # governance
    acl = models.JSONField(default=list, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    priority = models.SmallIntegerField(default=0)
    sensitivity = models.CharField(max_length=16, choices=Sensitivity.choices, default=Sensitivity.INTERNAL)
    licence = models.CharField(max_length=64, blank=True)
    watermark_id = models.CharField(max_length=64, blank=True)
    frozen = models.BooleanField(default=False)
    # A canary (watermark trap) travels in bulk copies but is never retrieved; never shown in API output.
    is_canary = models.BooleanField(default=False, db_index=True)
    merged_into = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="merged_from"
    )
    # behaviour (drives scheduling and archival)
    access_count = models.PositiveIntegerField(default=0)
    hit_count = models.PositiveIntegerField(default=0)
    last_accessed_at = models.DateTimeField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [
            models.Index(fields=["namespace", "state", "-created_at"], name="cube_ns_state_created"),
            models.Index(fields=["owner", "-created_at"], name="cube_owner_created"),
            models.Index(fields=["state", "expires_at"], name="cube_state_expires"),
        ]

    def __str__(self) -> str:
        return f"{self.id} v{self.version}"


class AclPermission(models.TextChoices):
    READ = "read", "Read"
    WRITE = "write", "Read and write"


class MemCubeGrant(models.Model):
    """One per-memory ACL entry, as a row the policy can query (lists, search). `MemCube.acl` carries the
    same entries for single-memory decisions; `memory_acl_grant`/`memory_acl_revoke` keep both in step.
    A grant goes to one user, or to every member of an organization holding at least `role`. A grant to a
    username no account holds is kept under `username` and shown like any other, so the answer does not
    tell whether the account exists; it grants nothing, not even to an account later made with that name."""

    cube = models.ForeignKey(MemCube, on_delete=models.CASCADE, related_name="grants")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    organization = models.ForeignKey(
        "accounts.Organization", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    role = models.CharField(max_length=16, blank=True)
    username = models.CharField(max_length=150, blank=True)
    permission = models.CharField(max_length=8, choices=AclPermission.choices)
    granted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(user__isnull=False, organization__isnull=True)
                    | models.Q(user__isnull=True, organization__isnull=False)
                    | (models.Q(user__isnull=True, organization__isnull=True) & ~models.Q(username=""))
                ),
                name="grant_has_one_principal",
            ),
            models.UniqueConstraint(
                fields=["cube", "username"],
                condition=models.Q(user__isnull=True, organization__isnull=True),
                name="uniq_grant_unknown_username",
            ),
            models.UniqueConstraint(
                fields=["cube", "user"], condition=models.Q(user__isnull=False), name="uniq_grant_user"
            ),
            models.UniqueConstraint(
                fields=["cube", "organization", "role"],
                condition=models.Q(organization__isnull=False),
                name="uniq_grant_org_role",
            ),
        ]
        indexes = [
            models.Index(fields=["user", "permission"], name="grant_user_perm"),
            models.Index(fields=["organization", "role"], name="grant_org_role"),
        ]

    def __str__(self) -> str:
        return f"{self.cube_id} {self.permission} -> {self.user_id or self.organization_id}:{self.role}"


class MemCubeVersion(MemoryContent):
    """An immutable snapshot of one version of a MemCube."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    cube = models.ForeignKey(MemCube, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    operation = models.CharField(max_length=16, choices=VersionOperation.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    reason = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["cube", "version"], name="uniq_cube_version")]
        ordering = ["cube", "version"]

    def __str__(self) -> str:
        return f"{self.cube_id} v{self.version} ({self.operation})"


class IndexOp(models.TextChoices):
    UPSERT = "upsert", "Upsert"
    DELETE = "delete", "Delete"


class IndexOutbox(models.Model):
    """Pending index work, written in the business transaction; processed (idempotently) by Celery.

    Rows are processed independently: a row that fails records the attempt and waits
    (`next_attempt_at`, exponential backoff); after `VAULT_OUTBOX_MAX_ATTEMPTS` it is dead-lettered
    (`dead_lettered_at`) and waits for an operator to retry it, while every other row keeps indexing.
    """

    cube_id = models.UUIDField(db_index=True)
    op = models.CharField(max_length=8, choices=IndexOp.choices)
    created_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)  # None: due now
    dead_lettered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["processed_at", "id"], name="outbox_pending"),
            models.Index(fields=["processed_at", "dead_lettered_at", "next_attempt_at"], name="outbox_due"),
        ]

    def __str__(self) -> str:
        return f"{self.op} {self.cube_id}"
