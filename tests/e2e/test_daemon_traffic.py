"""The daemon against real nginx traffic: docs/testing.md cases 1-7 and 9.

Every test compares the daemon's /metrics (server side: client -> nginx, client side: nginx ->
Backend) with the ground truth: what the raw-socket client sent and got back, and what the Backend
received.  Tenants are unique per test (the `prefix` fixture); the shared labels (common,
__invalid__, __other__, __unattributed__) are compared as deltas (`tally`).
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections import Counter

from harness.client import ProtocolError, WireClient
from harness.metrics import SIDES
from tests.e2e.conftest import (
    expected_counts,
    nginx_tgids,
    status_class,
    upstream_view,
)

HOST = "127.0.0.1"


def wait_until(pred, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def assert_matches_backend(delta: Counter, backend) -> None:
    """The client side of the daemon's counts equals what the Backend received."""
    assert upstream_view(delta) == +Counter(backend.received)


# ---------------------------------------------------------------------------- 1. keep-alive


def test_keepalive_connection_alternating_tenants(e2e_gateway, fresh_backend, tally, prefix):
    tenants = [f"{prefix}a", f"{prefix}b", f"{prefix}c"]
    results: Counter = Counter()
    with WireClient(HOST, e2e_gateway.listen_port) as c:
        for i in range(20):
            t = tenants[i % 3]
            results[(t, c.request(t))] += 1
        assert c.connects == 1, "all 20 requests must share one connection"
    assert results == Counter({(tenants[0], 200): 7, (tenants[1], 200): 7, (tenants[2], 200): 6})

    expected = expected_counts(results)
    got = tally.settle(expected)
    assert got == expected
    assert_matches_backend(got, fresh_backend)
    assert tally.lost() == Counter()


# ---------------------------------------------------------------------------- 2. pipelining


def test_pipelined_requests_in_one_write(e2e_gateway, fresh_backend, tally, prefix):
    a, b, c = f"{prefix}a", f"{prefix}b", f"{prefix}c"
    batches = [
        [(a, "/"), (b, "/status/404"), (None, "/"), (c, "/sleep/20"), (a, "/"), (b, "/")],
        [(c, "/status/503"), (a, "/"), (b, "/"), (c, "/")],
    ]
    results: Counter = Counter()
    with WireClient(HOST, e2e_gateway.listen_port) as cl:
        for batch in batches:
            statuses = cl.pipeline(batch)
            results.update(((t, s) for (t, _), s in zip(batch, statuses)))
        assert cl.connects == 1
    assert results == Counter({(a, 200): 3, (b, 404): 1, (b, 200): 2, (None, 200): 1,
                               (c, 200): 2, (c, 503): 1})

    expected = expected_counts(results)
    got = tally.settle(expected)
    assert got == expected
    assert_matches_backend(got, fresh_backend)
    assert tally.lost() == Counter()


def test_pipelined_beyond_fifo_depth_keeps_per_tenant_totals(e2e_gateway, fresh_backend, tally,
                                                             prefix):
    """12 requests in one write: more than TW_FIFO (8) in flight.  Documented loss: the excess
    requests are counted with status class "none" and events_lost{pipeline_overflow}; the
    per-tenant totals stay exact."""
    tenants = [f"{prefix}{i}" for i in range(3)]
    batch = [(tenants[i % 3], "/") for i in range(12)]
    with WireClient(HOST, e2e_gateway.listen_port) as cl:
        assert cl.pipeline(batch) == [200] * 12

    def per_tenant(delta: Counter) -> Counter:
        return +Counter({(side, t): sum(n for (s, tt, _), n in delta.items()
                                        if s == side and tt == t)
                         for side in SIDES for t in tenants})

    want = Counter({(side, t): 4 for side in SIDES for t in tenants})
    got = tally.settle(lambda d: per_tenant(d) == want)
    assert per_tenant(got) == want
    assert set(got) <= {(side, t, cls) for side in SIDES for t in tenants
                        for cls in ("2xx", "none")}
    overflow = tally.lost().get("pipeline_overflow", 0)
    none = sum(n for (side, _, cls), n in got.items() if side == "server" and cls == "none")
    assert none == overflow, (got, tally.lost())
    assert not [k for k in got if k[0] == "client" and k[2] != "2xx"], got
    assert_matches_backend(got, fresh_backend)


# ---------------------------------------------------------------------------- 3. split heads


def test_request_head_split_across_reads(e2e_gateway, fresh_backend, tally, prefix):
    results: Counter = Counter()
    with WireClient(HOST, e2e_gateway.listen_port) as c:
        # cuts inside the request line, a header name, a value, between CR and LF, before the
        # blank line
        t = f"{prefix}cuts"
        head = c.build_request(t)
        name_at = head.index(b"X-Tenant-ID")
        value_at = name_at + len(b"X-Tenant-ID: ")
        line_end = head.index(b"\r\n", value_at)
        cuts = [2, name_at + 4, value_at + 3, line_end + 1, len(head) - 2]
        results[(t, c.split_request(t, cuts))] += 1

        # the identity header one byte per read
        t = f"{prefix}bytes"
        head = c.build_request(t)
        name_at = head.index(b"X-Tenant-ID")
        cuts = list(range(name_at, head.index(b"\r\n", name_at) + 2))
        results[(t, c.split_request(t, cuts, delay=0.005))] += 1

        # a head larger than nginx's first read (1 KiB): a 6 KB header after the identity ...
        t = f"{prefix}big-after"
        results[(t, c.split_request(t, [], headers=[("X-Pad", "p" * 6000)]))] += 1
        # ... and before it, cut inside the pad and inside the identity value
        t = f"{prefix}big-before"
        hdrs = [("X-Pad", "q" * 6000), ("X-Tenant-ID", t)]
        head = c.build_request(None, headers=hdrs)
        value_at = head.index(b"X-Tenant-ID: ") + len(b"X-Tenant-ID: ")
        results[(t, c.split_request(None, [3000, value_at + 2], headers=hdrs))] += 1
        # and many medium headers around it, in one write (several reads on nginx's side)
        t = f"{prefix}many"
        pads = [(f"X-Pad-{i}", "r" * 500) for i in range(8)]
        results[(t, c.request(None, headers=pads[:4] + [("X-Tenant-ID", t)] + pads[4:]))] += 1

        # the connection still works normally afterwards
        t = f"{prefix}after"
        results[(t, c.request(t))] += 1
        assert c.connects == 1
    assert {s for _, s in results} == {200}, results

    expected = expected_counts(results)
    got = tally.settle(expected)
    assert got == expected
    assert_matches_backend(got, fresh_backend)
    assert tally.lost() == Counter()


def test_request_head_over_scan_budget_does_not_swallow_next_request(e2e_gateway, fresh_backend,
                                                                      tally, prefix):
    big, after = f"{prefix}big", f"{prefix}after"
    pads = [(f"X-Pad-{i}", "p" * 2000) for i in range(10)]  # ~20 KB head, under nginx's limits
    with WireClient(HOST, e2e_gateway.listen_port) as c:
        assert c.request(big, headers=pads) == 200
        assert c.request(after) == 200
    assert fresh_backend.received == Counter({big: 1, after: 1})

    def ok(d: Counter) -> bool:
        return d.get(("client", after, "2xx"), 0) == 1

    got = tally.settle(ok, timeout=3)
    # the server side (nginx reads at most 8 KiB at a time) is right
    assert got[("server", big, "2xx")] == 1 and got[("server", after, "2xx")] == 1
    # the big head is cut (events_lost{scan_budget}) but counted with the identity seen
    # before the cut; the next request is never swallowed
    assert got[("client", big, "2xx")] == 1, (got, tally.lost())
    assert got[("client", after, "2xx")] == 1, (got, tally.lost())
    assert sum(n for (side, _, _), n in got.items() if side == "client") == 2, got


# ---------------------------------------------------------------------------- 4. reload


class Load:
    """`lanes` keep-alive clients cycling through `tenants` until stop() (bounded in count and
    time); counts {(tenant, status): n} on the client side, status 0 = no response."""

    def __init__(self, port: int, tenants: list, lanes: int = 4, path: str = "/sleep/1",
                 max_requests: int = 20000, max_seconds: float = 30.0) -> None:
        self.port, self.tenants, self.path = port, tenants, path
        self.max_requests, self.max_seconds = max_requests, max_seconds
        self.results: Counter = Counter()
        self.completed = 0  # requests answered so far, all lanes (progress, read while running)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._lane, args=(i,), daemon=True)
                         for i in range(lanes)]
        self._per_lane = max_requests // lanes

    def _lane(self, i: int) -> None:
        local: Counter = Counter()
        end = time.monotonic() + self.max_seconds
        with WireClient(HOST, self.port) as c:
            for n in range(self._per_lane):
                if self._stop.is_set() or time.monotonic() >= end:
                    break
                t = self.tenants[(i + n) % len(self.tenants)]
                try:
                    local[(t, c.request(t, self.path))] += 1
                except (OSError, ProtocolError):
                    local[(t, 0)] += 1
                with self._lock:
                    self.completed += 1
        with self._lock:
            self.results.update(local)

    def start(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> Counter:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.max_seconds + 10)
        assert not any(t.is_alive() for t in self._threads)
        return self.results


def wait_targets_traced(daemon, timeout: float) -> tuple[int, int]:
    """Wait until /healthz reports as many traced processes as there are our nginx processes."""
    want = got = -1

    def same() -> bool:
        nonlocal want, got
        want, got = len(nginx_tgids()), daemon.healthz()["targets"]
        return want == got

    wait_until(same, timeout, interval=0.1)
    return want, got


def test_nginx_reload_under_load(daemon, make_gateway, fresh_backend, tally, prefix):
    gw = make_gateway()
    want, got = wait_targets_traced(daemon, 5.0)
    assert want == got, f"/healthz targets {got}, our nginx processes {want}"

    tenants = [f"{prefix}a", f"{prefix}b", f"{prefix}c", None]
    load = Load(gw.listen_port, tenants).start()
    time.sleep(0.5)
    old = set(gw.worker_pids())
    done_before = load.completed
    new = set(gw.reload(wait_old_exit=True))
    assert new and not (new & old)
    reloaded_at = time.monotonic()
    assert load.completed > done_before, "no request was answered during the reload"
    time.sleep(0.5)
    done_after = load.completed
    time.sleep(0.5)
    results = load.stop()
    assert load.completed > done_after, "no request was answered after the reload"
    assert not [k for k in results if k[1] != 200], results

    # requests only the new workers can have served, sent right after the reload
    after = f"{prefix}after"
    with WireClient(HOST, gw.listen_port) as c:
        for _ in range(10):
            results[(after, c.request(after))] += 1

    # the new workers are traced within 2 s (the kernel's fork hook adds them at once)
    want, got = wait_targets_traced(daemon, max(0.0, reloaded_at + 2.0 - time.monotonic()))
    assert want == got, f"/healthz targets {got}, our nginx processes {want}"

    expected = expected_counts(results)
    got = tally.settle(expected, timeout=20)
    assert got == expected
    assert_matches_backend(got, fresh_backend)
    assert got[("server", after, "2xx")] == 10 and got[("client", after, "2xx")] == 10


# ---------------------------------------------------------------------------- 5. fd reuse


def _tcp_inode(local_port: int, remote_port: int) -> int | None:
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if (int(parts[1].rsplit(":", 1)[1], 16) == local_port
                    and int(parts[2].rsplit(":", 1)[1], 16) == remote_port):
                return int(parts[9])
    return None


def server_fd(pid: int, listen_port: int, client_port: int) -> int | None:
    """The fd in process `pid` of the accepted socket for the client at `client_port`."""
    inode = _tcp_inode(listen_port, client_port)
    if not inode:
        return None
    want = f"socket:[{inode}]"
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == want:
                return int(fd)
        except OSError:
            continue
    return None


def test_fd_reuse_after_reset_before_response(daemon, make_gateway, fresh_backend, tally,
                                              prefix):
    gw = make_gateway(workers=1)  # one worker: the next connection gets the lowest free fd
    (worker,) = gw.worker_pids()
    want, got = wait_targets_traced(daemon, 5.0)
    assert want == got
    reset_t, next_t = f"{prefix}reset", f"{prefix}next"

    a = WireClient(HOST, gw.listen_port)
    a.send_raw(a.build_request(reset_t, "/sleep/300"))
    a_port = a.sock.getsockname()[1]
    # nginx has read the head once the Backend has it; then abort with a RST
    assert wait_until(lambda: fresh_backend.received[reset_t] == 1, 5.0), fresh_backend.received
    fd_a = server_fd(worker, gw.listen_port, a_port)
    assert fd_a is not None
    socket_a = os.readlink(f"/proc/{worker}/fd/{fd_a}")
    a.reset()

    def closed_by_nginx() -> bool:  # nginx noticed the RST and closed its end: the fd is free
        try:
            return os.readlink(f"/proc/{worker}/fd/{fd_a}") != socket_a
        except FileNotFoundError:
            return True

    assert wait_until(closed_by_nginx, 5.0)

    with WireClient(HOST, gw.listen_port) as b:
        assert b.request(next_t) == 200
        fd_b = server_fd(worker, gw.listen_port, b.sock.getsockname()[1])
    assert fd_b == fd_a, "the new connection did not reuse the fd; the test lost its point"

    def per_tenant(d: Counter) -> Counter:
        out: Counter = Counter()
        for (side, t, _), n in d.items():
            out[(side, t)] += n
        return out

    want_totals = Counter({("server", reset_t): 1, ("client", reset_t): 1,
                           ("server", next_t): 1, ("client", next_t): 1})
    got = tally.settle(lambda d: per_tenant(d) == want_totals)
    # exactly once each, under its own tenant, nothing anywhere else
    assert per_tenant(got) == want_totals, got
    assert got[("server", next_t, "2xx")] == 1 and got[("client", next_t, "2xx")] == 1
    # nginx never answered the reset request: it ended without a response on both sides
    assert got[("server", reset_t, "none")] == 1, got
    assert got[("client", reset_t, "none")] == 1, got
    assert_matches_backend(got, fresh_backend)


# ---------------------------------------------------------------------------- 6. non-HTTP bytes


def _send_blob(port: int, blob: bytes, prelude: bytes = b"") -> bytes:
    """Send (prelude, then) blob on a raw socket; return what nginx answered (until close)."""
    with socket.create_connection((HOST, port), timeout=5) as s:
        got = b""
        if prelude:
            s.sendall(prelude)
            while b"\r\n\r\n" not in got:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        s.sendall(blob)
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        except (ConnectionResetError, socket.timeout):
            pass
        return got


def test_non_http_bytes_are_never_a_tenant(daemon, e2e_gateway, fresh_backend, tally, prefix):
    rnd = random.Random(6)
    blobs = {
        "tls-hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + rnd.randbytes(501),
        "binary": bytes([rnd.randrange(0, 0x41)]) + rnd.randbytes(700),
        "h2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                      + b"\x00\x00\x12\x04\x00\x00\x00\x00\x00" + rnd.randbytes(18),
        "zeros": b"\x00" * 64,
    }
    before = daemon.metrics()
    labels_before = {side: before.tenant_labels(side) for side in SIDES}
    for name, blob in blobs.items():
        answer = _send_blob(e2e_gateway.listen_port, blob)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), (name, answer[:80])
    # after a real request on a keep-alive connection: the request counts, the garbage does not
    t = f"{prefix}first"
    prelude = WireClient(HOST, e2e_gateway.listen_port).build_request(t)
    for name, blob in blobs.items():
        answer = _send_blob(e2e_gateway.listen_port, blob, prelude)
        assert answer.startswith(b"HTTP/1.1 200"), (name, answer[:80])

    expected = expected_counts({(t, 200): len(blobs)})
    got = tally.settle(expected)
    assert got == expected
    m = tally.last
    for side in SIDES:
        assert m.requests(side) - before.requests(side) == len(blobs), side
        assert m.tenant_labels(side) - labels_before[side] <= {t}, side
    assert fresh_backend.received == Counter({t: len(blobs)})


# ---------------------------------------------------------------------------- 7. malformed


def test_malformed_and_ambiguous_identity_goes_to_invalid(e2e_gateway, fresh_backend, tally,
                                                          prefix):
    first, second = f"{prefix}dup1", f"{prefix}dup2"
    folded, nul, ctl = f"{prefix}fold", f"{prefix}nul", f"{prefix}ctl"
    long_value = prefix + "x" * (200 - len(prefix))  # valid characters, longer than any label
    cases = {
        "duplicate": [("X-Tenant-ID", first), ("X-Tenant-ID", second)],
        "obs-fold": [("X-Tenant-ID", f"{folded}\r\n  continued".encode())],
        "nul": [("X-Tenant-ID", f"{nul}\x00x".encode())],
        "control": [("X-Tenant-ID", f"{ctl}\x01x".encode())],
        "too-long": [("X-Tenant-ID", long_value)],
        "empty": [("X-Tenant-ID", "")],
    }
    status = {}
    for name, headers in cases.items():
        with WireClient(HOST, e2e_gateway.listen_port) as c:  # nginx closes after a 400
            status[name] = c.request(None, headers=headers)
    # nginx answers 400 to the fold and the NUL and proxies the rest
    assert status == {"duplicate": 200, "obs-fold": 400, "nul": 400, "control": 200,
                      "too-long": 200, "empty": 200}, status
    proxied = [n for n, s in status.items() if s == 200]
    received = fresh_backend.received
    assert sum(received.values()) == len(proxied)

    expected: Counter = Counter()
    for name, s in status.items():
        expected[("server", "__invalid__", status_class(s))] += 1
    # client side: what nginx wrote upstream (its trusted X-Tenant-Context): the map's pick of a
    # duplicate (its first value), "common" for values its map refuses, and the over-long value,
    # which tenantwatch cannot hold whole, in __invalid__
    expected[("client", "__invalid__", "2xx")] += 1
    for ctx, n in received.items():
        if ctx != long_value:
            expected[("client", ctx, "2xx")] += n
    assert set(received) <= {first, second, "common", long_value}, received

    got = tally.settle(expected)
    assert got == expected
    for t in (first, second, folded, nul, ctl):
        assert ("server", t) not in {(s, tt) for s, tt, _ in got}
    assert tally.rejected() == Counter({"duplicate": 1, "folded": 1, "bad_byte": 2,
                                        "too_long": 2, "pattern": 1})


# ---------------------------------------------------------------------------- 9. forged header


def test_forged_client_context_header_never_wins(e2e_gateway, fresh_backend, tally, prefix):
    victim, mallory = f"{prefix}victim", f"{prefix}mallory"
    forged = [("X-Tenant-Context", victim)]
    with WireClient(HOST, e2e_gateway.listen_port) as c:
        # the claimed X-Tenant-ID is the server-side identity, nginx's map writes the trusted one
        assert c.request(mallory, headers=forged) == 200
        assert c.request(mallory, headers=forged) == 200
        # a value nginx's map refuses: the trusted header says "common"
        assert c.request("bad!!", headers=forged) == 200
        # no X-Tenant-ID at all: both sides fall to the default tenant
        assert c.request(None, headers=forged) == 200
    # nginx replaced the forged header upstream
    assert fresh_backend.received == Counter({mallory: 2, "common": 2})

    expected = Counter({
        ("server", mallory, "2xx"): 2, ("client", mallory, "2xx"): 2,
        ("server", "__invalid__", "2xx"): 1, ("server", "common", "2xx"): 1,
        ("client", "common", "2xx"): 2,
    })
    got = tally.settle(expected)
    assert got == expected
    doc = daemon_tenants(tally)
    assert not [e for e in doc["tenants"] if e["tenant"] == victim]
    (trusted,) = [e for e in doc["tenants"] if e["tenant"] == mallory and e["side"] == "client"]
    assert trusted["trusted"] is True and trusted["requests"] == 2
    (claimed,) = [e for e in doc["tenants"] if e["tenant"] == mallory and e["side"] == "server"]
    assert claimed["trusted"] is False and claimed["requests"] == 2


def daemon_tenants(tally) -> dict:
    return tally.daemon.tenants_json()
