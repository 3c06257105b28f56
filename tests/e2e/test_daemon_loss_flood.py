"""Protection that a flood cannot switch off, end to end (docs/detection.md, "Completeness").

The noisy-neighbour scenario of test_daemon_noisy.py (four tenants through nginx to a traced
backend that burns CPU per request; bee's requests become 10x more expensive), while one
attacker at once:

- fills the kernel's connection table (capture.max_connections 1024) with idle connections, so
  that new connections are not tracked (conn_map_full);
- sends a stream of junk tenant values, each one new;
- every 0.5 s pipelines 16 cheap requests on one connection, twice what the kernel keeps in
  flight per connection (pipeline_overflow, charged to the attacker's own identity).

Asserted: the attack really caused both kinds of loss; bee is still flagged within the usual
10 s, with a window complete for it; nobody else is ever flagged.  Before per-tenant
completeness, one such client kept every flag from being raised.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.conftest import require_root
from tests.e2e.conftest import ThreadGroup
from tests.e2e.test_daemon_noisy import (
    LIGHT_MS,
    TENANTS,
    Load,
    _flag_changes,
    _hotspots,
    noisy_stack,
)

MAX_CONNECTIONS = 1024  # the smallest table config allows
IDLE_CONNECTIONS = 1150  # more than the table holds, fewer than nginx's 2 x 1024 connections

CONFIG = """\
listen: "127.0.0.1:{port}"
targets: [{{process: {nginx}}}, {{process: {backend}}}]
capture:
  max_connections: {max_connections}
tenancy:
  sources:
    - {{header: X-Tenant-Context, trusted: true}}
    - {{header: X-Tenant-ID, side: server}}
detection:
  window_seconds: 3
  baseline_seconds: 20
"""


def _get(s: socket.socket, tenant: str, n: int = 1) -> None:
    """n pipelined cheap requests as tenant, and all their responses."""
    s.sendall(f"GET /work/0 HTTP/1.1\r\nHost: t\r\nX-Tenant-ID: {tenant}\r\n\r\n".encode() * n)
    got = b""
    while got.count(b"ok\n") < n:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        got += chunk


class Attacker(ThreadGroup):
    """Junk values and deep pipelines, each on a connection opened before the table fills."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.errors: list = []
        self.sent = {"junk": 0, "pipelined": 0}
        self.junk = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.pipe = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.threads = [threading.Thread(target=self._junk, daemon=True),
                        threading.Thread(target=self._pipelines, daemon=True)]

    def _loop(self, step, pause: float) -> None:
        deadline = time.monotonic() + 240  # bounded whatever the test does
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                step()
                self.stop.wait(pause)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(e))

    def _junk(self) -> None:
        def step() -> None:
            _get(self.junk, f"junk-{self.sent['junk']:06d}")  # a new value every time
            self.sent["junk"] += 1
        self._loop(step, 0.04)  # ~20 new values a second: a flood, not a CPU burner

    def _pipelines(self) -> None:
        def step() -> None:
            _get(self.pipe, "eel", 16)
            self.sent["pipelined"] += 16
        self._loop(step, 0.5)

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.junk.close()
        self.pipe.close()


def _warm_upstream_pool(port: int, parallel: int = 40) -> None:
    """Many concurrent requests once, so that nginx's keep-alive pools to the backend hold
    enough connections for the test: once the table is full, a new upstream connection would
    not be tracked."""
    def one() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            for _ in range(3):
                _get(s, "ant")

    threads = [threading.Thread(target=one) for _ in range(parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)


def _fill_connection_table(port: int) -> list[socket.socket]:
    idle = []
    for i in range(IDLE_CONNECTIONS):
        idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        if i % 100 == 99:
            time.sleep(0.05)  # within nginx's listen backlog
    return idle


@pytest.fixture(scope="module")
def stack(tmp_path_factory, nginx_binary):
    require_root()
    yield from noisy_stack(tmp_path_factory.mktemp("flood"), nginx_binary, CONFIG,
                           max_connections=MAX_CONNECTIONS)


def test_a_noisy_tenant_is_flagged_on_time_through_a_flood_of_losses(stack):
    gw, daemon = stack
    seen: set = set()
    idle: list[socket.socket] = []
    try:
        _warm_upstream_pool(gw.listen_port)
        with Load(gw.listen_port) as load, Attacker(gw.listen_port) as attacker:
            idle = _fill_connection_table(gw.listen_port)
            # steady load under attack: builds the victims' baselines
            end = time.monotonic() + 22
            while time.monotonic() < end:
                seen |= {v["tenant"] for v in _hotspots(daemon)["noisy_neighbours"]}
                time.sleep(1)
            assert seen == set(), f"flagged during steady load: {seen}"
            lost_before = daemon.metrics().lost()
            assert lost_before["conn_map_full"] > 0, lost_before
            assert lost_before["pipeline_overflow"] > 0, lost_before
            load.cost["bee"] = LIGHT_MS * 10
            started = time.monotonic()
            flagged_after = None
            while time.monotonic() - started < 15:
                flagged = {v["tenant"] for v in _hotspots(daemon)["noisy_neighbours"]}
                seen |= flagged
                if "bee" in flagged and flagged_after is None:
                    flagged_after = time.monotonic() - started
                time.sleep(1)
            lost_after = daemon.metrics().lost()
            load.cost["bee"] = LIGHT_MS
            assert not load.errors, load.errors
            assert not attacker.errors, attacker.errors
    finally:
        for s in idle:
            s.close()
    # the attack went on all along: losses kept coming while bee was being judged
    assert lost_after["pipeline_overflow"] > lost_before["pipeline_overflow"], lost_after
    assert attacker.sent["junk"] > 100 and attacker.sent["pipelined"] > 100, attacker.sent
    assert flagged_after is not None and flagged_after <= 10, (flagged_after, _hotspots(daemon))
    assert seen == {"bee"}, f"flagged: {seen}"
    raised = next(c for c in _flag_changes(daemon) if c["active"] and c["tenant"] == "bee")
    ev = raised["evidence"]
    assert ev["window_complete"] is True and ev["tenant_losses"] == 0, ev
    assert set(TENANTS) - {"bee"} <= set(_hotspots(daemon)["shares"]), "the others were seen"
