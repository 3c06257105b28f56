"""OTLP points the OpenTelemetry SDK cannot observe, added to each export (exporters/otel.py).

- **Histograms with their buckets.** The SDK has no observable histogram, and the kernel has
  already counted each request into its bucket: the per-tenant latency histograms and the
  run-queue delay go out as OTLP cumulative histograms built from the Snapshot, with the same
  bounds as /metrics.
- **The other stages' families** (detection, enforcement, power, registry, isolation): their
  Prometheus collectors (exporters/*.py) are read and each family becomes an OTLP sum (counter)
  or gauge, so that the two outputs cannot drift apart.

Names, units and descriptions are the catalog's (catalog.py); they translate exactly to the
/metrics names under the Prometheus translation of OTLP (`.` to `_`, the unit appended as a word,
`_total` on monotonic sums).  A family the catalog does not know (none today: test_catalog.py)
would be named by `otel_name()`, which takes the family's unit word off its name and gives it
back as a UCUM unit.  docs/opentelemetry.md has the table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prometheus_client.registry import Collector

from tenantwatch.aggregation.records import Snapshot
from tenantwatch.exporters import catalog
from tenantwatch.exporters.catalog import MetricSpec
from tenantwatch.kernel.records import Side

try:
    from opentelemetry.sdk.metrics.export import (
        AggregationTemporality,
        Gauge,
        Histogram,
        HistogramDataPoint,
        Metric,
        NumberDataPoint,
        Sum,
    )
except ImportError:  # the optional extra is not installed: exporters/otel.py says so
    pass

# A family name's last word -> the UCUM unit the Prometheus translation turns back into it.
UNIT_WORDS: Mapping[str, str] = {"seconds": "s", "bytes": "By", "ratio": "1", "celsius": "Cel",
                                 "watts": "W", "joules": "J"}
HISTOGRAMS: Mapping[Side, MetricSpec] = {Side.SERVER: catalog.HTTP_SERVER_REQUEST_DURATION,
                                         Side.CLIENT: catalog.HTTP_CLIENT_REQUEST_DURATION}
RUNQ = catalog.RUNQUEUE_DELAY


def otel_name(family: str) -> tuple[str, str]:
    """(OTel name, unit) for a Prometheus family name (without `_total`):
    prefix_backend_cpu_seconds -> (prefix.backend.cpu, s)."""
    head, _, last = family.rpartition("_")
    unit = UNIT_WORDS.get(last, "")
    base = head if unit else family
    return base.replace("_", "."), unit


def histogram_metrics(snap: Snapshot, start_ns: int, now_ns: int) -> list[Any]:
    """The latency histograms per (tenant, side) and the run-queue delay histogram."""
    out = []
    bounds = list(snap.latency_bounds_seconds)
    for side, spec in HISTOGRAMS.items():
        (tenant,) = spec.labels
        points = [_histogram_point({tenant: s.tenant}, s.latency_buckets, bounds,
                                   s.latency_sum_seconds, start_ns, now_ns)
                  for s in snap.tenants
                  if s.side is side and len(s.latency_buckets) == len(bounds) + 1]
        if points:
            out.append(_histogram(spec, points))
    rq_bounds = list(snap.runq_bounds_seconds)
    if snap.runq_buckets and len(snap.runq_buckets) == len(rq_bounds) + 1:
        out.append(_histogram(RUNQ, [
            _histogram_point({}, snap.runq_buckets, rq_bounds, snap.runq_sum_seconds, start_ns,
                             now_ns)]))
    return out


def bridged_metrics(collectors: Iterable[Collector], start_ns: int, now_ns: int) -> list[Any]:
    """Every counter and gauge family the collectors give, as OTLP sums and gauges named as the
    catalog says.  Left out: families without samples (/metrics shows no series for them) and
    those the catalog exports on /metrics only (no otel_name)."""
    out = []
    for collector in collectors:
        for family in collector.collect():
            spec = catalog.BY_NAME.get(family.name)
            if spec is None:
                name, unit = otel_name(family.name)
                description = family.documentation
            elif spec.otel_name is None:
                continue
            else:
                name, unit, description = spec.otel_name, spec.unit, spec.otel_description
            if family.type == "counter":
                points = [NumberDataPoint(attributes=dict(s.labels), start_time_unix_nano=start_ns,
                                          time_unix_nano=now_ns, value=s.value)
                          for s in family.samples if s.name.endswith("_total")]
                data: Any = Sum(data_points=points, is_monotonic=True,
                                aggregation_temporality=AggregationTemporality.CUMULATIVE)
            elif family.type == "gauge":
                points = [NumberDataPoint(attributes=dict(s.labels), start_time_unix_nano=0,
                                          time_unix_nano=now_ns, value=s.value)
                          for s in family.samples]
                data = Gauge(data_points=points)
            else:  # no other kind is bridged; histograms come from the Snapshot above
                continue
            if points:
                out.append(Metric(name=name, description=description, unit=unit, data=data))
    return out


def _histogram_point(attributes: Mapping[str, str], cumulative: Sequence[int],
                     bounds: list[float], total: float, start_ns: int, now_ns: int) -> Any:
    """OTLP wants a count per bucket; the Snapshot has them cumulative (last: +Inf)."""
    per_bucket = [cumulative[0]] + [b - a for a, b in zip(cumulative, cumulative[1:])]
    return HistogramDataPoint(attributes=dict(attributes), start_time_unix_nano=start_ns,
                              time_unix_nano=now_ns, count=cumulative[-1], sum=float(total),
                              bucket_counts=per_bucket, explicit_bounds=bounds,
                              min=None, max=None)


def _histogram(spec: MetricSpec, points: list[Any]) -> Any:
    return Metric(name=spec.otel_name, description=spec.otel_description, unit=spec.unit,
                  data=Histogram(data_points=points,
                                 aggregation_temporality=AggregationTemporality.CUMULATIVE))
