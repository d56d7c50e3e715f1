from django.urls import path

from frontend.consumers import MemoryEventsConsumer

websocket_urlpatterns = [path("ws/memories/", MemoryEventsConsumer.as_asgi())]
