"""Records the aggregation stage gives to detection and the exporters."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from tenantwatch.kernel.records import Side


@dataclass(frozen=True)
class TenantSideStats:
    """Cumulative counters of one tenant on one side of the gateway since the daemon started."""

    tenant: str
    side: Side
    trusted: bool  # at least one request of this tenant on this side came from a trusted source
    requests_by_class: Mapping[str, int]  # status class -> count (STATUS_CLASSES)
    rx_bytes: int
    tx_bytes: int
    latency_buckets: tuple[int, ...]  # cumulative counts per upper bound, last is +Inf
    latency_sum_seconds: float
    connections_opened: int
    connections_active: int
    cpu_seconds: float = 0.0  # gateway CPU charged to the tenant on this side, cumulative
    connections_closed: int = 0
    connection_seconds: float = 0.0  # summed lifetimes of the connections closed

    @property
    def requests(self) -> int:
        return sum(self.requests_by_class.values())


@dataclass(frozen=True)
class Snapshot:
    """Everything the exporters need, built once per tick; immutable."""

    tenants: tuple[TenantSideStats, ...]
    latency_bounds_seconds: tuple[float, ...]
    identity_rejected: Mapping[str, int]  # cumulative, by reason
    events_lost: Mapping[str, int]  # cumulative, by reason
    probes: Mapping[str, bool]
    targets: int
    ticks: int
    ready: bool
    taken_at_unix: float
    # Run-queue delay of gateway threads since start: bounds, cumulative buckets (+Inf last), sum.
    runq_bounds_seconds: tuple[float, ...] = ()
    runq_buckets: tuple[int, ...] = ()
    runq_sum_seconds: float = 0.0
    psi_some_avg10: float | None = None  # /proc/pressure/cpu, percent; None when unavailable
    backends: Mapping[str, BackendUsage] = field(default_factory=dict)  # tenant's own cgroup
    # the kernel's tables as of the last tick: name -> (entries, capacity) (KernelTick.tables)
    tables: Mapping[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class BackendUsage:
    """Cumulative counters of one tenant's own backend cgroup (aggregation/backends.py)."""

    usage_seconds: float
    throttled_seconds: float
    nr_throttled: int
    cgroup_version: int


@dataclass(frozen=True)
class HostSample:
    """What one tick saw of the machine outside the probes (aggregation/host.py reads it)."""

    cpu_busy_seconds: Mapping[int, float]  # per CPU, busy time since the previous sample
    psi_some_avg10: float | None  # /proc/pressure/cpu "some avg10" in percent
    backends: Mapping[str, BackendUsage] = field(default_factory=dict)  # cumulative, by tenant
    # thermal zones and hwmon inputs, degrees Celsius by sensor (aggregation/power.py)
    temperatures_celsius: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SlowSpan:
    """A sampled slow request, resolved to its tenant (a trace span for the exporters)."""

    tenant: str
    side: Side
    method: str
    status: int
    start_unix: float
    duration_seconds: float
    tgid: int


# ---- per-tick deltas for detection (detection/ reads these; imports flow one way) ----


class TenantTick(NamedTuple):
    """One tenant's deltas in one tick (a NamedTuple, as immutable as a frozen dataclass and
    built in a fifth of its time: a tick builds one per active tenant)."""

    tenant: str
    trusted: bool
    cpu_seconds: float  # gateway CPU charged to the tenant in this tick (all sides)
    requests: int  # server-side requests that ended in this tick
    latency_buckets: tuple[int, ...]  # server side, non-cumulative this tick, + a last +Inf slot
    # the part of cpu_seconds charged under trusted identities (the gateway's validated header,
    # a verified token) or to the tenant's own backend cgroup: what enforcement may act on
    trusted_cpu_seconds: float = 0.0
    # kernel losses charged to the tenant this tick (aggregator.TENANT_LOSSES): its own numbers
    # may be raised, so detection holds its flags and caps back
    losses: int = 0


@dataclass(frozen=True)
class WorkerTick:
    tgid: int
    cpu_seconds: float  # all CPU of that gateway process this tick
    by_tenant: Mapping[str, float]  # part of it charged to each tenant (__unattributed__ too)


@dataclass(frozen=True)
class CpuTick:
    cpu: int
    busy_seconds: float  # whole-machine busy time of that CPU this tick (/proc/stat)
    by_tenant: Mapping[str, float]  # gateway time on that CPU charged to each tenant


@dataclass(frozen=True)
class NodeTick:
    at: float  # monotonic seconds at the end of the tick
    interval_seconds: float
    tenants: tuple[TenantTick, ...]
    workers: tuple[WorkerTick, ...]
    cpus: tuple[CpuTick, ...]
    latency_bounds: tuple[float, ...]
    psi_some_avg10: float | None
    runq_p99_seconds: float | None  # p99 run-queue delay of gateway threads this tick
    complete: bool  # False when the kernel lost events this tick that reach every tenant
    # the latest thermal zone and hwmon readings, degrees Celsius by sensor; empty when none
    temperatures_celsius: Mapping[str, float] = field(default_factory=dict)
