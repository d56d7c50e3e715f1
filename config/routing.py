from feeds.routing import websocket_urlpatterns as feeds_ws
from frontend.routing import websocket_urlpatterns as frontend_ws

websocket_urlpatterns = [*frontend_ws, *feeds_ws]
