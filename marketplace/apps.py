from django.apps import AppConfig


class MarketplaceConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "marketplace"

    def ready(self) -> None:
        from marketplace.enforcement import register

        # Licensed memory is checked and metered where the vault and inference use it.
        register()
