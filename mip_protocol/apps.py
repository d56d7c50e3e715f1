from django.apps import AppConfig


class MipProtocolConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "mip_protocol"

    def ready(self) -> None:
        # The audit kernel sits below this app: it signs its anchors with the key registered here.
        from governance.audit import audit_signer_register
        from mip_protocol.identity import instance_key

        audit_signer_register(instance_key)
