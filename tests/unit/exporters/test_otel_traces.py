"""Slow-request spans over OTLP/HTTP into a real local receiver that decodes the protobuf."""

from __future__ import annotations

import time

import pytest

from tenantwatch.aggregation.records import SlowSpan
from tenantwatch.exporters.otel_traces import OtelSpanExporter, traces_requested
from tenantwatch.kernel.records import Side
from tests.unit.exporters.otlp_receiver import OtlpReceiver, attributes

pytest.importorskip("opentelemetry.sdk.trace")


def test_slow_requests_become_spans_with_tenant_method_status(monkeypatch) -> None:
    for var in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    now = time.time()
    spans = [SlowSpan("acme", Side.SERVER, "GET", 200, now - 1, 0.75, 42),
             SlowSpan("globex", Side.CLIENT, "POST", 503, now - 0.5, 1.5, 43)]
    with OtlpReceiver() as rx:
        ex = OtelSpanExporter(endpoint=rx.url)
        assert ex.start()
        assert ex.export(spans) == 2
        ex.shutdown()  # flushes
        ex.shutdown()  # idempotent
        got = [sp for req in rx.trace_requests() for rs in req.resource_spans
               for ss in rs.scope_spans for sp in ss.spans]
    assert len(got) == 2
    by_tenant = {attributes(sp.attributes)["tenant"]: sp for sp in got}
    acme, globex = by_tenant["acme"], by_tenant["globex"]
    assert acme.name == "GET" and attributes(acme.attributes)["http.response.status_code"] == 200
    assert (acme.end_time_unix_nano - acme.start_time_unix_nano) == 750_000_000
    assert globex.name == "POST" and globex.status.code == 2  # STATUS_CODE_ERROR for 5xx
    assert acme.kind == 2 and globex.kind == 3  # SERVER, CLIENT


def test_exporter_off_unless_asked() -> None:
    assert not traces_requested(None, env={})
    assert traces_requested("http://x:4318", env={})
    assert traces_requested(None, env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"})
    assert not traces_requested("http://x", env={"OTEL_TRACES_EXPORTER": "none"})
    assert OtelSpanExporter().export([]) == 0  # not started: nothing, no error


def test_isolation_breaches_become_error_spans_with_the_evidence(monkeypatch) -> None:
    from tenantwatch.aggregation.isolation import IsolationBreach

    for var in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    b = IsolationBreach(tenant="acme", served="globex", served_value="globex", side=Side.CLIENT,
                        time_unix=time.time() - 1, pid=42,
                        connection="127.0.0.1:40000 -> 127.0.0.1:8080", status=200,
                        method="GET", request_line="GET /orders/9 HTTP/1.1")
    with OtlpReceiver() as rx:
        ex = OtelSpanExporter(endpoint=rx.url)
        assert ex.start()
        assert ex.export_breaches([b]) == 1
        ex.shutdown()
        (sp,) = [sp for req in rx.trace_requests() for rs in req.resource_spans
                 for ss in rs.scope_spans for sp in ss.spans]
    a = attributes(sp.attributes)
    assert sp.name == "isolation_breach" and sp.status.code == 2 and sp.kind == 3
    assert (a["tenant"], a["tenantwatch.served_tenant"]) == ("acme", "globex")
    assert a["tenantwatch.connection"] == "127.0.0.1:40000 -> 127.0.0.1:8080"
    assert a["tenantwatch.request_line"] == "GET /orders/9 HTTP/1.1"
    assert a["process.pid"] == 42 and a["http.response.status_code"] == 200
    assert OtelSpanExporter().export_breaches([b]) == 0  # not started
