"""Governance jobs for Celery beat. Each takes ids (or sweeps by query), calls a service imported in the
body, and is safe to run twice: the services re-check every memory under its row lock."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="governance.tasks.lifecycle_expire_due", ignore_result=True)
def lifecycle_expire_due(cube_ids: list[str] | None = None) -> int:
    """TTL expiry: memories whose `expires_at` has passed become `expired` and leave the hot index."""
    from governance.lifecycle import lifecycle_expire_due as expire

    return expire(cube_ids=cube_ids)


@shared_task(name="governance.tasks.lifecycle_archive_cold", ignore_result=True)
def lifecycle_archive_cold(cube_ids: list[str] | None = None, days: int | None = None) -> int:
    """Archive memories unread for MEMHUB_ARCHIVE_AFTER_DAYS (default 90); they stay restorable."""
    from governance.lifecycle import lifecycle_archive_cold as archive

    return archive(cube_ids=cube_ids, days=days)


@shared_task(name="governance.tasks.audit_verify", ignore_result=True)
def audit_verify() -> dict[str, object]:
    """Walk the audit chain; log loudly on the first broken link (for a daily beat entry)."""
    import logging

    from governance.audit import audit_verify as verify

    broken = verify()
    if broken is not None:
        logging.getLogger("governance.audit").error(
            "audit chain %s broken at entry %s: %s", broken.chain, broken.seq, broken.problem
        )
        return {"ok": False, "chain": broken.chain, "seq": broken.seq, "problem": broken.problem}
    return {"ok": True}


@shared_task(name="governance.tasks.audit_anchor", ignore_result=True)
def audit_anchor() -> dict[str, object]:
    """Sign every audit chain's head (a beat entry): later rewrites behind it no longer verify. Does
    nothing when no entry was written since the last anchor."""
    from governance.audit import audit_anchor_create

    anchor = audit_anchor_create()
    if anchor is None:
        return {"anchor": None}
    return {"anchor": anchor.id, "chains": anchor.chains, "entries": anchor.entries, "root": anchor.root}


@shared_task(name="governance.tasks.pii_scan_run", ignore_result=True)
def pii_scan_run(report_id: str) -> str:
    """Scan what a pending PII report names (texts or memories) and fill the report in. Runs in the worker
    because scanning loads spaCy and the NER model; a report that is no longer pending is left alone."""
    from governance.pii import pii_scan_execute

    return pii_scan_execute(report_id=report_id)
