"""A hand-written Snapshot shared by the exporter and `top` tests."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

from tenantwatch.aggregation.records import BackendUsage, Snapshot, TenantSideStats
from tenantwatch.kernel.records import STATUS_CLASSES, Side

BOUNDS: tuple[float, ...] = (0.001, 0.01, 0.1)


def classes(**counts: int) -> Mapping[str, int]:
    return MappingProxyType({c: counts.get("c" + c, 0) for c in STATUS_CLASSES})


ACME_SERVER = TenantSideStats(
    tenant="acme",
    side=Side.SERVER,
    trusted=False,
    requests_by_class=classes(c2xx=7, c4xx=2, c5xx=1),  # 10 requests
    rx_bytes=1000,
    tx_bytes=20000,
    latency_buckets=(2, 6, 9, 10),  # cumulative; p50 -> 10 ms, p99 -> +Inf -> 100 ms
    latency_sum_seconds=0.75,
    connections_opened=4,
    connections_active=3,
    connections_closed=1,
    connection_seconds=2.5,
)
ACME_CLIENT = TenantSideStats(
    tenant="acme",
    side=Side.CLIENT,
    trusted=True,
    requests_by_class=classes(c2xx=9),
    rx_bytes=18000,
    tx_bytes=900,
    latency_buckets=(0, 9, 9, 9),
    latency_sum_seconds=0.05,
    connections_opened=2,
    connections_active=2,
)
GLOBEX_SERVER = TenantSideStats(
    tenant="globex",
    side=Side.SERVER,
    trusted=False,
    requests_by_class=classes(c2xx=3),
    rx_bytes=300,
    tx_bytes=600,
    latency_buckets=(3, 3, 3, 3),
    latency_sum_seconds=0.0015,
    connections_opened=1,
    connections_active=0,
)


def make_snapshot(
    *tenants: TenantSideStats, ready: bool = True, taken_at: float = 1_700_000_000.0
) -> Snapshot:
    return Snapshot(
        tenants=tenants if tenants else (ACME_CLIENT, ACME_SERVER, GLOBEX_SERVER),
        latency_bounds_seconds=BOUNDS,
        identity_rejected=MappingProxyType({"pattern": 4}),
        events_lost=MappingProxyType({"ringbuf_full": 2}),
        probes=MappingProxyType({"http": True, "cpu": False}),
        targets=3,
        ticks=42,
        ready=ready,
        taken_at_unix=taken_at,
    )


def full_snapshot() -> Snapshot:
    """The shared snapshot plus CPU, run-queue delay, PSI, a backend cgroup and the kernel's
    tables, so every Snapshot family has samples (every OTLP instrument has points)."""
    snap = make_snapshot(
        dataclasses.replace(ACME_CLIENT, cpu_seconds=0.25),
        dataclasses.replace(ACME_SERVER, cpu_seconds=1.5),
        dataclasses.replace(GLOBEX_SERVER, cpu_seconds=0.125),
    )
    return dataclasses.replace(snap, runq_bounds_seconds=(1e-6, 4e-6),
                               runq_buckets=(5, 8, 11), runq_sum_seconds=0.002,
                               psi_some_avg10=12.5,
                               backends={"acme": BackendUsage(3.5, 0.25, 7, 2)},
                               tables={"conns": (12, 65536), "agg0": (3, 4096)})
