"""The delivery engine: an outbox of `Delivery` rows per `Destination`, drained by Celery workers.

One engine for every destination kind: a subscriber's vault (`feeds.services.apply`), a Standard Webhooks
endpoint (`feeds.delivery.webhooks`), and MIP peers later, each a transport registered by kind
(`feeds.delivery.transports`). See docs/feeds/delivery.md.
"""
