"""docs/testing.md case 8: a flood of distinct tenant values against a daemon with max_tenants: 50.

The label set and /metrics stay bounded, and every request is still counted somewhere: under its
own tenant (the first 50 admitted) or under __other__.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from harness.client import ProtocolError, WireClient
from harness.metrics import RESERVED, SIDES
from harness.traffic import drive
from tests.e2e.conftest import Baseline

MAX_TENANTS = 50
FLOOD = 3000


@pytest.fixture(scope="module")
def flood_daemon(daemon_factory, e2e_gateway):
    return daemon_factory(tenancy_extra=f"  max_tenants: {MAX_TENANTS}\n")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_flood_of_distinct_tenants_stays_bounded(flood_daemon, e2e_gateway, e2e_backend):
    prefix = "flood-"
    e2e_backend.reset()
    tally = Baseline(flood_daemon, prefix)
    rss_before = rss_kib(flood_daemon.pid)
    tenants = {f"{prefix}{i:04d}": 1 for i in range(FLOOD)}

    started = time.monotonic()
    got = drive("127.0.0.1", e2e_gateway.listen_port, tenants, connections=4, seed=8,
                deadline=45)
    assert time.monotonic() - started < 50
    assert got == Counter({(t, 200): 1 for t in tenants}), "the client side must be exact"
    assert e2e_backend.total == FLOOD

    def side_total(d: Counter, side: str) -> int:
        return sum(n for (s, _, _), n in d.items() if s == side)

    delta = tally.settle(lambda d: all(side_total(d, s) == FLOOD for s in SIDES), timeout=20)
    m = tally.last
    for side in SIDES:
        # every request counted exactly once: under its own tenant or under __other__
        assert side_total(delta, side) == FLOOD, side
        own = Counter({t: n for (s, t, _), n in delta.items() if s == side and t in tenants})
        other = sum(n for (s, t, _), n in delta.items() if s == side and t == "__other__")
        assert set(own.values()) <= {1}, own.most_common(3)
        rest = Counter({k: n for k, n in delta.items()
                        if k[0] == side and k[1] not in tenants and k[1] != "__other__"})
        assert not rest, (rest, tally.rejected(), tally.lost())
        assert len(own) + other == FLOOD
        assert other >= FLOOD - MAX_TENANTS, (side, other)
        assert {cls for (s, _, cls) in delta if s == side} == {"2xx"}
        # the label set is bounded
        labels = m.tenant_labels(side)
        real = labels - set(RESERVED) - {"common"}
        assert len(real) <= MAX_TENANTS, len(real)
        assert "__other__" in labels
    # both sides share one admission budget
    real_both = (m.tenant_labels("server") | m.tenant_labels("client")) - set(RESERVED) - {"common"}
    assert len(real_both) == MAX_TENANTS  # the first 50 distinct values got their own label
    rejected = tally.rejected()
    assert set(rejected) <= {"max_tenants", "kernel_overflow"}, rejected
    assert rejected["max_tenants"] > 0

    # /metrics size and the daemon's memory stay bounded
    status, body = flood_daemon.get("/metrics")
    # at most ~8 KiB of series per label (2 sides x 6 status classes, 2 histograms, bytes,
    # connections, CPU, share ...), and at most max_tenants + the reserved labels + default
    per_label = 8 * 1024
    assert status == 200 and len(body) < per_label * (MAX_TENANTS + len(RESERVED) + 1), len(body)
    doc = flood_daemon.tenants_json()
    assert len({e["tenant"] for e in doc["tenants"]}) <= MAX_TENANTS + len(RESERVED) + 1
    assert rss_kib(flood_daemon.pid) - rss_before < 64 * 1024


class PipelinedFlood:
    """`lanes` keep-alive connections, each sending its share of distinct tenants to /direct
    (answered by nginx itself) in pipelined batches: many request heads in little time.

    A batch stays within the kernel's documented per-connection limits: at most TW_FIFO (8)
    requests in flight, and far fewer than the 32 heads one syscall may parse (deeper pipelines
    are counted in events_lost{pipeline_overflow, scan_budget} instead)."""

    def __init__(self, port: int, tenants: list[str], lanes: int = 8, batch: int = 8) -> None:
        self.port, self.batch = port, batch
        self.shares = [tenants[i::lanes] for i in range(lanes)]
        self.statuses: Counter = Counter()
        self.errors: list[Exception] = []
        self._lock = threading.Lock()

    def _lane(self, share: list[str]) -> None:
        local: Counter = Counter()
        try:
            with WireClient("127.0.0.1", self.port, timeout=10) as c:
                for i in range(0, len(share), self.batch):
                    local.update(c.pipeline([(t, "/direct") for t in share[i:i + self.batch]]))
        except (OSError, ProtocolError) as e:  # reported by run()
            with self._lock:
                self.errors.append(e)
        with self._lock:
            self.statuses.update(local)

    def run(self, timeout: float = 40.0) -> Counter:
        threads = [threading.Thread(target=self._lane, args=(s,), daemon=True)
                   for s in self.shares]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=timeout)
        assert not any(t.is_alive() for t in threads)
        assert not self.errors, self.errors[:3]
        return self.statuses


def test_full_identity_map_folds_into_other(flood_daemon, e2e_gateway):
    """More distinct identities within one tick than the kernel's per-tick map holds (4096):
    the excess folds into __other__ (kernel_overflow, events_lost{identity_map_full}), each
    request still counted exactly once, and no hash collision is invented."""
    n = 16000  # within at most 3 ticks, so one tick sees more than 5000 distinct identities
    prefix = "mapfull-"
    tally = Baseline(flood_daemon, prefix)
    tenants = [f"{prefix}{i:05d}" for i in range(n)]
    statuses = PipelinedFlood(e2e_gateway.listen_port, tenants).run()
    assert statuses == Counter({200: n})

    def server_total(d: Counter) -> int:
        return sum(v for (s, _, _), v in d.items() if s == "server")

    delta = tally.settle(lambda d: server_total(d) == n, timeout=20)
    lost = tally.lost()
    if not lost.get("identity_map_full"):
        pytest.skip(f"the flood did not fill the per-tick identity map here (lost: {lost})")
    assert server_total(delta) == n
    assert not [k for k in delta if k[0] == "client"], "/direct never reaches the upstream"
    labels = {t for (_, t, _) in delta}
    assert labels <= set(tenants) | {"__other__"}, labels - set(tenants)
    assert tally.rejected().get("kernel_overflow", 0) > 0
    assert lost.get("hash_collision", 0) == 0, lost
