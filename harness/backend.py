"""The demo's Backend, counting what it receives: the ground truth for the gateway -> upstream
side (how many requests arrived carrying each `X-Tenant-Context` value, the header nginx sets
from its tenant `map`), and echoing WebSocket sessions.

A GET with `Upgrade: websocket` is answered with `101 Switching Protocols` (RFC 6455 handshake)
and the connection then echoes every data frame back, unmasked, until a close frame or EOF.  The
upgrade request is counted in `received` like any request; `websockets` counts the sessions by
X-Tenant-Context and `websockets_active` those still open.

`Backend` is the demo's own (re-exported here for the benchmarks, which need no counts).
"""

from __future__ import annotations

import struct
import threading
from collections import Counter

from harness.websocket import WS_MAX_FRAME, websocket_accept, websocket_frame, websocket_mask
from tenantwatch.demo.backend import CONTEXT_HEADER, Backend, Handler

__all__ = ["Backend", "RecordingBackend", "RecordingHandler"]


class RecordingHandler(Handler):
    """The demo's handler telling its RecordingBackend what arrived, plus the WebSocket echo."""

    def handle_request(self) -> None:
        if (self.command == "GET"
                and (self.headers.get("Upgrade") or "").strip().lower() == "websocket"):
            self.websocket()
            return
        super().handle_request()

    def answer(self, context: str | None) -> None:
        self.server.owner.on_request(context)
        super().answer(context)

    def websocket(self) -> None:
        """RFC 6455 server handshake, then echo frames until close or EOF."""
        context = self.headers.get(CONTEXT_HEADER)
        owner = self.server.owner
        owner.on_request(context)
        key = (self.headers.get("Sec-WebSocket-Key") or "").strip()
        if not key or self.headers.get("Sec-WebSocket-Version", "").strip() != "13":
            self.close_connection = True
            self.respond(400, b"bad websocket handshake\n")
            return
        self.close_connection = True  # after the session, never another HTTP request
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", websocket_accept(key))
        self.end_headers()
        owner.on_websocket(context, True)
        try:
            self.echo_frames()
        except (OSError, ValueError):
            pass
        finally:
            owner.on_websocket(context, False)

    def echo_frames(self) -> None:
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


class RecordingBackend(Backend):
    """`tenantwatch.demo.Backend` with `RecordingHandler`: counts what it received.

    `received` is a snapshot Counter of requests per received X-Tenant-Context value (None when the
    header was absent).
    """

    handler = RecordingHandler

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        super().__init__(port, host)
        self._lock = threading.Lock()
        self._received: Counter = Counter()
        self._websockets: Counter = Counter()
        self._ws_active = 0

    @property
    def received(self) -> Counter:
        with self._lock:
            return Counter(self._received)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._received.values())

    @property
    def websockets(self) -> Counter:
        """WebSocket sessions accepted (101 sent), per X-Tenant-Context value."""
        with self._lock:
            return Counter(self._websockets)

    @property
    def websockets_active(self) -> int:
        """WebSocket sessions whose echo loop is still running."""
        with self._lock:
            return self._ws_active

    def reset(self) -> None:
        with self._lock:
            self._received.clear()
            self._websockets.clear()

    def on_request(self, context: str | None) -> None:
        """A request arrived with this X-Tenant-Context value (None: no such header); called
        before it is answered, from the handler thread."""
        with self._lock:
            self._received[context] += 1

    def on_websocket(self, context: str | None, opened: bool) -> None:
        """A WebSocket session was accepted (101 sent, `opened`) or its echo loop ended (not
        `opened`); from the handler thread."""
        with self._lock:
            if opened:
                self._websockets[context] += 1
                self._ws_active += 1
            else:
                self._ws_active -= 1
