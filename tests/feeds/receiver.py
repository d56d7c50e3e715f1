"""A real webhook receiver on loopback for tests: an HTTP server in a thread that answers as it is told,
request by request, and records what it received.

    with Receiver() as rx:                       # listening on 127.0.0.1, a free port
        rx.respond("/hook", [503, 503, 200])     # the first three requests to /hook; then 200
        rx.respond("/slow", [Reply(200, delay=0.2)] * 10)
        rx.down()                                # connection refused (the port stays reserved)
        rx.up()                                  # listening again on the same port
        rx.requests_to("/hook")                  # what came in: method, path, headers, body

`Receiver(down=True)` starts with the port reserved but not listening: the first attempts get a refused
connection, as from a receiver that is not up yet.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    """One programmed answer. `drop`: close the connection without answering (a network error)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay: float = 0.0
    drop: bool = False


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    at: float
    status: int  # what the receiver answered (0: dropped)

    def json(self) -> Any:
        return json.loads(self.body)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-answer (a killed worker) is not the receiver's error."""
        return


def _as_reply(value: int | Reply) -> Reply:
    return value if isinstance(value, Reply) else Reply(status=int(value))


class Receiver:
    def __init__(self, *, down: bool = False, default: int | Reply = 200) -> None:
        self._lock = threading.Lock()
        self._plans: dict[str, list[Reply]] = {}
        self._defaults: dict[str, Reply] = {}
        self._default = _as_reply(default)
        self._received: list[Received] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._reserved: socket.socket | None = None
        self.port = 0
        self._reserve()
        if not down:
            self.up()

    # --- lifecycle ---------------------------------------------------------------------------------

    def _reserve(self) -> None:
        """Bind the port without listening: connections to it are refused, and nobody else takes it."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        self._reserved = sock

    def up(self) -> None:
        if self._server is not None:
            return
        assert self._reserved is not None
        server = _QuietServer(("127.0.0.1", self.port), self._handler_class(), bind_and_activate=False)
        server.socket.close()
        server.socket = self._reserved
        self._reserved = None
        server.server_activate()  # listen()
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def down(self) -> None:
        """Stop listening; later connections are refused until `up()`."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._reserve()

    def close(self) -> None:
        self.down()
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def is_up(self) -> bool:
        return self._server is not None

    # --- programming and reading -------------------------------------------------------------------

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def respond(self, path: str, replies: Iterable[int | Reply], *, then: int | Reply | None = None) -> None:
        """The next requests to `path` get `replies`, one each, in order; after them `then` (default:
        the receiver's default, 200)."""
        with self._lock:
            self._plans[path] = [_as_reply(r) for r in replies]
            if then is not None:
                self._defaults[path] = _as_reply(then)

    def _next_reply(self, path: str) -> Reply:
        with self._lock:
            plan = self._plans.get(path)
            if plan:
                return plan.pop(0)
            return self._defaults.get(path, self._default)

    def _record(self, item: Received) -> None:
        with self._lock:
            self._received.append(item)

    @property
    def requests(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def requests_to(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.requests):
                return True
            time.sleep(0.02)
        return predicate(self.requests)

    # --- the handler -------------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                reply = receiver._next_reply(self.path)
                receiver._record(
                    Received(
                        method=self.command,
                        path=self.path,
                        headers={k.lower(): v for k, v in self.headers.items()},
                        body=body,
                        at=time.time(),
                        status=0 if reply.drop else reply.status,
                    )
                )
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.drop:
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_POST = do_GET = do_PUT = _handle

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

        return Handler


def drain_until(done: Callable[[], bool], timeout: float = 15.0) -> None:
    """Run due deliveries (as a worker would) until `done()`; retries wait out their backoff."""
    from feeds.delivery.engine import deliveries_run_due

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        deliveries_run_due()
        if done():
            return
        time.sleep(0.01)
    raise AssertionError("the deliveries did not get there in time")
