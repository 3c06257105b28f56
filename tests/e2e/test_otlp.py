"""OpenTelemetry end to end: the daemon pushes metrics and slow-request spans to a real local
OTLP/HTTP receiver (protobuf decoded); only slow requests become spans."""

from __future__ import annotations

import time

import pytest

from harness.client import WireClient
from tests.unit.exporters.otlp_receiver import OtlpReceiver, attributes

pytest.importorskip("opentelemetry.sdk.trace")


def test_metrics_and_slow_request_spans_reach_the_collector(daemon_factory, e2e_gateway):
    with OtlpReceiver() as rx:
        daemon = daemon_factory(
            f"otel: {{endpoint: '{rx.url}', interval_seconds: 1}}\n"
            "capture: {slow_request_seconds: 0.08}\n")
        with WireClient("127.0.0.1", e2e_gateway.listen_port) as c:
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


def test_shipped_rules_run_on_what_otlp_delivers(daemon_factory, e2e_gateway, tmp_path):
    """The OTLP pipeline's view, put through the Prometheus translation of OTLP
    (tests/unit/exporters/prom_translation.py: no collector can be installed here), is served to a
    real Prometheus with the shipped rules loaded: every rule evaluates healthily on it, the
    error-rate alert goes pending for the tenant whose requests fail (and only for it), and p99
    comes out of the OTLP histograms' buckets."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tests.conftest import _free_port
    from tests.e2e.test_prometheus import Prometheus, prometheus_binary, wait_for
    from tests.unit.exporters.otlp_receiver import metric_points
    from tests.unit.exporters.prom_translation import samples

    binary = prometheus_binary()
    with OtlpReceiver() as rx:
        daemon_factory(f"otel: {{endpoint: '{rx.url}', interval_seconds: 1}}\n")

        def exposition() -> bytes:
            """The latest OTLP request, as Prometheus would store it."""
            reqs = rx.metric_requests()
            if not reqs:
                return b""
            points = [p for m in rx.metrics(reqs[-1]).values() for p in metric_points(m)]
            lines = []
            for name, labels, value in sorted(samples(points), key=repr):
                body = ",".join(f'{k}="{json.dumps(v)[1:-1]}"' for k, v in sorted(labels))
                lines.append(f"{name}{{{body}}} {value!r}")
            return ("\n".join(lines) + "\n").encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = exposition()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", _free_port()), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        prom = Prometheus(tmp_path / "prom", f"127.0.0.1:{server.server_address[1]}")
        stop = threading.Event()

        def drive() -> None:
            deadline = time.monotonic() + 90
            with WireClient("127.0.0.1", e2e_gateway.listen_port) as bad, \
                    WireClient("127.0.0.1", e2e_gateway.listen_port) as good, \
                    WireClient("127.0.0.1", e2e_gateway.listen_port) as slow:
                i = 0
                while not stop.is_set() and time.monotonic() < deadline:
                    bad.request("otlp-failing", path="/status/503")
                    good.request("otlp-fine")
                    if i % 10 == 0:
                        slow.request("otlp-slow", path="/sleep/300")
                    i += 1
                    stop.wait(0.02)

        traffic = threading.Thread(target=drive, daemon=True)
        traffic.start()
        try:
            prom.start(binary)

            def pending() -> list[dict]:
                return [a for a in prom.api("alerts")["data"]["alerts"]
                        if a["labels"]["alertname"] == "TenantwatchTenantHighErrorRate"]

            got = wait_for(lambda: {a["labels"].get("tenant") for a in pending()
                                    if a["labels"].get("severity") == "critical"}
                           >= {"otlp-failing"}, 60.0, 1.0)
            assert got, (pending(), exposition()[:2000])
            assert {a["labels"]["tenant"] for a in pending()} == {"otlp-failing"}
            for g in prom.api("rules")["data"]["groups"]:
                for r in g["rules"]:
                    assert r["health"] == "ok", (g["name"], r["name"], r.get("lastError"))
            p99 = prom.query('histogram_quantile(0.99, sum by (tenant, le) (rate('
                             'tenantwatch_http_server_request_duration_seconds_bucket'
                             '{tenant="otlp-slow"}[1m])))')["data"]["result"]
            assert p99 and 0.25 <= float(p99[0]["value"][1]) <= 0.5, p99
        finally:
            stop.set()
            traffic.join(15)
            prom.stop()
            server.shutdown()
            server.server_close()
