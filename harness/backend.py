"""The demo's Backend, counting what it receives: the ground truth for the gateway -> upstream
side (how many requests arrived carrying each `X-Tenant-Context` value, the header nginx sets
from its tenant `map`).

A WebSocket upgrade request is counted in `received` like any request; `websockets` counts the
sessions by X-Tenant-Context and `websockets_active` those still open.
"""

from __future__ import annotations

import threading
from collections import Counter

from tenantwatch.demo.backend import Backend


class RecordingBackend(Backend):
    """`tenantwatch.demo.Backend` recording its `on_request` and `on_websocket` calls.

    `received` is a snapshot Counter of requests per received X-Tenant-Context value (None when the
    header was absent).
    """

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
        with self._lock:
            self._received[context] += 1

    def on_websocket(self, context: str | None, opened: bool) -> None:
        with self._lock:
            if opened:
                self._websockets[context] += 1
                self._ws_active += 1
            else:
                self._ws_active -= 1
