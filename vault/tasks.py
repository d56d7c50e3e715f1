from celery import shared_task


@shared_task(name="vault.tasks.index_outbox_process", ignore_result=True)
def index_outbox_process(limit: int | None = None) -> int:
    """Drain the index outbox. Safe to run twice or concurrently: indexing is by current state."""
    from vault import services

    return services.index_outbox_process(limit=limit)
