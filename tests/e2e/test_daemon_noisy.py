"""Noisy neighbour, end to end: four tenants through nginx to a backend that burns CPU per
request; one tenant starts sending 10x more expensive requests.

The backend is a separate threaded Python server (named tw-e2e-be-<pid>) traced together with
nginx, so its CPU is the tenants' cost; it does the work of one request at a time (one worker),
so the other tenants' requests queue behind the expensive ones (the victims).  With the GIL
alone (switched every 5 ms) a victim's p99 rose by one histogram bucket at most, and in some
3-second windows not at all: the flag could clear while the tenant was still expensive.
Asserted: the noisy tenant is flagged within 10 s, nobody else is ever flagged, the flag clears
within 30 s after the expensive requests stop, one raise and one clear (no flapping).  A second
scenario: the largest tenant with cheap requests and no contention is never flagged.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from harness.gateway import Gateway
from tests.conftest import _free_port, require_root
from tests.e2e.conftest import NGINX_COMM, Daemon, ThreadGroup

BACKEND_COMM = f"tw-e2e-be-{os.getpid()}"[:15]

BACKEND = r"""
import ctypes, sys, threading, time
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)  # PR_SET_NAME
WORKER = threading.Lock()  # one worker: requests queue behind each other, as in a small pool
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # head and body are two writes: no 40 ms delayed-ACK stall
    def do_GET(self):
        ms = float(self.path.rsplit("/", 1)[-1] or 0) if self.path.startswith("/work/") else 0
        with WORKER:
            t0 = time.thread_time()
            while time.thread_time() - t0 < min(ms, 200) / 1000:
                pass
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ThreadingHTTPServer.daemon_threads = True
s = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), H)
print("ready", flush=True)
s.serve_forever()
"""

CONFIG = """\
listen: "127.0.0.1:{port}"
targets: [{{process: {nginx}}}, {{process: {backend}}}]
tenancy:
  sources:
    - {{header: X-Tenant-Context, trusted: true}}
    - {{header: X-Tenant-ID, side: server}}
detection:
  window_seconds: 3
  baseline_seconds: 20
"""

TENANTS = ("ant", "bee", "cat", "dog")
LIGHT_MS = 2.0


class Load(ThreadGroup):
    """One keep-alive client per tenant, `rate` requests/s each, cost per tenant adjustable."""

    def __init__(self, port: int, rate: float = 15.0) -> None:
        super().__init__()
        self.port, self.rate = port, rate
        self.cost = {t: LIGHT_MS for t in TENANTS}
        self.extra = {t: 0 for t in TENANTS}  # additional requests per tick for a tenant
        self.errors: list = []
        self.threads = [threading.Thread(target=self._run, args=(t,), daemon=True)
                        for t in TENANTS]

    def _run(self, tenant: str) -> None:
        deadline = time.monotonic() + 240  # bounded in time whatever the test does
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                while not self.stop.is_set() and time.monotonic() < deadline:
                    for _ in range(1 + self.extra[tenant]):
                        path = f"/work/{self.cost[tenant]}"
                        s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nX-Tenant-ID: {tenant}"
                                  "\r\n\r\n".encode())
                        got = b""
                        while not got.endswith(b"ok\n"):
                            chunk = s.recv(4096)
                            if not chunk:
                                raise ConnectionError("closed")
                            got += chunk
                    self.stop.wait(1.0 / self.rate)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.errors.append((tenant, repr(e)))


def noisy_stack(work, nginx_binary: str, config: str, **fields: object):
    """The backend, nginx and the daemon (``config`` formatted with port, nginx, backend and
    ``fields``); yields (gateway, daemon) once detection has a first result, stops all after."""
    be_port = _free_port()
    backend = subprocess.Popen([sys.executable, "-c", BACKEND, BACKEND_COMM, str(be_port)],
                               stdout=subprocess.PIPE, text=True)
    gw = None
    daemon = None
    try:
        assert backend.stdout.readline().strip() == "ready"
        gw = Gateway(work / "nginx", _free_port(), be_port, workers=2,
                     nginx=nginx_binary).start()
        port = _free_port()
        daemon = Daemon(work / "daemon", port, config.format(
            port=port, nginx=NGINX_COMM, backend=BACKEND_COMM, **fields)).start()
        # /readyz says the probes are attached; the first detection result comes a tick later
        # (until then /api/v1/hotspots answers 503 "no detection result yet").
        deadline = time.monotonic() + 15
        while daemon.get_json("/api/v1/hotspots")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        yield gw, daemon
    finally:
        if daemon is not None and daemon.proc is not None and daemon.proc.poll() is None:
            assert daemon.stop() == 0
        if gw is not None:
            gw.stop()
        backend.kill()
        backend.wait(5)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, nginx_binary):
    require_root()
    yield from noisy_stack(tmp_path_factory.mktemp("noisy"), nginx_binary, CONFIG)


def _hotspots(daemon: Daemon) -> dict:
    status, doc = daemon.get_json("/api/v1/hotspots")
    assert status == 200, doc
    return doc


def _flag_changes(daemon: Daemon) -> list[dict]:
    out = []
    for line in daemon.log_text().splitlines():
        if "detection {" in line:
            change = json.loads(line.split("detection ", 1)[1])
            if change["kind"] == "noisy_neighbour":
                out.append(change)
    return out


def _brief(change: dict) -> dict:
    """The parts of a flag change that say why it moved (for a failure message)."""
    ev = change["evidence"]
    keys = ("share", "threshold", "hold_threshold", "heavy", "contention", "consecutive", "calm",
            "psi_some_avg10", "runq_p99_seconds", "duration_seconds")
    return {"active": change["active"], "since": change["since"],
            **{k: ev.get(k) for k in keys}, "victims": [v["tenant"] for v in ev["victims"]]}


def _watch(daemon: Daemon, seconds: float, seen: set) -> None:
    """Poll the flagged set once a second, remembering every tenant ever flagged."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for v in _hotspots(daemon)["noisy_neighbours"]:
            seen.add(v["tenant"])
        time.sleep(1)


def test_expensive_tenant_is_flagged_then_cleared_without_flapping(stack):
    gw, daemon = stack
    seen: set = set()
    with Load(gw.listen_port) as load:
        _watch(daemon, 25, seen)  # steady: builds the victims' baselines
        assert seen == set(), f"flagged during steady load: {seen}"
        load.cost["bee"] = LIGHT_MS * 10  # bee's requests become 10x more expensive
        started = time.monotonic()
        flagged_after = None
        while time.monotonic() - started < 20:
            flagged = {v["tenant"] for v in _hotspots(daemon)["noisy_neighbours"]}
            seen |= flagged
            if "bee" in flagged and flagged_after is None:
                flagged_after = time.monotonic() - started
            time.sleep(1)
        assert flagged_after is not None and flagged_after <= 10, \
            (flagged_after, _hotspots(daemon))
        load.cost["bee"] = LIGHT_MS
        stopped = time.monotonic()
        cleared_after = None
        while time.monotonic() - stopped < 35:
            flagged = {v["tenant"] for v in _hotspots(daemon)["noisy_neighbours"]}
            seen |= flagged
            if "bee" not in flagged:
                cleared_after = time.monotonic() - stopped
                break
            time.sleep(1)
        assert cleared_after is not None and cleared_after <= 30, _hotspots(daemon)
        _watch(daemon, 5, seen)
        assert not load.errors, load.errors
    assert seen == {"bee"}, f"flagged: {seen}"
    changes = [(c["tenant"], c["active"]) for c in _flag_changes(daemon)]
    assert changes == [("bee", True), ("bee", False)], [_brief(c) for c in _flag_changes(daemon)]
    raised = next(c for c in _flag_changes(daemon) if c["active"])
    ev = raised["evidence"]
    assert ev["share"] > ev["fair_share"] and "window_complete" in ev
    assert ev["contention"] or ev["victims"] or ev["psi_some_avg10"] is not None


def test_largest_tenant_without_contention_is_not_flagged(stack):
    gw, daemon = stack
    before = len(_flag_changes(daemon))
    seen: set = set()
    with Load(gw.listen_port, rate=8.0) as load:
        load.cost = {t: 0.2 for t in TENANTS}  # cheap requests: no contention
        load.extra["ant"] = 6  # ant sends 7x the requests of each other tenant
        _watch(daemon, 20, seen)
        shares = _hotspots(daemon)["shares"]
        assert not load.errors, load.errors
    assert shares.get("ant", 0) > max(shares.get(t, 0) for t in TENANTS[1:]), shares
    assert seen == set(), seen
    assert len(_flag_changes(daemon)) == before
