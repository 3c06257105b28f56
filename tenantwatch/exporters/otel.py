"""OpenTelemetry exporter: the latest Snapshot as OTLP/HTTP (protobuf) metrics.

Takes: a callable returning the latest ``Snapshot`` (or None before the first tick), an optional
endpoint, an export interval and extra resource attributes.  Gives: a background
``PeriodicExportingMetricReader`` (opentelemetry-sdk) that reads the Snapshot through observable
instruments and pushes it with ``OTLPMetricExporter`` (HTTP/protobuf).

Names, units, descriptions and attribute names come from the metric catalog (catalog.py), as the
Prometheus exporter's do (exporters/prometheus.py); the mapping table is in
docs/opentelemetry.md.  The standard ``OTEL_*`` variables win over the arguments:
``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT`` over ``endpoint``,
``OTEL_METRIC_EXPORT_INTERVAL`` over ``interval_seconds``, ``OTEL_SERVICE_NAME`` /
``OTEL_RESOURCE_ATTRIBUTES`` over the default and given resource attributes.

Nothing runs before ``start()``: no thread, no socket.  Export failures (collector down, bad
answers, a failing snapshot getter) are logged, never raised into the caller.  The SDK needs the
``otel`` extra (``pip install 'tenantwatch[otel]'``).
"""

from __future__ import annotations

import inspect
import logging
import os
import platform
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Callable

from prometheus_client.registry import Collector

from tenantwatch import __version__
from tenantwatch.aggregation.records import Snapshot
from tenantwatch.exporters import catalog
from tenantwatch.exporters.catalog import MetricSpec
from tenantwatch.exporters.otel_points import bridged_metrics, histogram_metrics
from tenantwatch.kernel.records import STATUS_CLASSES, Side

try:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.sdk.metrics import (
        Counter,
        Histogram,
        MeterProvider,
        ObservableCounter,
        ObservableGauge,
        ObservableUpDownCounter,
        UpDownCounter,
    )
    from opentelemetry.sdk.metrics.export import (
        AggregationTemporality,
        MetricExporter,
        MetricsData,
        PeriodicExportingMetricReader,
        ResourceMetrics,
        ScopeMetrics,
    )
    from opentelemetry.sdk.metrics.view import View
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
except ImportError as e:  # the optional extra is not installed
    _IMPORT_ERROR: ImportError | None = e
else:
    _IMPORT_ERROR = None

log = logging.getLogger(__name__)

METER_NAME = "tenantwatch"
PREFIX = METER_NAME + "."  # of every instrument name (catalog.py)
METRICS_PATH = "/v1/metrics"

# Every series is bounded upstream (tenancy.max_tenants, at most 100000, plus reserved labels);
# the SDK's default of 2000 attribute sets per instrument would fold real tenants into
# otel.metric.overflow, so the limit is raised above anything the daemon can produce.
CARDINALITY_LIMIT = 1_000_000
# Tenants the SDK still holds state for although they left the Snapshot (it never forgets an
# attribute set of a cumulative instrument); past this many the MeterProvider is rebuilt.
DEFAULT_MAX_STALE_TENANTS = 1000

ENV_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
ENV_METRICS_ENDPOINT = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
ENV_INTERVAL = "OTEL_METRIC_EXPORT_INTERVAL"
ENV_SDK_DISABLED = "OTEL_SDK_DISABLED"
ENV_METRICS_EXPORTER = "OTEL_METRICS_EXPORTER"
ENV_TEMPORALITY = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"
ENV_PROTOCOLS = ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")

def otel_disabled(env: Mapping[str, str] | None = None) -> bool:
    """True when the standard variables switch metrics export off (OTEL_SDK_DISABLED=true or
    OTEL_METRICS_EXPORTER=none)."""
    env = os.environ if env is None else env
    if env.get(ENV_SDK_DISABLED, "").strip().lower() == "true":
        return True
    return env.get(ENV_METRICS_EXPORTER, "").strip().lower() == "none"


def otel_requested(endpoint: str | None = None, env: Mapping[str, str] | None = None) -> bool:
    """Whether the daemon should build an OtelMetricsExporter at all: a configured endpoint or
    one of the OTLP endpoint variables, unless OTEL_SDK_DISABLED / OTEL_METRICS_EXPORTER=none."""
    env = os.environ if env is None else env
    if otel_disabled(env):
        return False
    return bool(endpoint or env.get(ENV_ENDPOINT) or env.get(ENV_METRICS_ENDPOINT))


def metrics_url(endpoint: str) -> str:
    """A base URL (like OTEL_EXPORTER_OTLP_ENDPOINT) -> the /v1/metrics URL; a URL that already
    ends in /v1/metrics is kept."""
    url = endpoint.strip()
    if url.rstrip("/").endswith(METRICS_PATH):
        return url.rstrip("/")
    return url.rstrip("/") + METRICS_PATH


class OtelMetricsExporter:
    """Pushes the latest Snapshot over OTLP/HTTP every ``interval_seconds`` once started."""

    def __init__(
        self,
        get_snapshot: Callable[[], Snapshot | None],
        *,
        endpoint: str | None = None,
        interval_seconds: float = 10.0,
        resource_attributes: Mapping[str, str] | None = None,
        max_stale_tenants: int = DEFAULT_MAX_STALE_TENANTS,
        collectors: Sequence[Collector] = (),
    ) -> None:
        if _IMPORT_ERROR is not None:
            raise ImportError(
                "OpenTelemetry export needs opentelemetry-sdk and "
                "opentelemetry-exporter-otlp-proto-http: pip install 'tenantwatch[otel]' "
                f"({_IMPORT_ERROR})"
            ) from _IMPORT_ERROR
        if not interval_seconds > 0:
            raise ValueError(f"interval_seconds must be > 0, got {interval_seconds!r}")
        self._get_snapshot = get_snapshot
        # the other stages' Prometheus collectors, bridged into each export (otel_points.py)
        self._collectors = tuple(collectors)
        self._start_ns = time.time_ns()  # start of every cumulative point
        self._endpoint = endpoint
        self._interval_seconds = float(interval_seconds)
        self._resource_attributes = dict(resource_attributes or {})
        self._max_stale = max(0, int(max_stale_tenants))
        self._lock = threading.Lock()  # _provider, _closed, _started
        self._provider: Any = None  # MeterProvider once started
        self._started = False
        self._closed = False
        self._seen_lock = threading.Lock()
        self._seen: set[str] = set()  # tenants observed since the provider was built
        self._recycling = False
        self.recycles = 0  # MeterProviders rebuilt to drop stale tenants (for tests and logs)
        self._snapshot_failing = False

    # ------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        with self._lock:
            return self._provider is not None

    def start(self) -> bool:
        """Build the MeterProvider and its export thread.  False (logged) when the SDK refused
        the setup or the OTEL_* variables disable export; never raises for export problems."""
        with self._lock:
            if self._started or self._closed:
                return self._provider is not None
            self._started = True
            if otel_disabled():
                log.info("OpenTelemetry metrics disabled by %s / %s", ENV_SDK_DISABLED,
                         ENV_METRICS_EXPORTER)
                return False
            try:
                self._provider = self._build_provider()
            except Exception:
                log.exception("cannot start the OpenTelemetry metrics exporter; continuing "
                              "without it")
                return False
            return True

    def shutdown(self, timeout_seconds: float = 5.0) -> None:
        """Final collect and export, then stop the thread; idempotent, never raises.  Waits at
        most about ``timeout_seconds`` (also when the collector is down)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            provider, self._provider = self._provider, None
        if provider is None:
            return
        try:
            provider.shutdown(timeout_millis=max(0.0, timeout_seconds) * 1000.0)
        except Exception:
            log.exception("OpenTelemetry metrics exporter shutdown failed")

    # ------------------------------------------------------------------ setup

    def _exporter_endpoint(self) -> str | None:
        """The URL to give OTLPMetricExporter: None when a variable sets it (the SDK reads it)."""
        if os.environ.get(ENV_METRICS_ENDPOINT) or os.environ.get(ENV_ENDPOINT):
            return None
        return metrics_url(self._endpoint) if self._endpoint else None

    def _interval_millis(self) -> float | None:
        """None when OTEL_METRIC_EXPORT_INTERVAL is set (the SDK reads it)."""
        raw = os.environ.get(ENV_INTERVAL)
        if raw:
            try:
                if float(raw) > 0:
                    return None
            except ValueError:
                pass
            log.warning("ignoring %s=%r (not a positive number of milliseconds)", ENV_INTERVAL,
                        raw)
        return self._interval_seconds * 1000.0

    def resource(self) -> Any:
        """service.name=tenantwatch, service.version, host.name, os.*; then the given
        attributes; OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME win over both."""
        attrs: dict[str, str] = {
            "service.name": "tenantwatch",
            "service.version": __version__,
            "host.name": socket.gethostname(),
            "os.type": platform.system().lower(),
            "os.version": platform.release(),
        }
        attrs.update(self._resource_attributes)
        return Resource.create(attrs).merge(OTELResourceDetector().detect())

    def _build_provider(self) -> Any:
        for name in ENV_PROTOCOLS:
            proto = os.environ.get(name, "").strip().lower()
            if proto and proto != "http/protobuf":
                log.warning("%s=%s: tenantwatch only speaks OTLP over http/protobuf", name, proto)
                break
        if os.environ.get(ENV_TEMPORALITY, "").strip().lower() == "delta":
            log.warning("%s=delta ignored: tenantwatch exports cumulative sums (its counters "
                        "are totals since start; see docs/opentelemetry.md)", ENV_TEMPORALITY)
        exporter = OTLPMetricExporter(
            endpoint=self._exporter_endpoint(),
            preferred_temporality=dict.fromkeys(
                (Counter, UpDownCounter, Histogram, ObservableCounter, ObservableUpDownCounter,
                 ObservableGauge),
                AggregationTemporality.CUMULATIVE,
            ),
        )
        resource = self.resource()
        reader, views = _reader(_WithPoints(exporter, resource, self._points),
                                self._interval_millis())
        provider = MeterProvider(resource=resource, metric_readers=[reader], views=views)
        self._register(provider.get_meter(METER_NAME, __version__))
        log.info("OpenTelemetry metrics: OTLP/HTTP to %s every %.3g s",
                 getattr(exporter, "_endpoint", "?"),
                 getattr(reader, "_export_interval_millis", 0.0) / 1000.0)
        return provider

    def _register(self, meter: Any) -> None:
        """One observable instrument per Snapshot family of _OBSERVED, named, described and
        typed as the catalog says (a counter: an observable counter, a gauge: a gauge)."""
        for spec, rows in _OBSERVED:
            create = (meter.create_observable_counter if spec.kind == "counter"
                      else meter.create_observable_gauge)
            create(spec.otel_name, callbacks=[self._callback(_observations(spec, rows))],
                   unit=spec.unit, description=spec.otel_description)

    # ------------------------------------------------------------------ collection

    def _points(self) -> list[Any]:
        """The histograms and bridged families of this export (otel_points.py); nothing when
        the snapshot cannot be read, and a failing collector costs only its own families."""
        snap = self._snapshot()
        if snap is None:
            return []
        now = time.time_ns()
        out = []
        try:
            out += histogram_metrics(snap, self._start_ns, now)
        except Exception:
            log.exception("cannot build the OpenTelemetry histograms")
        for collector in self._collectors:
            try:
                out += bridged_metrics([collector], self._start_ns, now)
            except Exception:
                log.exception("cannot bridge %s to OpenTelemetry", type(collector).__name__)
        return out

    def _callback(self, fn: Callable[[Snapshot], Iterable[Observation]]
                  ) -> Callable[[CallbackOptions], Iterator[Observation]]:
        def callback(_options: CallbackOptions) -> Iterator[Observation]:
            snap = self._snapshot()
            if snap is None:
                return iter(())
            try:
                return iter(list(fn(snap)))
            except Exception:
                log.exception("cannot build OpenTelemetry observations")
                return iter(())
        return callback

    def _snapshot(self) -> Snapshot | None:
        try:
            snap = self._get_snapshot()
        except Exception:
            if not self._snapshot_failing:  # once per failure streak, not once per instrument
                log.exception("cannot read the latest snapshot; exporting nothing this time")
            self._snapshot_failing = True
            return None
        if self._snapshot_failing:
            log.info("snapshot readable again; OpenTelemetry export resumed")
            self._snapshot_failing = False
        if snap is not None:
            self._note_tenants(snap)
        return snap

    def _note_tenants(self, snap: Snapshot) -> None:
        """Track tenants the SDK holds state for; rebuild the provider when too many are gone."""
        live = {t.tenant for t in snap.tenants}
        with self._seen_lock:
            self._seen |= live
            stale = len(self._seen) - len(live)
            if self._recycling or stale <= self._max_stale:
                return
            self._recycling = True
        log.info("OpenTelemetry: %d tenants left since the exporter was (re)built; rebuilding it "
                 "to free their series", stale)
        threading.Thread(target=self._recycle, name="tenantwatch-otel-recycle",
                         daemon=True).start()

    def _recycle(self) -> None:
        """Final export from the old provider, then a fresh one (not from its own thread)."""
        try:
            with self._lock:
                if self._closed or self._provider is None:
                    return
                old = self._provider
                try:
                    old.shutdown(timeout_millis=5000)
                except Exception:
                    log.exception("OpenTelemetry: shutting down the old provider failed")
                with self._seen_lock:
                    self._seen = set()
                try:
                    self._provider = self._build_provider()
                except Exception:
                    self._provider = None
                    log.exception("OpenTelemetry: cannot rebuild the exporter; export stopped")
                    return
                self.recycles += 1
        finally:
            with self._seen_lock:
                self._recycling = False


class _WithPoints(MetricExporter if _IMPORT_ERROR is None else object):  # type: ignore[misc]
    """The OTLP exporter, with the points the SDK cannot observe added to each export under the
    tenantwatch scope."""

    def __init__(self, inner: Any, resource: Any, points: Callable[[], list[Any]]) -> None:
        super().__init__(preferred_temporality=inner._preferred_temporality,
                         preferred_aggregation=inner._preferred_aggregation)
        self._inner = inner
        self._resource = resource
        self._points_fn = points

    def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> Any:
        extra = self._points_fn()
        if extra:
            metrics_data = _with_points(metrics_data, self._resource, extra)
        return self._inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)


def _with_points(data: Any, resource: Any, extra: list[Any]) -> Any:
    """`data` with `extra` metrics in the tenantwatch scope of its first resource."""
    scope = InstrumentationScope(METER_NAME, __version__)
    rms = list(data.resource_metrics) or [ResourceMetrics(resource=resource, scope_metrics=[],
                                                          schema_url="")]
    first = rms[0]
    scopes = list(first.scope_metrics)
    for i, sm in enumerate(scopes):
        if sm.scope.name == METER_NAME:
            scopes[i] = ScopeMetrics(scope=sm.scope, metrics=[*sm.metrics, *extra],
                                     schema_url=sm.schema_url)
            break
    else:
        scopes.append(ScopeMetrics(scope=scope, metrics=extra, schema_url=""))
    rms[0] = ResourceMetrics(resource=first.resource, scope_metrics=scopes,
                             schema_url=first.schema_url)
    return MetricsData(resource_metrics=rms)


def _reader(exporter: Any, interval_millis: float | None) -> tuple[Any, list[Any]]:
    """A PeriodicExportingMetricReader with CARDINALITY_LIMIT, whichever way this SDK version
    takes it (reader argument, else a View); older SDKs have no limit at all."""
    params = inspect.signature(PeriodicExportingMetricReader.__init__).parameters
    if "cardinality_limits" in params:
        limits = dict.fromkeys((ObservableCounter, ObservableGauge), CARDINALITY_LIMIT)
        return PeriodicExportingMetricReader(exporter, export_interval_millis=interval_millis,
                                             cardinality_limits=limits), []
    views: list[Any] = []
    if "aggregation_cardinality_limit" in inspect.signature(View.__init__).parameters:
        views = [View(instrument_name=PREFIX + "*",
                      aggregation_cardinality_limit=CARDINALITY_LIMIT)]
    else:
        log.info("this opentelemetry-sdk cannot raise its cardinality limit; if it enforces one, "
                 "series past it are exported as otel.metric.overflow=true (upgrade the SDK)")
    return PeriodicExportingMetricReader(exporter, export_interval_millis=interval_millis), views


# ---------------------------------------------------------------- Snapshot -> observations
# Each function gives a family's (value, label values) from the Snapshot, the label values in the
# order of the catalog's labels; _observations() names them.

Rows = Callable[[Snapshot], Iterable[tuple[float, tuple[str, ...]]]]


def _observations(spec: MetricSpec, rows: Rows) -> Callable[[Snapshot], list[Any]]:
    labels = spec.labels

    def fn(snap: Snapshot) -> list[Any]:
        return [Observation(value, dict(zip(labels, values)) if labels else None)
                for value, values in rows(snap)]
    return fn


def _requests(side: Side) -> Rows:
    def fn(snap: Snapshot) -> Iterator[tuple[float, tuple[str, ...]]]:
        for s in snap.tenants:
            if s.side is side:
                for status_class in STATUS_CLASSES:
                    yield s.requests_by_class.get(status_class, 0), (s.tenant, status_class)
    return fn


def _server_bytes(rx: bool) -> Rows:
    def fn(snap: Snapshot) -> Iterator[tuple[float, tuple[str, ...]]]:
        for s in snap.tenants:
            if s.side is Side.SERVER:
                yield s.rx_bytes if rx else s.tx_bytes, (s.tenant,)
    return fn


def _per_tenant_side(field: str) -> Rows:
    """One point per (tenant, side): the TenantSideStats field `field`."""
    def fn(snap: Snapshot) -> Iterator[tuple[float, tuple[str, ...]]]:
        for s in snap.tenants:
            yield getattr(s, field), (s.tenant, s.side.value)
    return fn


def _cpu(snap: Snapshot) -> Iterator[tuple[float, tuple[str, ...]]]:
    by_tenant: dict[str, float] = {}
    for s in snap.tenants:
        by_tenant[s.tenant] = by_tenant.get(s.tenant, 0.0) + s.cpu_seconds
    for tenant, seconds in sorted(by_tenant.items()):
        yield float(seconds), (tenant,)


def _by_reason(field: str) -> Rows:
    def fn(snap: Snapshot) -> Iterator[tuple[float, tuple[str, ...]]]:
        for reason, n in sorted(getattr(snap, field).items()):
            yield n, (reason,)
    return fn


def _backends(field: str) -> Rows:
    def fn(snap: Snapshot) -> Iterator[tuple[float, tuple[str, ...]]]:
        for tenant, usage in sorted(snap.backends.items()):
            yield float(getattr(usage, field)), (tenant,)
    return fn


def _tables(index: int) -> Rows:
    def fn(snap: Snapshot) -> Iterator[tuple[float, tuple[str, ...]]]:
        for table, pair in sorted(snap.tables.items()):
            yield pair[index], (table,)
    return fn


def _pressure(snap: Snapshot) -> list[tuple[float, tuple[str, ...]]]:
    if snap.psi_some_avg10 is None:
        return []
    return [(snap.psi_some_avg10 / 100.0, ())]


def _probes(snap: Snapshot) -> Iterator[tuple[float, tuple[str, ...]]]:
    for probe, attached in sorted(snap.probes.items()):
        yield 1 if attached else 0, (probe,)


# The Snapshot families the SDK observes, in the order they are registered (the histograms and
# the other stages' families are added to each export by otel_points.py).
_OBSERVED: tuple[tuple[MetricSpec, Rows], ...] = (
    (catalog.HTTP_SERVER_REQUESTS, _requests(Side.SERVER)),
    (catalog.HTTP_CLIENT_REQUESTS, _requests(Side.CLIENT)),
    (catalog.HTTP_SERVER_RECEIVED_BYTES, _server_bytes(rx=True)),
    (catalog.HTTP_SERVER_SENT_BYTES, _server_bytes(rx=False)),
    (catalog.CONNECTIONS_ACTIVE, _per_tenant_side("connections_active")),
    (catalog.CONNECTIONS_OPENED, _per_tenant_side("connections_opened")),
    # the connection-duration summary, as two counters
    (catalog.CONNECTION_DURATION_SUM, _per_tenant_side("connection_seconds")),
    (catalog.CONNECTION_DURATION_COUNT, _per_tenant_side("connections_closed")),
    (catalog.CPU_SECONDS, _cpu),
    (catalog.IDENTITY_REJECTED, _by_reason("identity_rejected")),
    (catalog.EVENTS_LOST, _by_reason("events_lost")),
    (catalog.BACKEND_CPU_SECONDS, _backends("usage_seconds")),
    (catalog.BACKEND_CPU_THROTTLED_SECONDS, _backends("throttled_seconds")),
    (catalog.KERNEL_TABLE_ENTRIES, _tables(0)),
    (catalog.KERNEL_TABLE_CAPACITY, _tables(1)),
    (catalog.NODE_CPU_PRESSURE, _pressure),
    (catalog.PROBE_ATTACHED, _probes),
    (catalog.TARGETS, lambda snap: [(snap.targets, ())]),
    (catalog.TICKS, lambda snap: [(snap.ticks, ())]),
)
