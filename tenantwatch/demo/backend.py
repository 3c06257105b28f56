"""A real HTTP/1.1 backend for nginx to proxy to.

Every request is answered with its `X-Tenant-Context` value (the header nginx sets from its tenant
`map`) in the body: `tenant-context=VALUE`. `/status/N` answers with status N, `/sleep/MS` after
MS milliseconds (at most MAX_SLEEP_MS).

The request handler is the class attribute `Backend.handler`: the harness's `RecordingBackend`
(harness/backend.py, beside tests/) plugs in a subclass that also counts what arrived and echoes
WebSocket sessions.
"""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self

CONTEXT_HEADER = "X-Tenant-Context"
MAX_SLEEP_MS = 5000
MAX_BODY = 16 * 1024 * 1024


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, handler, owner: Backend) -> None:
        self.owner = owner
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(addr, handler)


class Handler(BaseHTTPRequestHandler):
    """One connection from nginx: keep-alive HTTP/1.1, every method handled by
    `handle_request()`; `self.server.owner` is the Backend."""

    protocol_version = "HTTP/1.1"
    server_version = "tenantwatch-demo-backend"
    sys_version = ""
    disable_nagle_algorithm = True
    timeout = 300  # an idle keep-alive connection from nginx; stop() closes them anyway
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.sockets_lock:
            self.server.open_sockets.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.sockets_lock:
                self.server.open_sockets.discard(self.connection)

    def log_message(self, format: str, *args) -> None:
        pass  # no per-request logging

    # -- request handling

    def read_body(self) -> bytes:
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            chunks = []
            total = 0
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                total += size
                if total > MAX_BODY:
                    raise ValueError("body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)  # CRLF after the chunk
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(length) if length > 0 else b""

    def handle_request(self) -> None:
        """Read the body (a bad one: 400, connection closed), then `answer()`."""
        try:
            self.read_body()
        except ValueError:
            self.close_connection = True
            self.respond(400, b"bad body\n")
            return
        self.answer(self.headers.get(CONTEXT_HEADER))

    def answer(self, context: str | None) -> None:
        """Respond to a request that carried this X-Tenant-Context value (None: no header)."""
        path = self.path.split("?", 1)[0]
        status = 200
        parts = path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "status":
            try:
                status = int(parts[1])
            except ValueError:
                status = 400
            if not 200 <= status <= 599:
                status = 400
        elif len(parts) == 2 and parts[0] == "sleep":
            try:
                ms = max(0, min(int(parts[1]), MAX_SLEEP_MS))
            except ValueError:
                ms = 0
            time.sleep(ms / 1000.0)
        body = f"tenant-context={context if context is not None else '-'}\n".encode(
            "latin-1", "replace"
        )
        self.respond(status, body)

    def respond(self, status: int, body: bytes) -> None:
        no_body = status in (204, 304) or self.command == "HEAD"
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        if status != 204:
            self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if not no_body:
            self.wfile.write(body)

    def do_GET(self) -> None:
        self.handle_request()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET


class Backend:
    """Threaded HTTP/1.1 keep-alive server on `host:port` (port 0 picks a free port).

    Use as a context manager or call start()/stop() (both idempotent). Each connection is served
    by an instance of `handler` (a subclass may set its own).
    """

    handler: type[Handler] = Handler

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self.host = host
        self._requested_port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is not None:
            return self._server.server_address[1]
        return self._requested_port

    def start(self) -> Self:
        if self._server is not None:
            return self
        server = _Server((self.host, self._requested_port), self.handler, self)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1},
            name=f"tw-backend-{server.server_address[1]}", daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = None
        self._thread = None
        self._requested_port = server.server_address[1]
        server.shutdown()
        server.server_close()
        with server.sockets_lock:
            conns = list(server.open_sockets)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
