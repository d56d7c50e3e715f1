from django.apps import AppConfig


class FeedsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "feeds"

    def ready(self) -> None:
        from feeds.delivery.transports import register_transport
        from feeds.delivery.webhooks import webhook_send
        from feeds.services.apply import vault_send
        from feeds.services.publish import pack_event_hook
        from marketplace.hooks import register_pack_hook

        # Marketplace changes (release published, terms changed, pack withdrawn) append feed entries in
        # the same transaction; the marketplace never imports this app.
        register_pack_hook(pack_event_hook)
        # The delivery engine's destinations: a subscriber's vault and its webhook (MIP adds its own).
        register_transport("vault", vault_send)
        register_transport("webhook", webhook_send)
