"""OpenTelemetry end to end: the daemon pushes metrics and slow-request spans to a real local
OTLP/HTTP receiver (protobuf decoded); only slow requests become spans."""

from __future__ import annotations

import time

import pytest

from tenantwatch.demo.traffic import Client
from tests.unit.exporters.otlp_receiver import OtlpReceiver, attributes

pytest.importorskip("opentelemetry.sdk.trace")


def test_metrics_and_slow_request_spans_reach_the_collector(daemon_factory, e2e_gateway):
    with OtlpReceiver() as rx:
        daemon = daemon_factory(
            f"otel: {{endpoint: '{rx.url}', interval_seconds: 1}}\n"
            "capture: {slow_request_seconds: 0.08}\n")
        with Client("127.0.0.1", e2e_gateway.listen_port) as c:
            for _ in range(20):
                assert c.request("otlp-quick") == 200
            for _ in range(3):
                assert c.request("otlp-sluggish", path="/sleep/150") == 200
        deadline = time.monotonic() + 20
        spans: list = []
        while time.monotonic() < deadline:
            spans = [sp for req in rx.trace_requests() for rs in req.resource_spans
                     for ss in rs.scope_spans for sp in ss.spans]
            names = rx.metric_names()
            if len(spans) >= 6 and "tenantwatch.http.server.requests" in names:
                break
            time.sleep(0.5)
        tenants_in_metrics = {p.attributes.get("tenant")
                              for p in rx.points("tenantwatch.http.server.requests")}
        # the latency histograms arrive with their buckets: 20 quick requests, 3 slow ones
        # (>= 80 ms, so in buckets above the 50 ms bound)
        assert rx.wait_for(lambda r: {
            p.attributes.get("tenant"): p.count
            for p in r.points("tenantwatch.http.server.request.duration")}.get(
                "otlp-sluggish") == 3, 10.0)
        hist = {p.attributes["tenant"]: p
                for p in rx.points("tenantwatch.http.server.request.duration")}
        assert hist["otlp-quick"].count == 20 and sum(hist["otlp-quick"].bucket_counts) == 20
        slow = hist["otlp-sluggish"]
        above = sum(n for bound, n in zip([*slow.explicit_bounds, float("inf")],
                                          slow.bucket_counts) if bound > 0.05)
        assert above == 3 and slow.sum >= 0.24, slow
        assert daemon.stop() == 0
    tenants = [attributes(sp.attributes)["tenant"] for sp in spans]
    # 3 slow requests, each seen on both sides of the gateway; the quick ones never
    assert sorted(tenants) == ["otlp-sluggish"] * 6, tenants
    assert all(attributes(sp.attributes)["http.response.status_code"] == 200 for sp in spans)
    assert all(sp.end_time_unix_nano - sp.start_time_unix_nano >= 80_000_000 for sp in spans)
    assert {"tenantwatch.http.server.requests", "tenantwatch.cpu",
            "tenantwatch.connections.active"} <= names
    assert {"otlp-quick", "otlp-sluggish"} <= tenants_in_metrics
