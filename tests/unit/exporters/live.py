"""A live ApiServer on 127.0.0.1, port 0, whose snapshot and health the test can change."""

from __future__ import annotations

import socket
from typing import Any

from tenantwatch.aggregation.records import Snapshot
from tenantwatch.exporters import ApiServer, TenantCollector
from tenantwatch.exporters.exposition import Exposition
from tests.unit.exporters.snapshots import make_snapshot


class LiveApi:
    """Holds what the server's callables return; tests assign to these attributes."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = make_snapshot(ready=True)
        self.health: dict[str, Any] = {"ok": True, "ticks": 42, "events_lost": {"ringbuf_full": 2}}
        registry = Exposition()  # as the daemon serves /metrics: in parts, TenantCollector's fast
        registry.register(TenantCollector(lambda: self.snapshot, {"version": "t", "kernel": "k"}))
        self.server = ApiServer(
            "127.0.0.1", 0, lambda: self.snapshot, lambda: self.health, registry
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"


def free_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
