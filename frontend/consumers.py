from channels.generic.websocket import AsyncJsonWebsocketConsumer


class MemoryEventsConsumer(AsyncJsonWebsocketConsumer):
    pass
