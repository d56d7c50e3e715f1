"""`GET /.well-known/mip`: instance discovery (public, no auth), as Matrix publishes server keys."""

from __future__ import annotations

import time

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from mip_protocol.identity import instance_key, public_key_b64

PROTOCOL_VERSION = "0.1"
KEY_VALIDITY_S = 7 * 24 * 3600


@require_GET
def well_known(request: HttpRequest) -> JsonResponse:
    kid, key = instance_key()
    return JsonResponse(
        {
            "protocol": "mip",
            "versions": [PROTOCOL_VERSION],
            "instance": {
                "name": getattr(settings, "MEMHUB_INSTANCE_NAME", "") or request.get_host(),
                "base_url": request.build_absolute_uri("/").rstrip("/"),
            },
            "verify_keys": {kid: {"key": public_key_b64(key.public_key()), "alg": "ed25519"}},
            "old_verify_keys": {},
            "valid_until_ts": int((time.time() + KEY_VALIDITY_S) * 1000),
            "endpoints": {},
        }
    )
