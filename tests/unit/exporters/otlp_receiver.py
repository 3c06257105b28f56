"""A real OTLP/HTTP receiver for tests: http.server on 127.0.0.1:0, protobuf decoded.

POST /v1/metrics (ExportMetricsServiceRequest) and /v1/traces (ExportTraceServiceRequest), gzip
or deflate bodies accepted; anything else gets 404 (wrong path) or 400 (not protobuf).  Requests
are kept decoded, in arrival order; helpers flatten them into names and data points.
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, final

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric

_ROUTES: Mapping[str, tuple[Any, Any]] = {
    "/v1/metrics": (ExportMetricsServiceRequest, ExportMetricsServiceResponse),
    "/v1/traces": (ExportTraceServiceRequest, ExportTraceServiceResponse),
}


def any_value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return attributes(v.kvlist_value.values)
    return getattr(v, kind)


def attributes(kvs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs:
        assert isinstance(kv, KeyValue)
        out[kv.key] = any_value(kv.value)
    return out


@dataclass(frozen=True)
class Point:
    """One data point: its metric, kind (sum/gauge/histogram...), attributes and value."""

    metric: str
    kind: str
    unit: str
    attributes: dict[str, Any]
    value: float | int | None  # numbers; None for histogram-like points
    start_time_unix_nano: int
    time_unix_nano: int
    is_monotonic: bool | None
    temporality: int | None  # AggregationTemporality enum value (2 = cumulative)
    # histogram points: count, sum, count per bucket (the last is +Inf), bounds
    count: int | None = None
    sum: float | None = None
    bucket_counts: tuple[int, ...] = ()
    explicit_bounds: tuple[float, ...] = ()


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    message: Any  # ExportMetricsServiceRequest or ExportTraceServiceRequest


@final
class OtlpReceiver:
    """Start with ``start()`` (or as a context manager); ``url`` is the base endpoint."""

    def __init__(self, status: int = 200) -> None:
        self.status = status  # answer to give (e.g. 503 to test failures)
        self.received: list[Received] = []
        self.rejected: list[tuple[str, int]] = []  # (path, status) of refused requests
        self._cond = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> OtlpReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: Any) -> None:  # keep pytest output clean
                pass

            def do_POST(self) -> None:
                receiver._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="otlp-receiver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "receiver not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """Base URL, as in OTEL_EXPORTER_OTLP_ENDPOINT (the exporter appends /v1/metrics)."""
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ HTTP

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length)
        route = _ROUTES.get(h.path.split("?", 1)[0])
        if route is None:
            self._answer(h, 404, b"", "text/plain")
            return
        if h.headers.get("Content-Type", "").split(";")[0].strip() != "application/x-protobuf":
            self._answer(h, 415, b"", "text/plain")
            return
        request_type, response_type = route
        try:
            encoding = (h.headers.get("Content-Encoding") or "").lower()
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            message = request_type()
            message.ParseFromString(body)
        except (DecodeError, OSError, zlib.error):
            self._answer(h, 400, b"", "text/plain")
            return
        if self.status != 200:
            with self._cond:
                self.rejected.append((h.path, self.status))
                self._cond.notify_all()
            self._answer(h, self.status, b"", "text/plain")
            return
        with self._cond:
            self.received.append(Received(h.path, {k.lower(): v for k, v in h.headers.items()},
                                          message))
            self._cond.notify_all()
        self._answer(h, 200, response_type().SerializeToString(), "application/x-protobuf")

    @staticmethod
    def _answer(h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    # ------------------------------------------------------------------ waiting

    def wait_for(self, predicate: Callable[[OtlpReceiver], bool], timeout: float = 10.0) -> bool:
        """Block until ``predicate(self)`` holds (checked at each arrival) or ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def wait_for_metric(self, name: str, timeout: float = 10.0) -> bool:
        return self.wait_for(lambda r: name in r.metric_names(), timeout)

    # ------------------------------------------------------------------ views

    def metric_requests(self) -> list[ExportMetricsServiceRequest]:
        return [r.message for r in list(self.received) if r.path == "/v1/metrics"]

    def trace_requests(self) -> list[ExportTraceServiceRequest]:
        return [r.message for r in list(self.received) if r.path == "/v1/traces"]

    def metrics(self, request: ExportMetricsServiceRequest | None = None) -> dict[str, Metric]:
        """name -> Metric of one request (default: every metrics request, the latest wins)."""
        requests = [request] if request is not None else self.metric_requests()
        out: dict[str, Metric] = {}
        for req in requests:
            for rm in req.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        out[m.name] = m
        return out

    def metric_names(self) -> set[str]:
        return set(self.metrics())

    def resource_attributes(self) -> dict[str, Any]:
        """Resource attributes of the latest metrics request."""
        reqs = self.metric_requests()
        if not reqs or not reqs[-1].resource_metrics:
            return {}
        return attributes(reqs[-1].resource_metrics[0].resource.attributes)

    def scopes(self) -> set[tuple[str, str]]:
        return {(sm.scope.name, sm.scope.version) for req in self.metric_requests()
                for rm in req.resource_metrics for sm in rm.scope_metrics}

    def points(self, name: str, request: ExportMetricsServiceRequest | None = None
               ) -> list[Point]:
        """Data points of metric ``name`` (default: as of the latest request holding it)."""
        m = self.metrics(request).get(name)
        return [] if m is None else metric_points(m)

    def values(self, name: str, request: ExportMetricsServiceRequest | None = None
               ) -> dict[tuple[tuple[str, Any], ...], float | int | None]:
        """sorted attribute items -> value, for easy equality checks."""
        return {tuple(sorted(p.attributes.items())): p.value for p in self.points(name, request)}

    def spans(self) -> list[Any]:
        return [span for req in self.trace_requests() for rs in req.resource_spans
                for ss in rs.scope_spans for span in ss.spans]


def metric_points(m: Metric) -> list[Point]:
    kind = m.WhichOneof("data")
    if kind is None:
        return []
    data = getattr(m, kind)
    monotonic = data.is_monotonic if kind == "sum" else None
    temporality = data.aggregation_temporality if hasattr(data, "aggregation_temporality") \
        else None
    out = []
    for dp in data.data_points:
        if kind in ("sum", "gauge"):
            which = dp.WhichOneof("value")
            value: float | int | None = getattr(dp, which) if which else None
        else:
            value = None
        hist = {}
        if kind == "histogram":
            hist = {"count": dp.count, "sum": dp.sum, "bucket_counts": tuple(dp.bucket_counts),
                    "explicit_bounds": tuple(dp.explicit_bounds)}
        out.append(Point(m.name, kind, m.unit, attributes(dp.attributes), value,
                         dp.start_time_unix_nano, dp.time_unix_nano, monotonic, temporality,
                         **hist))
    return out
