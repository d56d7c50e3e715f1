from __future__ import annotations

from typing import TYPE_CHECKING

from django.apps import AppConfig

if TYPE_CHECKING:
    from core.signing import InstanceSigner


def instance_signer() -> InstanceSigner:
    """The instance identity as `core.signing` hands it out: key id, Ed25519 sign, public key."""
    from core.signing import InstanceSigner
    from mip_protocol.identity import instance_key, public_key_b64

    kid, key = instance_key()
    return InstanceSigner(kid, key.sign, public_key_b64(key.public_key()))


class MipProtocolConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "mip_protocol"

    def ready(self) -> None:
        # The audit kernel and the marketplace sit below this app: they sign (audit anchors, release
        # manifests) with the instance key registered here, and import nothing from mip_protocol.
        from core.signing import instance_signer_register
        from governance.audit import audit_signer_register
        from mip_protocol.identity import instance_key

        audit_signer_register(instance_key)
        instance_signer_register(instance_signer)
