"""Aggregation stage: folds per-tick kernel deltas into cumulative per-(tenant, side) state.

Takes: one ``KernelTick`` per tick (kernel/records.py) and an identity resolver that maps each
kernel identity key to a ``TenantIdentity`` (identity/records.py).
Gives: an immutable ``Snapshot`` (aggregation/records.py) for detection and the exporters.

Threading: ``apply()`` runs on the tick thread; ``snapshot()`` is called from HTTP threads.  The
latest ``Snapshot`` is built at the end of ``apply()`` and published by one attribute assignment
(atomic in CPython), so readers never see a half-applied tick and never take the apply lock.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import logging
import operator
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Protocol

from tenantwatch.aggregation.records import (
    BackendUsage,
    CpuTick,
    HostSample,
    NodeTick,
    SlowSpan,
    Snapshot,
    TenantSideStats,
    TenantTick,
    WorkerTick,
)
from tenantwatch.identity.records import OTHER, UNATTRIBUTED, TenantIdentity, Trust
from tenantwatch.kernel.abi import KEY_OVERFLOW, KEY_UNATTRIBUTED
from tenantwatch.kernel.records import (
    STATUS_CLASSES,
    CpuCounts,
    IdentityCounts,
    KernelTick,
    Side,
    ValueFlag,
)

log = logging.getLogger(__name__)
# _fold_cpu and _fold unpack their rows in these orders, and _node_tick builds TenantTick so.
assert CpuCounts._fields == ("key", "tgid", "cpu", "side", "ns", "h2_stream"), CpuCounts._fields
assert TenantTick._fields == ("tenant", "trusted", "cpu_seconds", "requests", "latency_buckets",
                              "trusted_cpu_seconds", "losses"), TenantTick._fields
assert IdentityCounts._fields == (
    "key", "side", "raw_value", "source_index", "flags", "requests_by_class", "request_heads",
    "rx_bytes", "tx_bytes", "latency_buckets", "latency_sum_ns", "connections_opened",
    "connections_closed", "connections_duration_ns", "losses"), IdentityCounts._fields

NS_PER_SECOND = 1_000_000_000
# How far a loss reaches (docs/detection.md, "Completeness").  Losses of sampled events
# (slow-request spans, isolation-breach events) and of breach pairs (their total is in
# tw_iso): no request, byte or CPU count is missing.
# A close that fit nowhere (close_map_full) leaves one connection counted as open: no request,
# byte or CPU count is missing either.
SAMPLING_LOSSES = frozenset({"slow_rate_limited", "slow_buffer_full", "breach_rate_limited",
                             "breach_buffer_full", "breach_map_full", "close_map_full"})
# Counts and CPU that went nowhere, or under a reserved label (__other__ for a full identity
# or CPU map; an untracked connection's CPU goes to __unattributed__): never charged to a wrong
# tenant, so a tenant's share measured with them is at most its true share.  They hold back no
# flag and no cap.
UNDERSTATING_LOSSES = frozenset({"conn_map_full", "identity_map_full", "cpu_map_full",
                                 # HTTP/2 connections shed over the decoding budget: their
                                 # streams go to __unattributed__, never to a tenant, and a
                                 # flood that forces shedding must not hold back every flag
                                 "h2_budget"})
# Charged by the kernel to the identity whose numbers they may have raised (IdentityCounts.
# losses): they hold back that tenant only.  Where a connection has no identity yet, nothing
# of it was charged to anyone, and they hold back nobody.
TENANT_LOSSES = frozenset({"scan_budget", "resync", "pipeline_overflow", "token_incomplete",
                           "token_rate_limited", "token_buffer_full"})


class Resolver(Protocol):
    """What the aggregator needs from the identity stage (``IdentityResolver`` satisfies it)."""

    def resolve(
        self,
        key: int,
        raw_value: bytes | None,
        source_index: int,
        flags: ValueFlag,
        side: Side,
    ) -> TenantIdentity: ...

    def begin_tick(self) -> None: ...

    def end_tick(self) -> None: ...

    def resolve_key(self, key: int) -> TenantIdentity: ...

    def expire(self) -> tuple[str, ...]: ...


class _Totals:
    """Mutable cumulative state of one (tenant, side); never leaves this module.  A slotted
    class with its own __init__: a tick of new tenants builds one per tenant and side."""

    __slots__ = ("connections_active", "connections_closed", "connections_duration_ns",
                 "connections_opened", "cpu_ns", "latency_buckets", "latency_sum_ns",
                 "n_buckets", "requests_by_class", "rx_bytes", "trusted", "tx_bytes")

    def __init__(self, n_buckets: int) -> None:
        self.n_buckets = n_buckets
        self.trusted = False
        self.requests_by_class = [0] * len(STATUS_CLASSES)
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.latency_buckets = [0] * n_buckets  # non-cumulative, like the kernel
        self.latency_sum_ns = 0
        self.connections_opened = 0
        self.connections_closed = 0
        self.connections_duration_ns = 0
        self.connections_active = 0  # kept by the connection ledger (Aggregator._connections)
        self.cpu_ns = 0


def _check_bounds(bounds: Sequence[float]) -> tuple[float, ...]:
    out = tuple(float(b) for b in bounds)
    if not out:
        raise ValueError("latency bounds must not be empty")
    if any(b <= 0 for b in out) or any(a >= b for a, b in zip(out, out[1:])):
        raise ValueError(f"latency bounds must be positive and strictly increasing: {out}")
    return out


def _cumulative(counts: Sequence[int]) -> tuple[int, ...]:
    return tuple(itertools.accumulate(counts))


def estimate_quantile(bounds: Sequence[float], cumulative: Sequence[int], q: float) -> float | None:
    """Estimate quantile ``q`` (0 < q <= 1) from cumulative histogram buckets.

    ``cumulative`` has one count per bound plus a last +Inf slot.  The estimate is the upper bound
    of the bucket in which rank ``q * count`` falls, so it never under-states the latency and its
    resolution is the bucket width.  When the rank falls into the +Inf bucket the highest finite
    bound is returned (as Prometheus' ``histogram_quantile`` does); the true value is above it.
    Returns None when the histogram is empty.
    """
    if not 0 < q <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {q}")
    if len(cumulative) != len(bounds) + 1:
        raise ValueError("cumulative buckets must have len(bounds) + 1 entries")
    count = cumulative[-1]
    if count <= 0:
        return None
    rank = q * count
    for bound, cum in zip(bounds, cumulative):
        if cum >= rank:
            return float(bound)
    return float(bounds[-1])


@dataclass
class _TickDeltas:
    """What one apply() saw, for the NodeTick handed to detection."""

    cpu: dict[str, float] = field(default_factory=dict)
    trusted_cpu: dict[str, float] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)
    latency: dict[str, Sequence[int]] = field(default_factory=dict)  # a row's tuple, or a sum
    trusted: set[str] = field(default_factory=set)
    losses: dict[str, int] = field(default_factory=dict)  # TENANT_LOSSES charged to each
    workers: dict[int, dict[str, float]] = field(default_factory=dict)
    cpus: dict[int, dict[str, float]] = field(default_factory=dict)


class Aggregator:
    """Cumulative per-(tenant, side) counters since the daemon started, minus expired tenants."""

    def __init__(
        self,
        resolver: Resolver,
        latency_bounds_seconds: tuple[float, ...],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._resolver = resolver
        self._bounds = _check_bounds(latency_bounds_seconds)
        self._n_buckets = len(self._bounds) + 1  # + the +Inf slot
        self._clock = clock
        self._lock = threading.Lock()  # serialises apply(); readers use self._latest
        self._totals: dict[tuple[str, Side], _Totals] = {}
        # The connection ledger: (kernel key, side) -> [the tenant its connections were opened
        # under, how many are open].  A close goes to the tenant of its open, whatever the key
        # resolves to by then (an evicted key, an expired tenant), so that connections_active
        # is exact and comes back to 0.  One entry per identity with open connections: bounded
        # by capture.max_connections.
        self._connections: dict[tuple[int, Side], list] = {}
        # The snapshot's rows, rebuilt only for the (tenant, side) pairs a tick touched: with
        # 10k tenants, rebuilding them all every tick cost ~200 ms (bench/scale.py).
        self._rows: dict[tuple[str, Side], TenantSideStats] = {}
        self._dirty: set[tuple[str, Side]] = set()
        self._order: list[tuple[str, Side]] = []  # the keys of _rows, sorted
        self._tenants: tuple[TenantSideStats, ...] = ()  # the rows in that order
        self._identity_rejected: dict[str, int] = {}
        self._events_lost: dict[str, int] = {}
        self._probes: dict[str, bool] = {}
        self._tables: dict[str, tuple[int, int]] = {}
        self._targets = 0
        self._ticks = 0
        self._shape_warned = False
        self._runq: tuple[tuple[float, ...], tuple[int, ...], int] = ((), (), 0)
        self._psi: float | None = None
        self._backends: dict[str, BackendUsage] = {}
        self._slow: tuple[SlowSpan, ...] = ()
        self._node: NodeTick | None = None
        self._applied_at = clock()  # the last apply(): the snapshot's taken_at_unix
        self._latest: Snapshot = self._build_snapshot()
        # apply() leaves the snapshot to be built by the first reader after it (a scrape, the
        # API): a tick's own work does not include the rows (at 10k tenants active each tick,
        # a quarter of it: bench/tick_cost.py), and ticks between scrapes never build them.
        self._stale = False

    @property
    def latency_bounds_seconds(self) -> tuple[float, ...]:
        return self._bounds

    def apply(self, tick: KernelTick, host: HostSample | None = None,
              interval_seconds: float = 1.0) -> None:
        """Fold one tick's deltas into the cumulative state, expire idle tenants, publish."""
        with self._lock:
            per_tick = _TickDeltas()
            self._resolver.begin_tick()
            try:
                self._fold(tick.identities, per_tick)
                self._fold_cpu(tick.cpu, per_tick)
                self._slow = self._resolve_slow(tick)
            finally:
                self._resolver.end_tick()
            if host is not None:
                self._fold_backends(host, per_tick)
            prev_runq = self._runq[1]
            self._runq = (tick.runq_bounds_seconds, tick.runq_buckets, tick.runq_sum_ns)
            self._psi = host.psi_some_avg10 if host else None
            self._node = self._node_tick(tick, host, per_tick, prev_runq, interval_seconds)
            for reason, delta in tick.lost.items():
                self._events_lost[reason] = self._events_lost.get(reason, 0) + delta
            self._probes = dict(tick.probes)
            self._tables = dict(tick.tables)
            self._targets = tick.targets
            self._ticks += 1
            forgotten = set(self._resolver.expire())
            if forgotten:
                # a tenant with connections still open keeps its row (connections_active)
                for key in [k for k, t in self._totals.items()
                            if k[0] in forgotten and not t.connections_active]:
                    del self._totals[key]
                    self._dirty.add(key)
                log.debug("expired %d idle tenants", len(forgotten))
            self._applied_at = self._clock()
            self._stale = True

    def snapshot(self, ready: bool) -> Snapshot:
        """The state as of the last ``apply()``, safe from any thread: built by the first call
        after an apply() (the rows of the pairs touched since the last build), then the same
        object until the next apply()."""
        if self._stale:
            with self._lock:
                if self._stale:
                    self._latest = self._build_snapshot()
                    self._stale = False
        latest = self._latest
        if latest.ready == ready:
            return latest
        return dataclasses.replace(latest, ready=ready)

    def tenant_labels(self) -> set[str]:
        """Every label with a row in the snapshot (reserved and default ones included), without
        building it (the tick's own stages ask, in the tick's thread)."""
        return {tenant for tenant, _ in self._totals}

    def backend_usage(self) -> dict[str, float]:
        """The tenants' backend cgroups' cumulative CPU seconds, as in Snapshot.backends."""
        return {t: b.usage_seconds for t, b in self._backends.items()}

    def summary(self) -> tuple[int, int, int, int, int]:
        """(probes attached, probes, target processes, tenants, events lost in all): the
        status line's numbers, without building the snapshot."""
        return (sum(1 for ok in self._probes.values() if ok), len(self._probes), self._targets,
                len(self.tenant_labels()), sum(self._events_lost.values()))

    def slow_spans(self) -> tuple[SlowSpan, ...]:
        """The slow requests the last tick brought, with their tenants."""
        return self._slow

    def _resolve_slow(self, tick: KernelTick) -> tuple[SlowSpan, ...]:
        if not tick.slow:
            return ()
        # CLOCK_MONOTONIC (kernel) -> wall clock, through one pair of readings
        offset = time.time() - time.monotonic()
        return tuple(
            SlowSpan(tenant=self._resolver.resolve(s.key, None, -1, ValueFlag.NONE, s.side).tenant,
                     side=s.side, method=s.method, status=s.status,
                     start_unix=s.start_monotonic_ns / NS_PER_SECOND + offset,
                     duration_seconds=s.latency_ns / NS_PER_SECOND, tgid=s.tgid)
            for s in tick.slow)

    def node_tick(self) -> NodeTick | None:
        """The last tick's deltas for detection (None before the first apply)."""
        return self._node

    def _fold_cpu(self, rows: Sequence[CpuCounts], per_tick: _TickDeltas) -> None:
        """Each CPU row's time to its tenant's totals (and side) and to the tick's sums per
        tenant, per process and per CPU.  The second hot loop of a tick (a row per identity,
        process and CPU): one loop with its lookups bound, the rows unpacked, not a method call
        per row (bench/tick_cost.py)."""
        resolve_key = self._resolver.resolve_key
        all_totals = self._totals
        dirty = self._dirty
        n_buckets = self._n_buckets
        cpu_by_tenant, trusted_cpu = per_tick.cpu, per_tick.trusted_cpu
        workers, cpus = per_tick.workers, per_tick.cpus
        for key, tgid, cpu, side, ns, _h2_stream in rows:
            trusted = False
            if key == KEY_UNATTRIBUTED:
                tenant = UNATTRIBUTED
            elif key == KEY_OVERFLOW:
                tenant = OTHER
            else:  # a request's key: the resolver knows it from the request head
                identity = resolve_key(key)
                tenant, trusted = identity.tenant, identity.trust is Trust.TRUSTED
            pair = (tenant, side)
            totals = all_totals.get(pair)
            if totals is None:  # as _totals_of
                totals = all_totals[pair] = _Totals(n_buckets)
            dirty.add(pair)
            totals.cpu_ns += ns
            seconds = ns / NS_PER_SECOND
            cpu_by_tenant[tenant] = cpu_by_tenant.get(tenant, 0.0) + seconds
            if trusted:
                trusted_cpu[tenant] = trusted_cpu.get(tenant, 0.0) + seconds
            w = workers.get(tgid)
            if w is None:
                w = workers[tgid] = {}
            w[tenant] = w.get(tenant, 0.0) + seconds
            u = cpus.get(cpu)
            if u is None:
                u = cpus[cpu] = {}
            u[tenant] = u.get(tenant, 0.0) + seconds

    def _fold_backends(self, host: HostSample, per_tick: _TickDeltas) -> None:
        """A tenant's own backend cgroup is part of its cost: its CPU delta joins the tick's."""
        for tenant, usage in host.backends.items():
            before = self._backends.get(tenant)
            if before is not None and usage.usage_seconds >= before.usage_seconds:
                delta = usage.usage_seconds - before.usage_seconds
                per_tick.cpu[tenant] = per_tick.cpu.get(tenant, 0.0) + delta
                # the operator mapped that cgroup to the tenant: its cost is trusted
                per_tick.trusted_cpu[tenant] = per_tick.trusted_cpu.get(tenant, 0.0) + delta
        self._backends = dict(host.backends)

    def _totals_of(self, tenant: str, side: Side) -> _Totals:
        """The totals of (tenant, side), created if new; marked for the next snapshot."""
        key = (tenant, side)
        totals = self._totals.get(key)
        if totals is None:
            totals = _Totals(self._n_buckets)
            self._totals[key] = totals
        self._dirty.add(key)
        return totals

    def _node_tick(self, tick: KernelTick, host: HostSample | None, d: _TickDeltas,
                   prev_runq: tuple[int, ...], interval: float) -> NodeTick:
        tenants = set(d.cpu) | set(d.requests) | set(d.losses)
        runq_delta = tuple(b - a for a, b in zip(prev_runq, tick.runq_buckets)) \
            if len(prev_runq) == len(tick.runq_buckets) else tick.runq_buckets
        runq_p99 = None
        if tick.runq_bounds_seconds and runq_delta and sum(runq_delta) > 0:
            runq_p99 = estimate_quantile(tick.runq_bounds_seconds, _cumulative(runq_delta), 0.99)
        busy = dict(host.cpu_busy_seconds) if host else {}
        # one TenantTick per tenant active in the tick (10,000 on a big node): built as the
        # tuple it is, with the lookups bound
        new, trusted, cpu, requests = tuple.__new__, d.trusted, d.cpu.get, d.requests.get
        latency, trusted_cpu, losses = d.latency.get, d.trusted_cpu.get, d.losses.get
        no_latency = (0,) * self._n_buckets
        return NodeTick(
            at=tick.monotonic_ns / NS_PER_SECOND,
            interval_seconds=interval,
            tenants=tuple(
                new(TenantTick, (t, t in trusted, cpu(t, 0.0), requests(t, 0),
                                 tuple(latency(t, no_latency)), trusted_cpu(t, 0.0),
                                 losses(t, 0)))
                for t in sorted(tenants)),
            workers=tuple(
                WorkerTick(tgid=tgid, cpu_seconds=sum(by.values()),
                           by_tenant=MappingProxyType(dict(by)))
                for tgid, by in sorted(d.workers.items())),
            cpus=tuple(
                CpuTick(cpu=cpu, busy_seconds=busy.get(cpu, 0.0),
                        by_tenant=MappingProxyType(dict(d.cpus.get(cpu, {}))))
                for cpu in sorted(set(busy) | set(d.cpus))),
            latency_bounds=self._bounds,
            psi_some_avg10=host.psi_some_avg10 if host else None,
            runq_p99_seconds=runq_p99,
            complete=not any(n for reason, n in tick.lost.items()
                             if reason not in SAMPLING_LOSSES | UNDERSTATING_LOSSES
                             | TENANT_LOSSES),
            temperatures_celsius=MappingProxyType(dict(host.temperatures_celsius))
            if host else MappingProxyType({}),
        )

    def _fold(self, rows: Sequence[IdentityCounts], per_tick: _TickDeltas) -> None:
        """Each identity row into its tenant's totals (and side) and the tick's sums.  The hot
        loop of a tick (a row per distinct identity and side): one loop with its lookups bound,
        element-wise sums with map(), not a method call per row (bench/tick_cost.py)."""
        resolve = self._resolver.resolve
        all_totals = self._totals
        dirty = self._dirty
        rejected = self._identity_rejected
        n_buckets = self._n_buckets
        n_classes = len(STATUS_CLASSES)
        add = operator.add
        server = Side.SERVER
        trusted_level = Trust.TRUSTED
        tick_trusted, tick_losses = per_tick.trusted, per_tick.losses
        tick_requests, tick_latency = per_tick.requests, per_tick.latency
        for c in rows:
            # one unpacking, not an attribute read per field (an assert at the top pins it)
            (key, side, raw_value, source_index, flags, by_class, heads, rx_bytes, tx_bytes,
             buckets, latency_sum_ns, opened, closed, _duration, losses) = c
            identity = resolve(key, raw_value, source_index, flags, side)
            tenant = identity.tenant
            ended = sum(by_class)
            trusted = identity.trust is trusted_level and (heads or ended)
            if trusted:
                tick_trusted.add(tenant)  # either side: the trusted source is upstream
            if losses:
                tick_losses[tenant] = tick_losses.get(tenant, 0) + losses
            has_latency = len(buckets) == n_buckets and (latency_sum_ns or any(buckets))
            if side is server:
                if ended:
                    tick_requests[tenant] = tick_requests.get(tenant, 0) + ended
                if has_latency:
                    lat = tick_latency.get(tenant)  # the row's own tuple when it is the first
                    tick_latency[tenant] = buckets if lat is None \
                        else list(map(add, lat, buckets))
            reason = identity.rejected_reason
            if reason and heads:
                rejected[reason] = rejected.get(reason, 0) + heads
            pair = (tenant, side)
            totals = all_totals.get(pair)
            if totals is None:  # as _totals_of
                totals = all_totals[pair] = _Totals(n_buckets)
            dirty.add(pair)
            if opened or closed:
                self._ledger(c, tenant, totals)
            if trusted:
                totals.trusted = True
            if len(by_class) == n_classes:
                if ended:
                    totals.requests_by_class = list(map(add, totals.requests_by_class, by_class))
            else:
                self._warn_shape("requests_by_class", len(by_class), n_classes)
            totals.rx_bytes += rx_bytes
            totals.tx_bytes += tx_bytes
            if has_latency:
                totals.latency_buckets = list(map(add, totals.latency_buckets, buckets))
                totals.latency_sum_ns += latency_sum_ns
            elif len(buckets) != n_buckets:
                self._warn_shape("latency_buckets", len(buckets), n_buckets)

    def _ledger(self, c: IdentityCounts, tenant: str, tenant_totals: _Totals) -> None:
        """Count c's opens and closes under the tenant its key's connections were opened
        under (``tenant`` for a key with none open; ``tenant_totals`` are (tenant, c.side)'s,
        already marked for the snapshot).  A close without an open (a connection that
        predates a restart of the ledger) counts as closed, not below 0."""
        entry = self._connections.get((c.key, c.side))
        if entry is None:
            entry = [tenant, 0]
        label = entry[0]
        opened, closed = c.connections_opened, c.connections_closed
        totals = tenant_totals if label == tenant else self._totals_of(label, c.side)
        totals.connections_opened += opened
        totals.connections_closed += closed
        totals.connections_duration_ns += c.connections_duration_ns
        open_now = max(0, entry[1] + opened - closed)
        totals.connections_active = max(0, totals.connections_active + open_now - entry[1])
        if open_now:
            entry[1] = open_now
            self._connections[(c.key, c.side)] = entry
        else:
            self._connections.pop((c.key, c.side), None)

    def _warn_shape(self, what: str, got: int, want: int) -> None:
        # A mismatch means kernel and user space disagree on the ABI: say it once, skip the field.
        if not self._shape_warned:
            self._shape_warned = True
            log.warning("kernel sent %d %s, expected %d; ignoring them", got, what, want)

    def _row(self, tenant: str, side: Side, t: _Totals) -> TenantSideStats:
        return TenantSideStats(
            tenant=tenant,
            side=side,
            trusted=t.trusted,
            requests_by_class=MappingProxyType(dict(zip(STATUS_CLASSES, t.requests_by_class))),
            rx_bytes=t.rx_bytes,
            tx_bytes=t.tx_bytes,
            latency_buckets=_cumulative(t.latency_buckets),
            latency_sum_seconds=t.latency_sum_ns / NS_PER_SECOND,
            connections_opened=t.connections_opened,
            connections_active=t.connections_active,
            cpu_seconds=t.cpu_ns / NS_PER_SECOND,
            connections_closed=t.connections_closed,
            connection_seconds=t.connections_duration_ns / NS_PER_SECOND,
        )

    def _build_snapshot(self) -> Snapshot:
        rows = self._rows
        if self._dirty or not rows:
            order = self._order  # sorted by (tenant, side): Side compares as its value
            for key in self._dirty:
                t = self._totals.get(key)
                if t is None:
                    if rows.pop(key, None) is not None:
                        order.remove(key)
                else:
                    if key not in rows:
                        bisect.insort(order, key)  # a few new pairs a tick, not a full sort
                    rows[key] = self._row(key[0], key[1], t)
            self._dirty.clear()
            self._tenants = tuple(rows[k] for k in order)
        tenants = self._tenants  # a tick that touched no row: the same tuple (40k tenants: 40 ms)
        return Snapshot(
            tenants=tenants,
            latency_bounds_seconds=self._bounds,
            identity_rejected=MappingProxyType(dict(self._identity_rejected)),
            events_lost=MappingProxyType(dict(self._events_lost)),
            probes=MappingProxyType(dict(self._probes)),
            tables=MappingProxyType(dict(self._tables)),
            targets=self._targets,
            ticks=self._ticks,
            ready=False,
            taken_at_unix=self._applied_at,
            runq_bounds_seconds=self._runq[0],
            runq_buckets=_cumulative(self._runq[1]) if self._runq[1] else (),
            runq_sum_seconds=self._runq[2] / NS_PER_SECOND,
            psi_some_avg10=self._psi,
            backends=MappingProxyType(dict(self._backends)),
        )
