"""WebSocket routes of feeds (included by `config.routing`)."""

from django.urls import path

from feeds.consumers import FeedConsumer

websocket_urlpatterns = [path("ws/feeds/<uuid:feed_id>/", FeedConsumer.as_asgi())]
