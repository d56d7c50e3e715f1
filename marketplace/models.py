"""Publishers, versioned memory packs, immutable releases and installations.

A release freezes the exact MemCube versions it ships (with their content hashes) into a manifest; an
installation copies those versions into the installer's own read-only `installation:` namespace, keeping
each memory's provenance id so answers can be traced back to the publisher's original.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class Publisher(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    slug = models.SlugField(max_length=64, unique=True)
    display_name = models.CharField(max_length=200)
    organization = models.OneToOneField(
        "accounts.Organization", on_delete=models.PROTECT, related_name="publisher"
    )
    namespace = models.OneToOneField("accounts.Namespace", on_delete=models.PROTECT, related_name="publisher")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.slug


class Pack(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    publisher = models.ForeignKey(Publisher, on_delete=models.PROTECT, related_name="packs")
    slug = models.SlugField(max_length=80)
    title = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    tags = models.JSONField(default=list, blank=True)
    price_cents = models.PositiveIntegerField(default=0)
    currency = models.CharField(max_length=3, default="usd")
    licence = models.CharField(max_length=64, default="memhub-standard-1.0")
    listed = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["publisher", "slug"], name="uniq_pack_slug")]

    def __str__(self) -> str:
        return f"{self.publisher.slug}/{self.slug}"

    @property
    def price_display(self) -> str:
        """The price as a buyer reads it: 'free', or the amount in major units with the currency."""
        if not self.price_cents:
            return "free"
        return f"{self.price_cents / 100:.2f} {self.currency.upper()}"


class PackRelease(models.Model):
    """Immutable once created: the manifest lists every memory version and its content hash."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    pack = models.ForeignKey(Pack, on_delete=models.PROTECT, related_name="releases")
    version = models.CharField(max_length=40)  # semver
    notes = models.TextField(blank=True)
    manifest = models.JSONField()
    manifest_sha256 = models.CharField(max_length=64)
    memory_versions = models.ManyToManyField("vault.MemCubeVersion", related_name="releases")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["pack", "version"], name="uniq_release_version")]

    def __str__(self) -> str:
        return f"{self.pack_id}@{self.version}"


class Installation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    release = models.ForeignKey(PackRelease, on_delete=models.PROTECT, related_name="installations")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="installations")
    namespace = models.OneToOneField(
        "accounts.Namespace", on_delete=models.PROTECT, related_name="installation"
    )
    watermark_id = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["release", "user"], name="uniq_install_per_user")]

    def __str__(self) -> str:
        return f"installation {self.id}"
