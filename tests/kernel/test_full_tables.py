"""Full kernel tables lose counts under a named reason, and never a connection's close.

The probes here are loaded with the smallest aggregate map config allows
(capture.max_identities 1024).  A flood of distinct identity values fills it within one tick;
connections opened earlier under a real tenant close in that same tick.  Their closes must
still be counted under that tenant's key (tw_closes), so that connections_active comes back to
exactly 0, while the flood's own requests fold into the overflow entry as before.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import require_root
from tests.kernel.test_counts import SERVER, _exchange, _req

MAX_IDENTITIES = 1024
KEPT = 20  # connections of the real tenant, closed while the map is full
FLOOD = 1200  # distinct values in one tick: more than the map holds
PIPELINE = 6  # requests sent at once, within what the kernel keeps in flight (TW_FIFO)


@pytest.fixture(scope="module")
def small_probes():
    require_root()
    from tenantwatch.kernel.loader import HttpProbes, KernelSource
    from tenantwatch.kernel.records import Side

    p = HttpProbes(
        sources=[KernelSource("x-tenant-id", (Side.SERVER,))],
        process_names=["python3-twsrv"],
        latency_bounds_seconds=(0.001, 0.01, 0.1, 1.0),
        max_identities=MAX_IDENTITIES,
    )
    p.load()
    yield p
    p.close()


@pytest.fixture()
def server(small_probes):
    proc = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    small_probes.set_targets({proc.pid})
    small_probes.drain()
    yield port
    proc.kill()
    proc.wait(5)
    small_probes.set_targets(set())


def test_closes_in_a_full_map_stay_with_their_tenant(small_probes, server):
    from tenantwatch.aggregation.aggregator import Aggregator
    from tenantwatch.config import parse_config
    from tenantwatch.identity import IdentityResolver

    cfg = parse_config({"targets": [{"process": "python3-twsrv"}],
                        "tenancy": {"sources": [{"header": "X-Tenant-ID"}]}})
    agg = Aggregator(IdentityResolver(cfg.tenancy), (0.001, 0.01, 0.1, 1.0))

    def active(tenant: str) -> int:
        snap = agg.snapshot(True)
        return sum(t.connections_active for t in snap.tenants if t.tenant == tenant)

    kept = [socket.create_connection(("127.0.0.1", server)) for _ in range(KEPT)]
    for s in kept:
        _exchange(s, _req("keeper"), 1)
    first = small_probes.drain()
    agg.apply(first)
    keeper = [c for c in first.identities if c.raw_value == b"keeper"]
    assert sum(c.connections_opened for c in keeper) == KEPT
    key = keeper[0].key
    assert active("keeper") == KEPT
    assert first.tables["connections"] == (KEPT, 65536)  # the kernel's count, no walk

    with socket.create_connection(("127.0.0.1", server)) as flood:
        for i in range(0, FLOOD, PIPELINE):  # pipelined: no delayed ACK per request
            _exchange(flood, b"".join(_req(f"junk-{j:05d}") for j in range(i, i + PIPELINE)),
                      PIPELINE)
        for s in kept:  # the map is full now: the closes cannot get an entry of their own
            s.close()
        deadline = time.monotonic() + 5
        time.sleep(0.3)  # the server sees EOF on each and closes its side
        second = small_probes.drain()
        agg.apply(second)
        assert time.monotonic() < deadline
    lost = second.lost
    assert second.tables["identities"] == (MAX_IDENTITIES, MAX_IDENTITIES)
    assert second.tables["closes"][0] >= 1  # the keeper's key, in its generation
    assert second.tables["connections"] == (1, 65536)  # the flood's own, still open
    assert lost.get("identity_map_full", 0) > 0, lost  # the flood did fill the map
    assert lost.get("close_map_full", 0) == 0, lost
    closed = sum(c.connections_closed for c in second.identities if c.key == key)
    assert closed == KEPT
    overflow = [c for c in second.identities if c.flags and c.request_heads]
    assert sum(c.request_heads for c in second.identities) == FLOOD
    assert overflow, "the flood's requests beyond the map folded into the overflow entry"
    assert active("keeper") == 0
