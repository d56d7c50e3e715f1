from django.apps import AppConfig


class InferenceConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "inference"

    def ready(self) -> None:
        from inference.services.purge import purge_hook
        from vault.hooks import register_purge_hook

        # Erasing a memory in the vault deletes the KV prefixes and adapters derived from its text.
        register_purge_hook(purge_hook)

        from inference.services.adapters import installation_hook
        from marketplace.hooks import register_installation_hook

        # Marketplace installations: adapters (watermarked per installation) and KV prefixes follow
        # them; a suspended or removed installation's adapters and prefixes stop being used.
        register_installation_hook(installation_hook)
