from django.apps import AppConfig


class InferenceConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "inference"

    def ready(self) -> None:
        from inference.services.purge import purge_hook
        from vault.hooks import register_purge_hook

        # Erasing a memory in the vault deletes the KV prefixes and adapters derived from its text.
        register_purge_hook(purge_hook)
