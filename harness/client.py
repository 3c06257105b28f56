"""The demo's Client with what only tests do on the wire: a request's bytes (`build_request`),
the whole response (`exchange`, `last_response`), pipelined request heads in one write (case 2),
a head split across several writes (case 3), raw bytes, and a reset before the response (case 5).

`ProtocolError` and `Response` are the demo client's, re-exported for the tests.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Sequence

from tenantwatch.demo.traffic import Client, Headers, ProtocolError, Response

__all__ = ["Headers", "ProtocolError", "Response", "WireClient"]


class WireClient(Client):
    """`tenantwatch.demo.Client` plus `build_request()`, `exchange()`, `pipeline()`,
    `split_request()`, `send_raw()` and `reset()`; `connects` counts the connections it opened,
    `last_response` is the last response read."""

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        super().__init__(host, port, timeout)
        self.connects = 0
        self.last_response: Response | None = None

    def connect(self) -> socket.socket:
        fresh = self.sock is None
        sock = super().connect()
        if fresh:
            self.connects += 1
        return sock

    def read_response(self, method: str = "GET") -> Response:
        resp = super().read_response(method)
        self.last_response = resp
        return resp

    def build_request(
        self,
        tenant: str | None,
        path: str = "/",
        headers: Headers = (),
        method: str = "GET",
        body: bytes = b"",
    ) -> bytes:
        """The bytes request() sends for these arguments."""
        return self._build_request(tenant, path, headers, method, body)

    def exchange(
        self,
        tenant: str | None,
        path: str = "/",
        headers: Headers = (),
        method: str = "GET",
        body: bytes = b"",
    ) -> Response:
        """request(), returning the whole response."""
        data = self.build_request(tenant, path, headers, method, body)
        return self._exchange(lambda s: s.sendall(data), method)

    def reset(self) -> None:
        """Abort the connection with a RST (SO_LINGER 0), e.g. before a response arrived."""
        if self.sock is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close()

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (one sendall) on the current connection."""
        self.connect().sendall(data)

    def pipeline(self, requests: Sequence[tuple[str | None, str]]) -> list[int]:
        """Send all request heads in ONE sendall(), then read the responses in order."""
        data = b"".join(self.build_request(t, p) for t, p in requests)
        if not requests:
            return []
        sock = self.connect()
        try:
            sock.sendall(data)
            return [self.read_response().status for _ in requests]
        except BaseException:
            self.close()
            raise
        finally:
            self._reused = self.sock is not None

    def split_request(
        self,
        tenant: str | None,
        cut_points: Sequence[int],
        path: str = "/",
        headers: Headers = (),
        delay: float = 0.02,
    ) -> int:
        """Send one request head in several sendall()s, cut at the given byte offsets, sleeping
        `delay` seconds between pieces so the server sees separate reads."""
        data = self.build_request(tenant, path, headers)
        cuts = sorted({c for c in cut_points if 0 < c < len(data)})
        pieces = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]

        def send(sock: socket.socket) -> None:
            for i, piece in enumerate(pieces):
                if i:
                    time.sleep(delay)
                sock.sendall(piece)

        # Never resend a split request: a retry would change what the test means to exercise.
        sock = self.connect()
        try:
            send(sock)
            resp = self.read_response()
            self._reused = self.sock is not None
            return resp.status
        except BaseException:
            self.close()
            raise
