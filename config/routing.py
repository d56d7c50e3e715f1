from frontend.routing import websocket_urlpatterns as frontend_ws

websocket_urlpatterns = [*frontend_ws]
