"""The response-side tenant check end to end (docs/isolation.md): nginx proxying (keep-alive) to a
backend that marks each response with the tenant it served.

The backend answers X-Served-Tenant with the X-Tenant-Context nginx wrote upstream, except for a
chosen few requests: a path /as/<other> makes it answer for <other> (a planted breach), /none
leaves the header out.  nginx passes the header through to the client, so both legs see it.

Clients: keep-alive connections, each sending pipelined batches of requests of mixed tenants.
The daemon trusts X-Tenant-Context on the upstream leg (written by the gateway) and, in this
test, X-Tenant-ID on the client's leg (as a gateway behind an authenticating proxy would), and
checks both sides.  Asserted: every planted breach is counted once per leg under the right
(tenant, served) pair and nothing else is; every response is checked or counted as not
checked with its reason; each sampled breach is an error log line naming the pair, the gateway
pid and the connection; a client sending the served header in its request changes nothing.
A second daemon with the claimed X-Tenant-ID of the shipped config (not trusted on the client's
leg) counts the client's leg as not checked (request_identity), never as breaches.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from harness.gateway import Gateway
from harness.metrics import Metrics
from tests.conftest import _free_port, require_root
from tests.e2e.conftest import NGINX_COMM, Daemon

TENANTS = ("iso-a", "iso-b", "iso-c")
CONNECTIONS = 4
BATCHES = 6  # per connection
BATCH = 5  # requests pipelined per write (nginx tracks 8 in flight exactly)

CONFIG = """\
listen: "127.0.0.1:{port}"
targets: [{{process: {process}}}]
tenancy:
  sources:
    - {{header: X-Tenant-Context, side: client, trusted: true}}
    - {{header: X-Tenant-ID, side: server{server_trust}}}
  response_check: {{header: X-Served-Tenant, side: both, events_per_second: 1000}}
"""


class _Backend(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        ctx = self.headers.get("X-Tenant-Context") or "-"
        served = [ctx]
        if self.path.startswith("/as/"):
            served = [self.path[4:]]
        elif self.path.startswith("/none"):
            served = []
        self.send_response(200)
        for s in served:
            self.send_header("X-Served-Tenant", s)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def backend():
    require_root()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


@pytest.fixture()
def gateway(tmp_path, backend, nginx_binary):
    """A factory: nginx started after the daemon, so that no connection of it is older than
    the daemon (an older one is adopted, and its first request is never checked)."""
    started = []

    def start() -> Gateway:
        gw = Gateway(tmp_path / "nginx", _free_port(), backend, workers=2,
                     nginx=nginx_binary).start()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


def _plan(conn: int) -> list[list[tuple[str, str]]]:
    """Batches of (tenant, path) for connection `conn`: tenants rotate; every 7th request is a
    planted breach for the next tenant, every 11th has no header."""
    out, i = [], conn
    for _ in range(BATCHES):
        batch = []
        for _ in range(BATCH):
            tenant = TENANTS[i % len(TENANTS)]
            path = "/"
            if i % 7 == 3:
                path = f"/as/{TENANTS[(i + 1) % len(TENANTS)]}"
            elif i % 11 == 5:
                path = "/none"
            batch.append((tenant, path))
            i += 1
        out.append(batch)
    return out


class Clients:
    """CONNECTIONS keep-alive clients sending their plan; each connection stays open until
    close(), so that the daemon finds every breach's connection in /proc."""

    def __init__(self, port: int, forge: bool = False) -> None:
        self.errors: list = []
        self.done = threading.Semaphore(0)
        self._close = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(port, c, forge))
                         for c in range(CONNECTIONS)]
        for t in self._threads:
            t.start()
        for _ in range(CONNECTIONS):
            assert self.done.acquire(timeout=60), "a client did not finish its plan"

    def _client(self, port: int, conn: int, forge: bool) -> None:
        forged = "X-Served-Tenant: iso-c\r\n" if forge else ""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
                for batch in _plan(conn):
                    s.sendall(b"".join(
                        f"GET {path} HTTP/1.1\r\nHost: t\r\nX-Tenant-ID: {tenant}\r\n"
                        f"{forged}\r\n".encode() for tenant, path in batch))
                    got = b""
                    while got.count(b"ok\n") < len(batch):
                        chunk = s.recv(65536)
                        if not chunk:
                            raise ConnectionError("closed")
                        got += chunk
                self.done.release()
                self._close.wait(60)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(e))
            self.done.release()

    def close(self) -> list:
        self._close.set()
        for t in self._threads:
            t.join(30)
        return self.errors


def _expected() -> tuple[Counter, int, int]:
    """(planted breaches by (tenant, served), requests, responses without the header)."""
    planted: Counter = Counter()
    total = none = 0
    for conn in range(CONNECTIONS):
        for batch in _plan(conn):
            for tenant, path in batch:
                total += 1
                if path.startswith("/as/"):
                    planted[(tenant, path[4:])] += 1
                elif path == "/none":
                    none += 1
    return planted, total, none


def _breaches(m: Metrics, side: str) -> Counter:
    return +Counter({(lab["tenant"], lab["served"]): int(v)
                     for lab, v in m.samples("tenantwatch_isolation_breaches_total")
                     if lab["side"] == side})


def _daemon(tmp_path, server_trust: str) -> Daemon:
    port = _free_port()
    return Daemon(tmp_path / "daemon", port, CONFIG.format(
        port=port, process=NGINX_COMM, server_trust=server_trust)).start()


def _settle(d: Daemon, done) -> Metrics:
    deadline = time.monotonic() + 15
    m = d.metrics()
    while time.monotonic() < deadline and not done(m):
        time.sleep(0.3)
        m = d.metrics()
    d.wait_ticks(2)
    return d.metrics()


def test_every_planted_breach_is_caught_once_on_both_legs_and_nothing_else(gateway, tmp_path):
    planted, total, none = _expected()
    assert sum(planted.values()) >= 10 and none >= 5
    d = _daemon(tmp_path, ", trusted: true")
    runs = []
    try:
        gateway = gateway()
        runs = [Clients(gateway.listen_port),
                Clients(gateway.listen_port, forge=True)]  # a forged served header
        m = _settle(d, lambda m: sum(_breaches(m, "server").values()) >= 2 * sum(planted.values())
                    and sum(_breaches(m, "client").values()) >= 2 * sum(planted.values()))
        log = d.log_text()
    finally:
        errors = [e for r in runs for e in r.close()]
        d.stop()
    assert not errors, errors
    twice = Counter({k: 2 * n for k, n in planted.items()})  # two runs
    for side in ("client", "server"):
        assert _breaches(m, side) == twice, side
        checked = m.value("tenantwatch_isolation_responses_checked_total", side=side)
        no_header = m.value("tenantwatch_isolation_responses_unchecked_total", side=side,
                            reason="no_header")
        other = m.value("tenantwatch_isolation_responses_unchecked_total", side=side) - no_header
        assert (checked, no_header, other) == (2 * (total - none), 2 * none, 0), side
    assert not m.lost(), m.lost()
    lines = [json.loads(x[x.index("{"):]) for x in log.splitlines() if "isolation breach:" in x]
    events = Counter((e["side"], e["tenant"], e["served"]) for e in lines)
    assert events == Counter({(side, t, s): n for (t, s), n in twice.items()
                              for side in ("client", "server")}), events
    assert all(e["pid"] in gateway.our_pids() for e in lines)
    listen, upstream_port = gateway.listen_port, gateway.upstream_port
    for e in lines:  # the gateway's end of the client's connection, or of its upstream one
        local, peer = e["connection"].split(" -> ")
        if e["side"] == "server":
            assert local == f"127.0.0.1:{listen}", e
        else:
            assert peer == f"127.0.0.1:{upstream_port}", e
    upstream = [e for e in lines if e["side"] == "client"]
    assert all(e["request_line"].startswith(f"GET /as/{e['served']} HTTP/1.1") for e in upstream)
    assert all(e["status"] == 200 for e in lines)


def test_a_client_claim_on_its_own_leg_is_never_checked(gateway, tmp_path):
    """The shipped config: X-Tenant-ID is the client's claim.  Its leg is counted as not checked
    (request_identity), whatever the client names; the upstream leg still catches the breaches."""
    planted, total, _ = _expected()
    d = _daemon(tmp_path, "")
    clients = None
    try:
        gateway = gateway()
        clients = Clients(gateway.listen_port)
        m = _settle(d, lambda m: sum(_breaches(m, "client").values()) >= sum(planted.values())
                    and m.value("tenantwatch_isolation_responses_unchecked_total",
                                side="server") >= total)
    finally:
        errors = clients.close() if clients else []
        d.stop()
    assert not errors, errors
    assert _breaches(m, "client") == planted
    assert _breaches(m, "server") == Counter()
    assert m.value("tenantwatch_isolation_responses_checked_total", side="server") == 0
    assert m.value("tenantwatch_isolation_responses_unchecked_total", side="server",
                   reason="request_identity") == total
