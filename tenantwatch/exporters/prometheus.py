"""Prometheus exporter: a custom collector that turns the latest Snapshot into metric families.

Takes: a callable returning the latest ``Snapshot`` (or None before the first tick), the build
labels and, optionally, a callable returning the JWT verifier counts by result.  Gives: fresh
metric families at every scrape, named as the catalog says (catalog.py; docs/metrics.md).

The client library's labelled metrics keep every label set forever; building the per-tenant
families here at scrape time means a tenant the aggregator expired disappears from /metrics.
A failed snapshot read gives the build-info family alone, never an exception in the scrape.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping
from typing import Callable

from prometheus_client import exposition
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from tenantwatch.aggregation.records import Snapshot, TenantSideStats
from tenantwatch.exporters import catalog, tenant_text
from tenantwatch.exporters.catalog import MetricSpec
from tenantwatch.kernel.records import STATUS_CLASSES, Side

log = logging.getLogger(__name__)

_REQUESTS: Mapping[Side, MetricSpec] = {Side.SERVER: catalog.HTTP_SERVER_REQUESTS,
                                         Side.CLIENT: catalog.HTTP_CLIENT_REQUESTS}
_DURATIONS: Mapping[Side, MetricSpec] = {Side.SERVER: catalog.HTTP_SERVER_REQUEST_DURATION,
                                          Side.CLIENT: catalog.HTTP_CLIENT_REQUEST_DURATION}


class TenantCollector(Collector):
    """Builds every tenantwatch metric family from the latest Snapshot at each scrape."""

    def __init__(
        self,
        get_snapshot: Callable[[], Snapshot | None],
        build_info: Mapping[str, str],
        jwt_counts: Callable[[], Mapping[str, int]] | None = None,
        histogram_sides: tuple[str, ...] = ("server", "client"),
    ) -> None:
        self._get_snapshot = get_snapshot
        self._jwt_counts = jwt_counts  # identity.jwt_verifier.total_counts; None: no verifier
        # sides with per-tenant latency histograms (config metrics.histograms); the families of
        # the others stay, without samples
        self._histogram_sides = frozenset(Side(s) for s in histogram_sides)
        self._build_info: tuple[tuple[str, str], ...] = tuple(
            (str(k), str(v)) for k, v in build_info.items()
        )

    def describe(self) -> list[Metric]:
        """Family names without samples, so registration does not need a snapshot."""
        return self._families(None)

    def collect(self) -> Iterator[Metric]:
        try:
            snapshot = self._get_snapshot()
        except Exception:  # a scrape must not fail because the pipeline did
            log.exception("cannot read the latest snapshot; exporting build_info only")
            snapshot = None
        if snapshot is None:
            yield self._build_info_family()
            return
        try:
            families = self._families(snapshot)
        except Exception:
            log.exception("cannot build metric families; exporting build_info only")
            families = [self._build_info_family()]
        yield from families

    def render(self, openmetrics: bool = False) -> str:
        """The same families as collect() and as the library would encode them (plain text, or
        OpenMetrics without its final "# EOF"), the per-tenant ones written by tenant_text:
        ~10x faster with 10k tenants."""
        return "".join(self.render_parts(openmetrics))

    def render_parts(self, openmetrics: bool = False) -> Iterator[str]:
        """render() in parts (a family's header, then its samples a few hundred rows at a
        time), for a caller that encodes and drops each part: a scrape of 10k tenants then holds
        its body once (as bytes, or compressed), not two or three times over."""
        try:
            snapshot = self._get_snapshot()
        except Exception:  # a scrape must not fail because the pipeline did
            log.exception("cannot read the latest snapshot; exporting build_info only")
            snapshot = None
        if snapshot is None:
            yield _encode(self._build_info_family(), openmetrics)
            return
        try:
            bounds = [floatToGoString(b) for b in snapshot.latency_bounds_seconds] + ["+Inf"]
            # every family but the per-tenant ones from the library, in collect()'s order
            families = self._families(dataclasses.replace(snapshot, tenants=()))
            parts = []
            for f in families:
                if f.name in tenant_text.FAMILIES:
                    parts.append((f, tenant_text.header(f.name, f.type, f.documentation,
                                                        openmetrics)))
                else:
                    parts.append((f, _encode(f, openmetrics)))
        except Exception:
            log.exception("cannot build metric families; exporting build_info only")
            yield _encode(self._build_info_family(), openmetrics)
            return
        for f, text in parts:
            yield text
            if f.name in tenant_text.FAMILIES:
                try:  # in pieces of rows: each is encoded and dropped by the caller
                    yield from tenant_text.family_pieces(f.name, snapshot.tenants, bounds,
                                                         self._histogram_sides)
                except Exception:  # this family ends here; the others are still worth a scrape
                    log.exception("cannot write the samples of %s", f.name)

    def _build_info_family(self) -> Metric:
        # the label names are the caller's (the daemon's: catalog.BUILD_INFO.labels)
        family = catalog.family(catalog.BUILD_INFO, labels=[k for k, _ in self._build_info])
        family.add_metric([v for _, v in self._build_info], 1)
        return family

    def _families(self, snap: Snapshot | None) -> list[Metric]:
        """All families; with ``snap`` None, the same families without samples."""
        requests = {side: catalog.family(spec) for side, spec in _REQUESTS.items()}
        durations = {side: catalog.family(spec) for side, spec in _DURATIONS.items()}
        received = catalog.family(catalog.HTTP_SERVER_RECEIVED_BYTES)
        sent = catalog.family(catalog.HTTP_SERVER_SENT_BYTES)
        active = catalog.family(catalog.CONNECTIONS_ACTIVE)
        opened = catalog.family(catalog.CONNECTIONS_OPENED)
        conn_duration = catalog.family(catalog.CONNECTION_DURATION)
        rejected = catalog.family(catalog.IDENTITY_REJECTED)
        jwt_verify = catalog.family(catalog.JWT_VERIFY)
        lost = catalog.family(catalog.EVENTS_LOST)
        probes = catalog.family(catalog.PROBE_ATTACHED)
        cpu = catalog.family(catalog.CPU_SECONDS)
        runq = catalog.family(catalog.RUNQUEUE_DELAY)
        pressure = catalog.family(catalog.NODE_CPU_PRESSURE)
        backend_cpu = catalog.family(catalog.BACKEND_CPU_SECONDS)
        backend_throttled = catalog.family(catalog.BACKEND_CPU_THROTTLED_SECONDS)
        targets = catalog.family(catalog.TARGETS)
        table_entries = catalog.family(catalog.KERNEL_TABLE_ENTRIES)
        table_capacity = catalog.family(catalog.KERNEL_TABLE_CAPACITY)
        ticks = catalog.family(catalog.TICKS)

        if snap is not None:
            bounds = [floatToGoString(b) for b in snap.latency_bounds_seconds] + ["+Inf"]
            for stats in snap.tenants:
                self._add_tenant(stats, bounds, requests, durations, received, sent,
                                 self._histogram_sides)
                active.add_metric([stats.tenant, stats.side.value], stats.connections_active)
                opened.add_metric([stats.tenant, stats.side.value], stats.connections_opened)
                conn_duration.add_metric([stats.tenant, stats.side.value],
                                         count_value=stats.connections_closed,
                                         sum_value=stats.connection_seconds)
            for reason, n in sorted(snap.identity_rejected.items()):
                rejected.add_metric([reason], n)
            if self._jwt_counts is not None:
                for result, n in sorted(self._jwt_counts().items()):
                    jwt_verify.add_metric([result], n)
            for reason, n in sorted(snap.events_lost.items()):
                lost.add_metric([reason], n)
            for probe, attached in sorted(snap.probes.items()):
                probes.add_metric([probe], 1 if attached else 0)
            cpu_by_tenant: dict[str, float] = {}
            for stats in snap.tenants:
                cpu_by_tenant[stats.tenant] = cpu_by_tenant.get(stats.tenant, 0.0) + \
                    stats.cpu_seconds
            for tenant, seconds in sorted(cpu_by_tenant.items()):
                cpu.add_metric([tenant], seconds)
            if snap.runq_buckets and len(snap.runq_buckets) == len(snap.runq_bounds_seconds) + 1:
                rq_bounds = [floatToGoString(b) for b in snap.runq_bounds_seconds] + ["+Inf"]
                runq.add_metric([], buckets=list(zip(rq_bounds, snap.runq_buckets)),
                                sum_value=snap.runq_sum_seconds)
            for tenant, usage in sorted(snap.backends.items()):
                backend_cpu.add_metric([tenant], usage.usage_seconds)
                backend_throttled.add_metric([tenant], usage.throttled_seconds)
            if snap.psi_some_avg10 is not None:
                pressure.add_metric([], snap.psi_some_avg10 / 100.0)
            targets.add_metric([], snap.targets)
            ticks.add_metric([], snap.ticks)
            for table, (entries, capacity) in sorted(snap.tables.items()):
                table_entries.add_metric([table], entries)
                table_capacity.add_metric([table], capacity)

        return [
            requests[Side.SERVER],
            durations[Side.SERVER],
            requests[Side.CLIENT],
            durations[Side.CLIENT],
            received,
            sent,
            active,
            opened,
            conn_duration,
            rejected,
            jwt_verify,
            lost,
            cpu,
            runq,
            pressure,
            backend_cpu,
            backend_throttled,
            probes,
            targets,
            ticks,
            table_entries,
            table_capacity,
            self._build_info_family(),
        ]

    @staticmethod
    def _add_tenant(
        stats: TenantSideStats,
        bounds: list[str],
        requests: Mapping[Side, CounterMetricFamily],
        durations: Mapping[Side, HistogramMetricFamily],
        received: CounterMetricFamily,
        sent: CounterMetricFamily,
        histogram_sides: frozenset[Side] = frozenset(Side),
    ) -> None:
        for status_class in STATUS_CLASSES:
            requests[stats.side].add_metric(
                [stats.tenant, status_class], stats.requests_by_class.get(status_class, 0)
            )
        if len(stats.latency_buckets) == len(bounds) and stats.side in histogram_sides:
            durations[stats.side].add_metric(
                [stats.tenant],
                buckets=list(zip(bounds, stats.latency_buckets)),
                sum_value=stats.latency_sum_seconds,
            )
        if stats.side is Side.SERVER:
            received.add_metric([stats.tenant], stats.rx_bytes)
            sent.add_metric([stats.tenant], stats.tx_bytes)


class _One(Collector):
    """One family as a collector, for the library's encoders."""

    def __init__(self, family: Metric) -> None:
        self._family = family

    def collect(self) -> Iterator[Metric]:
        yield self._family


def _encode(family: Metric, openmetrics: bool) -> str:
    """One family as the library encodes it (OpenMetrics without the final "# EOF")."""
    if openmetrics:
        text = om_exposition.generate_latest(_One(family)).decode()
        return text.removesuffix("# EOF\n")
    return exposition.generate_latest(_One(family)).decode()  # type: ignore[arg-type]
