"""Marketplace reads (installs): a user's installations, one installation, its annotations and diff.

Another user's installation answers 404, never 403."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from accounts.models import User
from core.errors import NotFound
from marketplace.models import Annotation, Installation, PackRelease


def installation_list(*, user: User, include_removed: bool = False) -> QuerySet[Installation]:
    qs = Installation.objects.filter(user=user)
    if not include_removed:
        qs = qs.filter(removed_at__isnull=True)
    return qs.select_related("release__pack__publisher", "namespace", "pack").order_by("-created_at")


def installation_get(*, user: User, installation_id: Any) -> Installation:
    installation = (
        Installation.objects.select_related(
            "release__pack__publisher", "namespace", "pack", "previous_release"
        )
        .filter(pk=installation_id, user=user)
        .first()
    )
    if installation is None:
        raise NotFound("Installation not found.")
    return installation


def annotation_list(*, installation: Installation) -> QuerySet[Annotation]:
    return Annotation.objects.filter(installation=installation).order_by("created_at", "id")


def installation_diff(*, installation: Installation) -> dict[str, Any]:
    """The last upgrade's diff, or (never upgraded) the installed release against nothing."""
    if installation.last_diff:
        return dict(installation.last_diff)
    diff = installation_diff_compute(old=None, new=installation.release)
    return {
        "from": None,
        "to": installation.release.version,
        **diff,
        "counts": {k: len(v) for k, v in diff.items()},
        "at": None,
    }


def manifest_map(release: PackRelease) -> dict[str, str]:
    return {
        str(m["provenance_id"]): str(m.get("content_sha256", ""))
        for m in (release.manifest or {}).get("memories", [])
        if isinstance(m, dict) and m.get("provenance_id")
    }


def installation_diff_compute(*, old: PackRelease | None, new: PackRelease) -> dict[str, list[str]]:
    """What changes between two releases, by provenance id: `release_diff` of the releases module when it
    is there, else the manifests' content hashes compared."""
    try:
        from marketplace.services import releases
    except ImportError:  # pragma: no cover - the releases module is always there in a full checkout
        releases = None  # type: ignore[assignment]
    release_diff = getattr(releases, "release_diff", None)
    if release_diff is not None:
        diff = release_diff(old=old, new=new)
        keys = ("added", "changed", "removed", "unchanged")
        return {k: sorted(str(x) for x in diff.get(k, [])) for k in keys}
    before = manifest_map(old) if old is not None else {}
    after = manifest_map(new)
    return {
        "added": sorted(set(after) - set(before)),
        "removed": sorted(set(before) - set(after)),
        "changed": sorted(p for p in set(after) & set(before) if after[p] != before[p]),
        "unchanged": sorted(p for p in set(after) & set(before) if after[p] == before[p]),
    }
