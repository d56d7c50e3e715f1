"""Inference state: registered base models, KV artifacts, installed adapters, distillation jobs, and the
scheduler's decision log and usage counters.

Artifacts on disk (safetensors) are derived data keyed by what produced them: a KV artifact by model
fingerprint + adapter + exact token ids, an adapter by its weights' sha256 and the base model it was
validated against. The database says which exist and whether they may be used.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class BaseModel(models.Model):
    """A generator configured by local path, identified by its fingerprint (not by its path)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=120, unique=True)
    path = models.CharField(max_length=500)
    architecture = models.CharField(max_length=120)
    model_type = models.CharField(max_length=64, blank=True)
    config_sha256 = models.CharField(max_length=64)
    weights_sha256 = models.CharField(max_length=64)
    tokenizer_sha256 = models.CharField(max_length=64)
    fingerprint = models.CharField(max_length=64, db_index=True)
    # size and mtime of the weight files when fingerprinted: unchanged files need no re-hash at start-up
    files_signature = models.CharField(max_length=64, blank=True)
    max_positions = models.PositiveIntegerField(default=2048)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.architecture} {self.fingerprint[:12]})"


class ArtifactStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    BUILDING = "building", "Building"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"
    DEMOTED = "demoted", "Demoted"


class KVArtifact(models.Model):
    """A stored KV prefix for an ordered set of installed packs on one base model (and adapter)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    base_model = models.ForeignKey(BaseModel, on_delete=models.CASCADE, related_name="kv_artifacts")
    model_fingerprint = models.CharField(max_length=64)
    namespaces = models.ManyToManyField("accounts.Namespace", related_name="kv_artifacts")
    namespace_keys = models.JSONField(default=list)  # the order the packs appear in the prefix
    # sha256 over the packs' live memories (ids, versions, content hashes) in prefix order: a change in a
    # pack gives a new key, so a stale prefix is never picked
    content_key = models.CharField(max_length=64)
    # the memories the prefix was built from, as {"id", "provenance_id", "content_sha256"} (never their
    # text): an erasure finds the prefixes to delete by these
    memory_sources = models.JSONField(default=list, blank=True)
    adapter_sha256 = models.CharField(max_length=64, blank=True)
    dtype = models.CharField(max_length=16)
    token_ids_sha256 = models.CharField(max_length=64, blank=True)
    num_tokens = models.PositiveIntegerField(default=0)
    file_path = models.CharField(max_length=500, blank=True)
    file_sha256 = models.CharField(max_length=64, blank=True)
    file_bytes = models.BigIntegerField(default=0)
    build_seconds = models.FloatField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=ArtifactStatus.choices, default=ArtifactStatus.PENDING)
    error = models.TextField(blank=True)
    use_count = models.PositiveIntegerField(default=0)
    last_used_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["base_model", "content_key", "adapter_sha256", "dtype"],
                name="uniq_kv_artifact_content",
            ),
        ]
        indexes = [
            models.Index(fields=["model_fingerprint", "token_ids_sha256"], name="kv_fp_tokens"),
            models.Index(fields=["status", "last_used_at"], name="kv_status_used"),
        ]

    def __str__(self) -> str:
        return f"kv {self.namespace_keys} on {self.model_fingerprint[:12]} ({self.status})"


class InstalledAdapter(models.Model):
    """A LoRA adapter installed for an installation namespace, validated against one base model."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    namespace = models.ForeignKey("accounts.Namespace", on_delete=models.CASCADE, related_name="adapters")
    base_model = models.ForeignKey(BaseModel, on_delete=models.CASCADE, related_name="adapters")
    name = models.CharField(max_length=200, blank=True)
    path = models.CharField(max_length=500)
    sha256 = models.CharField(max_length=64)
    rank = models.PositiveIntegerField(default=0)
    alpha = models.FloatField(default=0)
    target_modules = models.JSONField(default=list)
    source = models.CharField(max_length=32, default="upload")  # upload | distillation
    status = models.CharField(max_length=16, choices=ArtifactStatus.choices, default=ArtifactStatus.PENDING)
    error = models.TextField(blank=True)
    installed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    use_count = models.PositiveIntegerField(default=0)
    last_used_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["namespace", "base_model", "sha256"], name="uniq_adapter_per_ns"),
        ]

    def __str__(self) -> str:
        return f"adapter {self.sha256[:12]} for {self.namespace_id} ({self.status})"


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    PURGED = "purged", "Purged (source memories erased)"


class DistillationJob(models.Model):
    """Plaintext pack -> LoRA adapter, trained in the background with progress."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    namespace = models.ForeignKey(
        "accounts.Namespace", on_delete=models.CASCADE, related_name="distillations"
    )
    base_model = models.ForeignKey(BaseModel, on_delete=models.CASCADE, related_name="distillations")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    config = models.JSONField(default=dict)
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED)
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    progress = models.FloatField(default=0.0)  # 0..1
    first_loss = models.FloatField(null=True, blank=True)
    loss = models.FloatField(null=True, blank=True)
    source_tokens = models.PositiveIntegerField(default=0)
    source_memories = models.PositiveIntegerField(default=0)
    # the memories it trained on, as {"id", "provenance_id", "content_sha256"}; the text is never stored
    memory_sources = models.JSONField(default=list, blank=True)
    adapter = models.ForeignKey(
        InstalledAdapter, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"distillation {self.id} ({self.status} {self.progress:.0%})"


class PackUsage(models.Model):
    """How often a pack (installation namespace) is used with a base model: drives KV promotion."""

    base_model = models.ForeignKey(BaseModel, on_delete=models.CASCADE, related_name="+")
    namespace = models.ForeignKey("accounts.Namespace", on_delete=models.CASCADE, related_name="+")
    uses = models.PositiveIntegerField(default=0)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["base_model", "namespace"], name="uniq_pack_usage")]

    def __str__(self) -> str:
        return f"{self.namespace_id} used {self.uses}x"


class Form(models.TextChoices):
    PLAINTEXT = "plaintext", "Plaintext"
    KV = "kv", "KV cache"
    LORA = "lora", "LoRA adapter"
    NONE = "none", "Not used"


class DecisionAction(models.TextChoices):
    USE = "use", "Used"
    SKIP = "skip", "Skipped"
    PROMOTE = "promote", "Promoted to KV"
    DEMOTE = "demote", "Demoted to plaintext"
    FALLBACK = "fallback", "Fell back"


class SchedulerDecision(models.Model):
    """One line of the scheduler's log: which memory or pack went in which form, and why."""

    request_id = models.UUIDField(null=True, blank=True, db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    base_model = models.ForeignKey(
        BaseModel, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    namespace = models.ForeignKey(
        "accounts.Namespace", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    memory_id = models.UUIDField(null=True, blank=True)
    kv_artifact = models.ForeignKey(
        KVArtifact, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    adapter = models.ForeignKey(
        InstalledAdapter, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    form = models.CharField(max_length=16, choices=Form.choices)
    action = models.CharField(max_length=16, choices=DecisionAction.choices)
    reason = models.CharField(max_length=300, blank=True)
    tokens = models.PositiveIntegerField(default=0)
    score = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["user", "-created_at"], name="decision_user_created")]

    def __str__(self) -> str:
        return f"{self.action} {self.form}: {self.reason}"
