"""ASGI entry point: HTTP through Django, WebSockets through Channels."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from config.routing import websocket_urlpatterns  # noqa: E402
from core.limits import BodySizeLimitASGI  # noqa: E402
from core.websocket import AgentAwareOriginValidator  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": BodySizeLimitASGI(django_asgi_app),
        "websocket": AgentAwareOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
