"""A real HTTP/1.1 backend for nginx to proxy to.

Every request's `X-Tenant-Context` value (the header nginx sets from its tenant `map`) goes to
`Backend.on_request`, every WebSocket session's opening and end to `Backend.on_websocket`; the
demo ignores them, the harness's `RecordingBackend` (harness/backend.py, beside tests/) counts
them: the ground truth for the gateway -> upstream side.

A GET with `Upgrade: websocket` is answered with `101 Switching Protocols` (RFC 6455 handshake) and
the connection then echoes every data frame back, unmasked, until a close frame or EOF.  The
upgrade request is an `on_request` like any request.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self

CONTEXT_HEADER = "X-Tenant-Context"
MAX_SLEEP_MS = 5000
MAX_BODY = 16 * 1024 * 1024
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
WS_MAX_FRAME = 16 * 1024 * 1024


def websocket_accept(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key: base64(sha1(key + GUID))."""
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode("latin-1")).digest()).decode()


def websocket_frame(opcode: int, payload: bytes, mask: bytes | None = None,
                    fin: bool = True) -> bytes:
    """One RFC 6455 frame; `mask` (4 bytes) masks the payload, as a client must."""
    head = bytearray([(0x80 if fin else 0) | (opcode & 0x0F)])
    mbit = 0x80 if mask is not None else 0
    n = len(payload)
    if n < 126:
        head.append(mbit | n)
    elif n < 1 << 16:
        head.append(mbit | 126)
        head += struct.pack("!H", n)
    else:
        head.append(mbit | 127)
        head += struct.pack("!Q", n)
    if mask is None:
        return bytes(head) + payload
    return bytes(head) + mask + websocket_mask(payload, mask)


def websocket_mask(payload: bytes, mask: bytes) -> bytes:
    """XOR with the 4-byte masking key (masking and unmasking are the same)."""
    if not payload:
        return b""
    key = (mask * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(
        len(payload), "big")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, handler, owner: Backend) -> None:
        self.owner = owner
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(addr, handler)


class _Handler(BaseHTTPRequestHandler):
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

    def _read_body(self) -> bytes:
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

    def _handle(self) -> None:
        if (self.command == "GET"
                and (self.headers.get("Upgrade") or "").strip().lower() == "websocket"):
            self._websocket()
            return
        try:
            self._read_body()
        except ValueError:
            self.close_connection = True
            self._respond(400, b"bad body\n")
            return
        context = self.headers.get(CONTEXT_HEADER)
        self.server.owner.on_request(context)
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
        self._respond(status, body)

    def _respond(self, status: int, body: bytes) -> None:
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

    def _websocket(self) -> None:
        """RFC 6455 server handshake, then echo frames until close or EOF."""
        context = self.headers.get(CONTEXT_HEADER)
        owner = self.server.owner
        owner.on_request(context)
        key = (self.headers.get("Sec-WebSocket-Key") or "").strip()
        if not key or self.headers.get("Sec-WebSocket-Version", "").strip() != "13":
            self.close_connection = True
            self._respond(400, b"bad websocket handshake\n")
            return
        self.close_connection = True  # after the session, never another HTTP request
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", websocket_accept(key))
        self.end_headers()
        owner.on_websocket(context, True)
        try:
            self._echo_frames()
        except (OSError, ValueError):
            pass
        finally:
            owner.on_websocket(context, False)

    def _echo_frames(self) -> None:
        read = self.rfile.read
        while True:
            head = read(2)
            if len(head) < 2:
                return
            opcode = head[0] & 0x0F
            n = head[1] & 0x7F
            if n == 126:
                n = struct.unpack("!H", read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", read(8))[0]
            if n > WS_MAX_FRAME:
                raise ValueError("frame too large")
            mask = read(4) if head[1] & 0x80 else None
            payload = read(n)
            if len(payload) < n:
                return
            if mask is not None:
                payload = websocket_mask(payload, mask)
            if opcode == 0x8:  # close: answer with the same code, then end
                self.wfile.write(websocket_frame(0x8, payload[:125]))
                return
            if opcode == 0x9:  # ping -> pong
                self.wfile.write(websocket_frame(0xA, payload))
            elif opcode != 0xA:  # data (text, binary, continuation): echo it, unmasked
                self.wfile.write(websocket_frame(opcode, payload, fin=bool(head[0] & 0x80)))

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class Backend:
    """Threaded HTTP/1.1 keep-alive server on `host:port` (port 0 picks a free port).

    Use as a context manager or call start()/stop() (both idempotent). The handler threads call
    `on_request` and `on_websocket`, which do nothing here; a subclass may record them.
    """

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

    def on_request(self, context: str | None) -> None:
        """A request arrived with this X-Tenant-Context value (None: no such header); called
        before it is answered, from the handler thread."""

    def on_websocket(self, context: str | None, opened: bool) -> None:
        """A WebSocket session with this X-Tenant-Context value was accepted (101 sent,
        `opened`) or its echo loop ended (not `opened`); from the handler thread."""

    def start(self) -> Backend:
        if self._server is not None:
            return self
        server = _Server((self.host, self._requested_port), _Handler, self)
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
