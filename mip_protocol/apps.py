from django.apps import AppConfig


class MipProtocolConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "mip_protocol"
