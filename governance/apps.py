from django.apps import AppConfig


class GovernanceConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "governance"

    def ready(self) -> None:
        # Refused requests are audited: the exception handler (core, below us) calls back into the log.
        from core.exceptions import register_denied_listener
        from governance.audit import audit_denied

        register_denied_listener(audit_denied)
