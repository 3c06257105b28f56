"""Slow requests and isolation breaches as OpenTelemetry spans over OTLP/HTTP.

Takes: aggregation SlowSpan records (sampled, rate-limited slow requests the kernel sent) and
IsolationBreach records (sampled breaches of the response check).
Gives: one span per slow request (name "<METHOD>", kind SERVER for the gateway's server side,
CLIENT for its upstream side) with tenant, method, status and duration attributes; one span
"isolation_breach" per breach (status ERROR) with the requester, the served tenant, the
connection and the request line; exported in batches.  The standard OTEL_* variables win (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES); export errors are
logged by the SDK and never reach the caller.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
from collections.abc import Iterable, Mapping
from typing import Any

from tenantwatch import __version__
from tenantwatch.aggregation.isolation import IsolationBreach
from tenantwatch.aggregation.records import SlowSpan
from tenantwatch.kernel.records import Side

log = logging.getLogger(__name__)

TRACES_PATH = "/v1/traces"
ENV_TRACES_ENDPOINT = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
ENV_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"


def traces_requested(endpoint: str | None = None, env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true" or \
            env.get("OTEL_TRACES_EXPORTER", "").lower() == "none":
        return False
    return bool(endpoint or env.get(ENV_ENDPOINT) or env.get(ENV_TRACES_ENDPOINT))


class OtelSpanExporter:
    """Turns SlowSpans into exported spans; start() builds the SDK pipeline."""

    def __init__(self, *, endpoint: str | None = None,
                 resource_attributes: Mapping[str, str] | None = None) -> None:
        self._endpoint = endpoint
        self._resource_attributes = dict(resource_attributes or {})
        self._provider: Any = None
        self._tracer: Any = None

    def start(self) -> bool:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import OTELResourceDetector, Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as e:
            log.error("OpenTelemetry traces requested but the SDK is missing (%s); install the "
                      "'otel' extra", e)
            return False
        attrs = {"service.name": "tenantwatch", "service.version": __version__,
                 "host.name": socket.gethostname(), "os.type": platform.system().lower()}
        attrs.update(self._resource_attributes)
        resource = Resource.create(attrs).merge(OTELResourceDetector().detect())
        kwargs = {}
        if not (os.environ.get(ENV_TRACES_ENDPOINT) or os.environ.get(ENV_ENDPOINT)) \
                and self._endpoint:
            kwargs["endpoint"] = self._endpoint.rstrip("/") + TRACES_PATH
        self._provider = TracerProvider(resource=resource)
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(**kwargs)))
        self._tracer = self._provider.get_tracer("tenantwatch", __version__)
        return True

    def export(self, spans: Iterable[SlowSpan]) -> int:
        """Queue one span per slow request; returns how many."""
        if self._tracer is None:
            return 0
        from opentelemetry.trace import SpanKind, Status, StatusCode

        n = 0
        for s in spans:
            start_ns = int(s.start_unix * 1e9)
            span = self._tracer.start_span(
                s.method or "HTTP",
                kind=SpanKind.SERVER if s.side is Side.SERVER else SpanKind.CLIENT,
                start_time=start_ns,
                attributes={
                    "tenant": s.tenant,
                    "tenantwatch.side": s.side.value,
                    "http.request.method": s.method,
                    "http.response.status_code": s.status,
                    "tenantwatch.duration_seconds": s.duration_seconds,
                    "process.pid": s.tgid,
                },
            )
            if s.status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            span.end(end_time=start_ns + int(s.duration_seconds * 1e9))
            n += 1
        return n

    def export_breaches(self, breaches: Iterable[IsolationBreach]) -> int:
        """Queue one span per sampled isolation breach; returns how many."""
        if self._tracer is None:
            return 0
        from opentelemetry.trace import SpanKind, Status, StatusCode

        n = 0
        for b in breaches:
            at = int(b.time_unix * 1e9)
            span = self._tracer.start_span(
                "isolation_breach",
                kind=SpanKind.SERVER if b.side is Side.SERVER else SpanKind.CLIENT,
                start_time=at,
                attributes={
                    "tenant": b.tenant,
                    "tenantwatch.served_tenant": b.served,
                    "tenantwatch.served_value": b.served_value,
                    "tenantwatch.side": b.side.value,
                    "tenantwatch.connection": b.connection,
                    "http.request.method": b.method,
                    "tenantwatch.request_line": b.request_line,
                    "http.response.status_code": b.status,
                    "process.pid": b.pid,
                },
            )
            span.set_status(Status(StatusCode.ERROR, "cross-tenant response"))
            span.end(end_time=at)
            n += 1
        return n

    def shutdown(self) -> None:
        """Flush queued spans and stop (idempotent)."""
        provider, self._provider, self._tracer = self._provider, None, None
        if provider is not None:
            try:
                provider.shutdown()
            except Exception:
                log.exception("OpenTelemetry trace shutdown failed")
