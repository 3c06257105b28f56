"""TenantCollector output, parsed back with prometheus_client.parser (exact names and labels)."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tenantwatch.aggregation.records import Snapshot
from tenantwatch.exporters import TenantCollector
from tests.unit.exporters.snapshots import (
    ACME_SERVER,
    GLOBEX_SERVER,
    make_snapshot,
)

BUILD = {"version": "0.1.0", "kernel": "6.1.0-test"}
Samples = dict[str, list[tuple[dict[str, str], float]]]

EXPECTED_SAMPLE_NAMES = {
    "tenantwatch_http_server_requests_total",
    "tenantwatch_http_server_request_duration_seconds_bucket",
    "tenantwatch_http_server_request_duration_seconds_count",
    "tenantwatch_http_server_request_duration_seconds_sum",
    "tenantwatch_http_client_requests_total",
    "tenantwatch_http_client_request_duration_seconds_bucket",
    "tenantwatch_http_client_request_duration_seconds_count",
    "tenantwatch_http_client_request_duration_seconds_sum",
    "tenantwatch_http_server_received_bytes_total",
    "tenantwatch_http_server_sent_bytes_total",
    "tenantwatch_connections_active",
    "tenantwatch_connections_opened_total",
    "tenantwatch_connection_duration_seconds_count",
    "tenantwatch_connection_duration_seconds_sum",
    "tenantwatch_identity_rejected_total",
    "tenantwatch_events_lost_total",
    "tenantwatch_cpu_seconds_total",
    "tenantwatch_probe_attached",
    "tenantwatch_targets",
    "tenantwatch_ticks_total",
    "tenantwatch_build_info",
}


def scrape(snapshot: Snapshot | None) -> tuple[str, Samples]:
    registry = CollectorRegistry()
    registry.register(TenantCollector(lambda: snapshot, BUILD))
    text = generate_latest(registry).decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), s.value))
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    found = [v for lab, v in samples[name] if lab == labels]
    assert len(found) == 1, f"{name}{labels}: {samples.get(name)}"
    return found[0]


def test_exact_metric_names() -> None:
    _, samples = scrape(make_snapshot())
    assert set(samples) == EXPECTED_SAMPLE_NAMES


def test_type_lines() -> None:
    text, _ = scrape(make_snapshot())
    assert "# TYPE tenantwatch_http_server_requests_total counter" in text
    assert "# TYPE tenantwatch_http_server_request_duration_seconds histogram" in text
    assert "# TYPE tenantwatch_connections_active gauge" in text
    assert "# TYPE tenantwatch_build_info gauge" in text


def test_requests_by_tenant_and_status_class() -> None:
    _, samples = scrape(make_snapshot())
    name = "tenantwatch_http_server_requests_total"
    assert value(samples, name, tenant="acme", status_class="2xx") == 7
    assert value(samples, name, tenant="acme", status_class="5xx") == 1
    assert value(samples, name, tenant="acme", status_class="none") == 0
    assert {lab["status_class"] for lab, _ in samples[name]} == {
        "1xx",
        "2xx",
        "3xx",
        "4xx",
        "5xx",
        "none",
    }
    assert {lab["tenant"] for lab, _ in samples[name]} == {"acme", "globex"}
    client = "tenantwatch_http_client_requests_total"
    assert {lab["tenant"] for lab, _ in samples[client]} == {"acme"}
    assert value(samples, client, tenant="acme", status_class="2xx") == 9


def test_histogram_buckets_count_and_sum_are_consistent() -> None:
    _, samples = scrape(make_snapshot())
    base = "tenantwatch_http_server_request_duration_seconds"
    buckets = [(lab["le"], v) for lab, v in samples[base + "_bucket"] if lab["tenant"] == "acme"]
    assert buckets == [("0.001", 2), ("0.01", 6), ("0.1", 9), ("+Inf", 10)]
    assert value(samples, base + "_count", tenant="acme") == 10
    assert value(samples, base + "_sum", tenant="acme") == pytest.approx(0.75)
    for tenant in ("acme", "globex"):
        series = [v for lab, v in samples[base + "_bucket"] if lab["tenant"] == tenant]
        assert series == sorted(series)  # cumulative
        assert series[-1] == value(samples, base + "_count", tenant=tenant)
        # _count matches the requests counter
        requests = sum(
            v
            for lab, v in samples["tenantwatch_http_server_requests_total"]
            if lab["tenant"] == tenant
        )
        assert series[-1] == requests


def test_default_bounds_are_exported_exactly() -> None:
    bounds = (
        0.0001,
        0.00025,
        0.0005,
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1.0,
        2.5,
        5.0,
        10.0,
    )
    stats = dataclasses.replace(ACME_SERVER, latency_buckets=tuple(range(len(bounds) + 1)))
    snap = dataclasses.replace(make_snapshot(stats), latency_bounds_seconds=bounds)
    _, samples = scrape(snap)
    les = [
        lab["le"] for lab, _ in samples["tenantwatch_http_server_request_duration_seconds_bucket"]
    ]
    assert [float(x) for x in les[:-1]] == list(bounds)
    assert les[-1] == "+Inf"


def test_bytes_are_server_side_only() -> None:
    _, samples = scrape(make_snapshot())
    assert value(samples, "tenantwatch_http_server_received_bytes_total", tenant="acme") == 1000
    assert value(samples, "tenantwatch_http_server_sent_bytes_total", tenant="acme") == 20000
    assert len(samples["tenantwatch_http_server_received_bytes_total"]) == 2  # acme, globex


def test_connections_and_daemon_metrics() -> None:
    _, samples = scrape(make_snapshot())
    assert value(samples, "tenantwatch_connections_active", tenant="acme", side="server") == 3
    assert value(samples, "tenantwatch_connections_active", tenant="acme", side="client") == 2
    assert (
        value(samples, "tenantwatch_connections_opened_total", tenant="globex", side="server") == 1
    )
    # a summary: _count is connections closed, _sum their lifetimes
    assert value(samples, "tenantwatch_connection_duration_seconds_count", tenant="acme",
                 side="server") == 1
    assert value(samples, "tenantwatch_connection_duration_seconds_sum", tenant="acme",
                 side="server") == 2.5
    assert value(samples, "tenantwatch_connection_duration_seconds_count", tenant="acme",
                 side="client") == 0
    assert value(samples, "tenantwatch_identity_rejected_total", reason="pattern") == 4
    assert value(samples, "tenantwatch_events_lost_total", reason="ringbuf_full") == 2
    assert value(samples, "tenantwatch_probe_attached", probe="http") == 1
    assert value(samples, "tenantwatch_probe_attached", probe="cpu") == 0
    assert value(samples, "tenantwatch_targets") == 3
    assert value(samples, "tenantwatch_ticks_total") == 42
    assert value(samples, "tenantwatch_build_info", **BUILD) == 1


def test_only_the_tenant_label_is_high_cardinality() -> None:
    _, samples = scrape(make_snapshot())
    allowed = {"tenant", "status_class", "side", "le", "reason", "probe", "version", "kernel"}
    for name, series in samples.items():
        for labels, _ in series:
            assert set(labels) <= allowed, name


def test_expired_tenant_disappears_on_next_scrape() -> None:
    current = [make_snapshot(ACME_SERVER, GLOBEX_SERVER)]
    registry = CollectorRegistry()
    registry.register(TenantCollector(lambda: current[0], BUILD))
    assert 'tenant="globex"' in generate_latest(registry).decode()
    current[0] = make_snapshot(ACME_SERVER)
    text = generate_latest(registry).decode()
    assert 'tenant="globex"' not in text
    assert 'tenant="acme"' in text


def test_missing_snapshot_gives_build_info_only() -> None:
    _, samples = scrape(None)
    assert set(samples) == {"tenantwatch_build_info"}


def test_failing_snapshot_read_gives_build_info_only(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> Snapshot:
        raise RuntimeError("pipeline down")

    registry = CollectorRegistry()
    registry.register(TenantCollector(broken, BUILD))
    with caplog.at_level(logging.ERROR, logger="tenantwatch.exporters.prometheus"):
        text = generate_latest(registry).decode()
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert names == {"tenantwatch_build_info"}
    assert "cannot read the latest snapshot" in caplog.text


def test_registration_does_not_read_the_snapshot() -> None:
    calls = []
    registry = CollectorRegistry()
    registry.register(TenantCollector(lambda: calls.append(1), BUILD))  # type: ignore[arg-type]
    assert calls == []
    with pytest.raises(ValueError):  # describe() exposes the names: duplicates are caught
        registry.register(TenantCollector(lambda: None, BUILD))


def test_cpu_runqueue_and_pressure() -> None:
    import dataclasses

    from tenantwatch.kernel.records import Side

    snap = make_snapshot()
    tenants = tuple(dataclasses.replace(t, cpu_seconds=1.5 if t.side is Side.SERVER else 0.25)
                    for t in snap.tenants)
    snap = dataclasses.replace(snap, tenants=tenants, runq_bounds_seconds=(0.001, 0.01),
                               runq_buckets=(3, 5, 6), runq_sum_seconds=0.02, psi_some_avg10=12.5)
    _, samples = scrape(snap)
    assert value(samples, "tenantwatch_cpu_seconds_total", tenant="acme") == 1.75  # both sides
    assert value(samples, "tenantwatch_runqueue_delay_seconds_bucket", le="0.01") == 5
    assert value(samples, "tenantwatch_runqueue_delay_seconds_count") == 6
    assert value(samples, "tenantwatch_node_cpu_pressure_ratio") == 0.125
