"""Celery tasks: releases. Tasks take ids and call a service imported inside the body; each is idempotent."""

from __future__ import annotations

from typing import Any

from celery import shared_task

EVAL_RETRY_SECONDS = 30  # the vault's outbox sweep runs every 30 s
EVAL_MAX_RETRIES = 40  # twenty minutes; then the card says the evaluation failed, and why


@shared_task(bind=True, max_retries=EVAL_MAX_RETRIES)
def release_card_evaluate_task(self: Any, release_id: str) -> str:
    """Score a release card's evaluation questions (recall@10) once the index holds its memories."""
    from marketplace.services.releases import release_card_evaluate

    final = self.request.retries >= EVAL_MAX_RETRIES
    outcome = release_card_evaluate(release_id=release_id, final=final)
    if outcome == "pending" and not self.request.is_eager:
        # Eager (one process, tests): nothing indexes while we wait, so leave the card pending.
        raise self.retry(countdown=EVAL_RETRY_SECONDS)
    return outcome
