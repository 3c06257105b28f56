"""OtelMetricsExporter against a real local OTLP/HTTP receiver (protobuf decoded).

Names, units, attributes and values must equal the hand-made Snapshot (and mirror the Prometheus
names, docs/opentelemetry.md); OTEL_* variables win over the arguments; shutdown flushes; a dead
collector or a failing snapshot never raises into the caller.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tenantwatch import __version__
from tenantwatch.exporters.otel import (
    OtelMetricsExporter,
    metrics_url,
    otel_requested,
)
from tenantwatch.kernel.records import STATUS_CLASSES
from tests.unit.exporters.otlp_receiver import OtlpReceiver
from tests.unit.exporters.snapshots import (
    ACME_CLIENT,
    ACME_SERVER,
    BOUNDS,
    GLOBEX_SERVER,
    classes,
    full_snapshot,
    make_snapshot,
)

INTERVAL = 0.2
WAIT = 10.0  # bounded wait for an export (normally one interval)

# OTel name -> (unit, data kind, attribute keys); docs/opentelemetry.md has the Prometheus side.
EXPECTED = {
    "tenantwatch.http.server.requests": ("{request}", "sum", {"tenant", "status_class"}),
    "tenantwatch.http.server.request.duration": ("s", "histogram", {"tenant"}),
    "tenantwatch.http.client.requests": ("{request}", "sum", {"tenant", "status_class"}),
    "tenantwatch.http.client.request.duration": ("s", "histogram", {"tenant"}),
    "tenantwatch.http.server.received": ("By", "sum", {"tenant"}),
    "tenantwatch.http.server.sent": ("By", "sum", {"tenant"}),
    "tenantwatch.connections.active": ("{connection}", "gauge", {"tenant", "side"}),
    "tenantwatch.connections.opened": ("{connection}", "sum", {"tenant", "side"}),
    "tenantwatch.connection.duration.sum": ("s", "sum", {"tenant", "side"}),
    "tenantwatch.connection.duration.count": ("{connection}", "sum", {"tenant", "side"}),
    "tenantwatch.cpu": ("s", "sum", {"tenant"}),
    "tenantwatch.identity.rejected": ("{request}", "sum", {"reason"}),
    "tenantwatch.events.lost": ("{event}", "sum", {"reason"}),
    "tenantwatch.runqueue.delay": ("s", "histogram", set()),
    "tenantwatch.backend.cpu": ("s", "sum", {"tenant"}),
    "tenantwatch.backend.cpu.throttled": ("s", "sum", {"tenant"}),
    "tenantwatch.kernel.table.entries": ("{entry}", "gauge", {"table"}),
    "tenantwatch.kernel.table.capacity": ("{entry}", "gauge", {"table"}),
    "tenantwatch.node.cpu.pressure": ("1", "gauge", set()),
    "tenantwatch.probe.attached": ("{probe}", "gauge", {"probe"}),
    "tenantwatch.targets": ("{process}", "gauge", set()),
    "tenantwatch.ticks": ("{tick}", "sum", set()),
}
CUMULATIVE = 2  # opentelemetry.proto.metrics.v1.AggregationTemporality


def key(**attrs: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(attrs.items()))


@pytest.fixture(autouse=True)
def clean_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OTEL_* variables from the developer's shell."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


@pytest.fixture
def exporters() -> Iterator[list[OtelMetricsExporter]]:
    """Exporters made by a test, always shut down (a failing test must not leak threads)."""
    made: list[OtelMetricsExporter] = []
    yield made
    for e in made:
        e.shutdown(timeout_seconds=1)


def make(exporters: list[OtelMetricsExporter], get, **kwargs) -> OtelMetricsExporter:
    kwargs.setdefault("interval_seconds", INTERVAL)
    e = OtelMetricsExporter(get, **kwargs)
    exporters.append(e)
    return e


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "OtelPeriodicExportingMetricReader"]


# ---------------------------------------------------------------------------- content


def test_names_units_attributes_and_values_match_the_snapshot(receiver, exporters):
    snap = full_snapshot()
    e = make(exporters, lambda: snap, endpoint=receiver.url)
    assert e.start() is True
    assert receiver.wait_for(lambda r: EXPECTED.keys() <= r.metric_names(), WAIT), \
        receiver.metric_names()

    metrics = receiver.metrics()
    assert set(metrics) == set(EXPECTED)
    for name, (unit, kind, attr_keys) in EXPECTED.items():
        m = metrics[name]
        assert m.unit == unit, name
        assert m.WhichOneof("data") == kind, name
        assert m.description, name
        if kind == "sum":
            assert m.sum.is_monotonic, name
            assert m.sum.aggregation_temporality == CUMULATIVE, name
        if kind == "histogram":
            assert m.histogram.aggregation_temporality == CUMULATIVE, name
        for p in receiver.points(name):
            assert set(p.attributes) == attr_keys, (name, p.attributes)

    v = receiver.values
    # requests: every status class of every tenant and side, zeros included (as /metrics)
    server = v("tenantwatch.http.server.requests")
    assert len(server) == 2 * len(STATUS_CLASSES)
    for stats in (ACME_SERVER, GLOBEX_SERVER):
        for c in STATUS_CLASSES:
            assert server[key(tenant=stats.tenant, status_class=c)] == \
                stats.requests_by_class[c]
    assert v("tenantwatch.http.client.requests") == {
        key(tenant="acme", status_class=c): ACME_CLIENT.requests_by_class[c]
        for c in STATUS_CLASSES}
    # duration: real histograms, the kernel's buckets per bucket (not cumulative), the bounds
    def hist(name: str) -> dict:
        return {tuple(sorted(p.attributes.items())):
                (p.count, p.sum, p.bucket_counts, p.explicit_bounds)
                for p in receiver.points(name)}
    assert hist("tenantwatch.http.server.request.duration") == {
        key(tenant="acme"): (10, 0.75, (2, 4, 3, 1), BOUNDS),
        key(tenant="globex"): (3, 0.0015, (3, 0, 0, 0), BOUNDS)}
    assert hist("tenantwatch.http.client.request.duration") == {
        key(tenant="acme"): (9, 0.05, (0, 9, 0, 0), BOUNDS)}
    assert hist("tenantwatch.runqueue.delay") == {(): (11, 0.002, (5, 3, 3), (1e-6, 4e-6))}
    assert all(p.start_time_unix_nano and p.start_time_unix_nano <= p.time_unix_nano
               for p in receiver.points("tenantwatch.runqueue.delay"))
    assert v("tenantwatch.backend.cpu") == {key(tenant="acme"): 3.5}
    assert v("tenantwatch.backend.cpu.throttled") == {key(tenant="acme"): 0.25}
    assert v("tenantwatch.kernel.table.entries") == {key(table="conns"): 12,
                                                      key(table="agg0"): 3}
    assert v("tenantwatch.kernel.table.capacity") == {key(table="conns"): 65536,
                                                       key(table="agg0"): 4096}
    # bytes: server side only, as /metrics
    assert v("tenantwatch.http.server.received") == {
        key(tenant="acme"): 1000, key(tenant="globex"): 300}
    assert v("tenantwatch.http.server.sent") == {
        key(tenant="acme"): 20000, key(tenant="globex"): 600}
    assert v("tenantwatch.connections.active") == {
        key(tenant="acme", side="server"): 3, key(tenant="acme", side="client"): 2,
        key(tenant="globex", side="server"): 0}
    assert v("tenantwatch.connections.opened") == {
        key(tenant="acme", side="server"): 4, key(tenant="acme", side="client"): 2,
        key(tenant="globex", side="server"): 1}
    assert v("tenantwatch.connection.duration.sum") == {
        key(tenant="acme", side="server"): 2.5, key(tenant="acme", side="client"): 0.0,
        key(tenant="globex", side="server"): 0.0}
    assert v("tenantwatch.connection.duration.count") == {
        key(tenant="acme", side="server"): 1, key(tenant="acme", side="client"): 0,
        key(tenant="globex", side="server"): 0}
    # CPU: summed over the sides of a tenant
    assert v("tenantwatch.cpu") == {key(tenant="acme"): 1.75, key(tenant="globex"): 0.125}
    assert v("tenantwatch.identity.rejected") == {key(reason="pattern"): 4}
    assert v("tenantwatch.events.lost") == {key(reason="ringbuf_full"): 2}
    assert v("tenantwatch.node.cpu.pressure") == {(): 0.125}
    assert v("tenantwatch.probe.attached") == {key(probe="http"): 1, key(probe="cpu"): 0}
    assert v("tenantwatch.targets") == {(): 3}
    assert v("tenantwatch.ticks") == {(): 42}

    assert receiver.scopes() == {("tenantwatch", __version__)}
    assert receiver.received[-1].headers["content-type"] == "application/x-protobuf"


def test_resource_defaults_and_given_attributes(receiver, exporters):
    snap = make_snapshot()
    e = make(exporters, lambda: snap, endpoint=receiver.url,
             resource_attributes={"deployment.environment.name": "test",
                                  "host.name": "gw-1"})
    e.start()
    assert receiver.wait_for_metric("tenantwatch.http.server.requests", WAIT)
    res = receiver.resource_attributes()
    assert res["service.name"] == "tenantwatch"
    assert res["service.version"] == __version__
    assert res["host.name"] == "gw-1"  # the caller's attributes win over the defaults
    assert res["deployment.environment.name"] == "test"


def test_optional_metrics_are_absent_without_data(receiver, exporters):
    snap = make_snapshot()  # no run-queue histogram, no PSI, no CPU
    e = make(exporters, lambda: snap, endpoint=receiver.url)
    e.start()
    assert receiver.wait_for_metric("tenantwatch.http.server.requests", WAIT)
    names = receiver.metric_names()
    assert "tenantwatch.runqueue.delay" not in names
    assert "tenantwatch.node.cpu.pressure" not in names
    assert receiver.values("tenantwatch.cpu") == {
        key(tenant="acme"): 0.0, key(tenant="globex"): 0.0}


def test_values_follow_the_latest_snapshot_and_gone_tenants_disappear(receiver, exporters):
    current = {"snap": make_snapshot()}
    e = make(exporters, lambda: current["snap"], endpoint=receiver.url)
    e.start()
    assert receiver.wait_for_metric("tenantwatch.http.server.requests", WAIT)
    more = dataclasses.replace(ACME_SERVER, requests_by_class=classes(c2xx=70, c4xx=2, c5xx=1))
    current["snap"] = make_snapshot(ACME_CLIENT, more)  # globex expired

    def updated(r: OtlpReceiver) -> bool:
        reqs = r.metric_requests()
        return bool(reqs) and r.values("tenantwatch.http.server.requests", reqs[-1]).get(
            key(tenant="acme", status_class="2xx")) == 70

    assert receiver.wait_for(updated, WAIT)
    last = receiver.metric_requests()[-1]
    tenants = {p.attributes["tenant"] for p in receiver.points(
        "tenantwatch.http.server.requests", last)}
    assert tenants == {"acme"}
    assert receiver.values("tenantwatch.connections.active", last) == {
        key(tenant="acme", side="server"): 3, key(tenant="acme", side="client"): 2}


def test_stale_tenants_rebuild_the_provider(receiver, exporters):
    """The SDK never forgets an attribute set; past max_stale_tenants gone tenants the provider
    is rebuilt, and export goes on with the live tenants only."""
    current = {"snap": make_snapshot(ACME_SERVER)}
    e = make(exporters, lambda: current["snap"], endpoint=receiver.url, max_stale_tenants=1)
    e.start()
    assert receiver.wait_for_metric("tenantwatch.http.server.requests", WAIT)
    names = iter(f"t{i}" for i in range(100))
    deadline = time.monotonic() + WAIT
    while e.recycles == 0 and time.monotonic() < deadline:
        current["snap"] = make_snapshot(dataclasses.replace(ACME_SERVER, tenant=next(names)))
        time.sleep(INTERVAL)
    assert e.recycles >= 1
    assert e.running
    final = make_snapshot(dataclasses.replace(GLOBEX_SERVER, tenant="last"))
    current["snap"] = final
    n = len(receiver.metric_requests())

    def only_last(r: OtlpReceiver) -> bool:
        reqs = r.metric_requests()
        return len(reqs) > n + 1 and {p.attributes["tenant"] for p in r.points(
            "tenantwatch.http.server.requests", reqs[-1])} == {"last"}

    assert receiver.wait_for(only_last, WAIT)


# ---------------------------------------------------------------------------- lifecycle


def test_no_thread_before_start_and_none_after_shutdown(receiver, exporters):
    before = len(reader_threads())
    e = make(exporters, make_snapshot, endpoint=receiver.url)
    assert not e.running
    assert len(reader_threads()) == before
    assert receiver.received == []
    e.start()
    assert e.running
    assert len(reader_threads()) == before + 1
    e.shutdown()
    assert not e.running
    deadline = time.monotonic() + WAIT
    while len(reader_threads()) > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(reader_threads()) == before


def test_shutdown_flushes_and_is_idempotent(receiver, exporters):
    snap = make_snapshot()
    e = make(exporters, lambda: snap, endpoint=receiver.url, interval_seconds=3600)
    e.start()
    time.sleep(0.3)
    assert receiver.received == []  # nothing before the first interval...
    e.shutdown()
    assert len(receiver.metric_requests()) == 1  # ...and exactly the final flush after it
    assert {tuple(sorted(p.attributes.items())): p.count for p in
            receiver.points("tenantwatch.http.server.request.duration")} == {
        key(tenant="acme"): 10, key(tenant="globex"): 3}
    e.shutdown()
    e.start()  # a shut-down exporter does not come back
    assert not e.running
    assert len(receiver.metric_requests()) == 1


def test_shutdown_without_start_is_a_no_op():
    e = OtelMetricsExporter(make_snapshot)
    e.shutdown()
    e.shutdown()
    assert not e.running


def test_collector_down_never_raises(monkeypatch, exporters):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    e = make(exporters, make_snapshot, endpoint=f"http://127.0.0.1:{free_port()}")
    assert e.start() is True
    time.sleep(3 * INTERVAL)  # several failed exports on the reader thread
    t0 = time.monotonic()
    e.shutdown(timeout_seconds=1)  # the final flush fails too
    assert time.monotonic() - t0 < 3.0


def test_collector_errors_never_raise(exporters):
    with OtlpReceiver(status=500) as r:
        e = make(exporters, make_snapshot, endpoint=r.url)
        e.start()
        assert r.wait_for(lambda rr: len(rr.rejected) >= 2, WAIT)
        e.shutdown(timeout_seconds=1)


def test_failing_or_missing_snapshot_exports_nothing_then_recovers(receiver, exporters, caplog):
    state = {"mode": "raise"}
    snap = make_snapshot()

    def get():
        if state["mode"] == "raise":
            raise RuntimeError("pipeline broke")
        return None if state["mode"] == "none" else snap

    e = make(exporters, get, endpoint=receiver.url)
    e.start()
    time.sleep(3 * INTERVAL)
    state["mode"] = "none"  # before the first tick
    time.sleep(3 * INTERVAL)
    assert not any(m.name.startswith("tenantwatch.") for req in receiver.metric_requests()
                   for rm in req.resource_metrics for sm in rm.scope_metrics for m in sm.metrics)
    failures = [r for r in caplog.records if "cannot read the latest snapshot" in r.getMessage()]
    assert len(failures) == 1  # once per streak, not once per instrument and interval
    state["mode"] = "ok"
    assert receiver.wait_for_metric("tenantwatch.http.server.requests", WAIT)


# ---------------------------------------------------------------------------- OTEL_* variables


def test_env_endpoint_and_resource_win_over_arguments(monkeypatch, receiver, exporters):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "edge-gateway")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.version=9.9,team=platform")
    e = make(exporters, make_snapshot, endpoint=f"http://127.0.0.1:{free_port()}",
             resource_attributes={"team": "ignored"})
    e.start()
    assert receiver.wait_for_metric("tenantwatch.http.server.requests", WAIT)
    res = receiver.resource_attributes()
    assert res["service.name"] == "edge-gateway"
    assert res["service.version"] == "9.9"
    assert res["team"] == "platform"
    assert res["host.name"] == socket.gethostname()


def test_metrics_endpoint_variable_is_a_full_url(monkeypatch, receiver, exporters):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", receiver.url + "/v1/metrics")
    e = make(exporters, make_snapshot)
    e.start()
    assert receiver.wait_for_metric("tenantwatch.http.server.requests", WAIT)


def test_env_interval_and_compression_are_honoured(monkeypatch, receiver, exporters):
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "150")  # ms; wins over interval_seconds
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    e = make(exporters, make_snapshot, endpoint=receiver.url, interval_seconds=3600)
    e.start()
    assert receiver.wait_for(lambda r: len(r.metric_requests()) >= 2, WAIT)
    assert receiver.received[0].headers.get("content-encoding") == "gzip"


def test_delta_preference_is_ignored(monkeypatch, receiver, exporters):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta")
    e = make(exporters, make_snapshot, endpoint=receiver.url)
    e.start()
    assert receiver.wait_for(lambda r: len(r.metric_requests()) >= 2, WAIT)
    for req in receiver.metric_requests()[:2]:  # totals every time, not differences
        assert receiver.values("tenantwatch.ticks", req) == {(): 42}
        assert receiver.metrics(req)["tenantwatch.ticks"].sum.aggregation_temporality == \
            CUMULATIVE


def test_sdk_disabled_starts_nothing(monkeypatch, receiver, exporters):
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    before = len(reader_threads())
    e = make(exporters, make_snapshot, endpoint=receiver.url)
    assert e.start() is False
    assert not e.running
    assert len(reader_threads()) == before


def test_otel_requested():
    assert not otel_requested(None, {})
    assert otel_requested("http://collector:4318", {})
    assert otel_requested(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert otel_requested(None, {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://c/v1/metrics"})
    assert not otel_requested("http://c:4318", {"OTEL_SDK_DISABLED": "true"})
    assert not otel_requested("http://c:4318", {"OTEL_METRICS_EXPORTER": "none"})


def test_metrics_url():
    assert metrics_url("http://c:4318") == "http://c:4318/v1/metrics"
    assert metrics_url("http://c:4318/") == "http://c:4318/v1/metrics"
    assert metrics_url("http://c:4318/otlp") == "http://c:4318/otlp/v1/metrics"
    assert metrics_url("http://c:4318/v1/metrics") == "http://c:4318/v1/metrics"


def test_bad_interval_is_refused():
    with pytest.raises(ValueError):
        OtelMetricsExporter(make_snapshot, interval_seconds=0)


def test_receiver_rejects_what_is_not_otlp(receiver):
    import urllib.error
    import urllib.request

    def post(path: str, body: bytes, ctype: str = "application/x-protobuf") -> int:
        req = urllib.request.Request(receiver.url + path, data=body, method="POST",
                                     headers={"Content-Type": ctype})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status
        except urllib.error.HTTPError as err:
            return err.code

    assert post("/v1/logs", b"") == 404
    assert post("/v1/metrics", b"{}", "application/json") == 415
    assert post("/v1/metrics", b"\xff\xff\xff") == 400
    assert post("/v1/traces", b"") == 200  # an empty request is valid protobuf
    assert receiver.spans() == []
    assert receiver.metric_requests() == []


def test_every_series_translates_to_its_metrics_name_labels_and_value(receiver, exporters):
    """Parity: what arrives over OTLP, put through the Prometheus translation of OTLP
    (prom_translation.py), is the same set of (name, labels, value) as /metrics for the same
    state, the other stages' collectors included; the only differences are the documented
    ones (docs/opentelemetry.md)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from tenantwatch.aggregation.power import PowerMeter, PowerModel, RaplReader
    from tenantwatch.detection import Detector, WorkerTick
    from tenantwatch.detection.records import CpuTick, NodeTick, TenantTick
    from tenantwatch.exporters import TenantCollector
    from tenantwatch.exporters.detection import DetectionCollector
    from tenantwatch.exporters.power import PowerCollector
    from tests.unit.detection.ticks import node, run, tenant
    from tests.unit.exporters.otlp_receiver import metric_points
    from tests.unit.exporters.prom_translation import samples

    snap = full_snapshot()
    detection = run(Detector(), [node(float(t), [tenant("acme", 0.8), tenant("globex", 0.1)],
                                      workers=[WorkerTick(101, 0.97, {"acme": 0.8})])
                                 for t in range(1, 8)])[-1]
    assert detection.hotspots and detection.shares
    meter = PowerMeter(PowerModel(40.0, 120.0), rapl=RaplReader("/nonexistent"), cpus=2)
    meter.apply(NodeTick(at=1.0, interval_seconds=1.0,
                         tenants=(TenantTick("acme", True, 0.5, 3, ()),),
                         workers=(), cpus=(CpuTick(0, 0.5, {}), CpuTick(1, 0.25, {})),
                         latency_bounds=(), psi_some_avg10=None, runq_p99_seconds=None,
                         complete=True, temperatures_celsius={"acpitz/thermal_zone0": 45.0}))
    state = [DetectionCollector(lambda: detection), PowerCollector(meter.totals)]
    e = make(exporters, lambda: snap, endpoint=receiver.url, collectors=state)
    assert e.start() is True
    assert receiver.wait_for(lambda r: {"tenantwatch.hotspot", "tenantwatch.tenant.energy",
                                        "tenantwatch.node.temperature"} <= r.metric_names(),
                             WAIT), receiver.metric_names()
    got = samples([p for m in receiver.metrics().values() for p in metric_points(m)])

    registry = CollectorRegistry()
    registry.register(TenantCollector(lambda: snap, {"version": "x", "kernel": "y"}))
    for c in state:
        registry.register(c)
    want = {(s.name, frozenset(s.labels.items()), float(s.value))
            for f in text_string_to_metric_families(generate_latest(registry).decode())
            for s in f.samples}
    # /metrics only: build_info (OTLP: resource attributes, target_info); the connection
    # duration summary (OTLP has no observable summary: two counters with other names)
    metrics_only = {"tenantwatch_build_info", "tenantwatch_connection_duration_seconds_sum",
                    "tenantwatch_connection_duration_seconds_count"}
    otlp_only = {"tenantwatch_connection_duration_sum_seconds_total",
                 "tenantwatch_connection_duration_count_total"}
    want = {s for s in want if s[0] not in metrics_only}
    got = {s for s in got if s[0] not in otlp_only}
    assert got - want == set(), sorted(got - want)
    assert want - got == set(), sorted(want - got)
    assert any(name == "tenantwatch_hotspot" for name, _, _ in got)
    assert any(name == "tenantwatch_http_server_request_duration_seconds_bucket"
               for name, _, _ in got)
