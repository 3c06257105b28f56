"""HTTP exporter: /metrics, /healthz, /readyz and the JSON API on one stdlib ThreadingHTTPServer.

Takes: callables for the latest Snapshot and the daemon's health dict, and the Prometheus registry
holding the ``TenantCollector``.  Gives: the endpoints of the README ("HTTP endpoints"):

- ``/``                a landing page (HTML) linking every endpoint, with the version.
- ``/metrics``         Prometheus text format (0.0.4) from the registry, or OpenMetrics when the
                       scraper's Accept asks for it; gzip-compressed when its Accept-Encoding
                       allows gzip (as the Prometheus client library's own handler does).
- ``/healthz``         200 with the health dict as JSON when ``health["ok"]``, else 503.
- ``/readyz``          200 when the latest snapshot says ready, else 503.
- ``/api/v1/tenants``  per-(tenant, side) totals as JSON, with p50/p99 estimated from the
                       cumulative buckets (upper bound of the bucket the rank falls in, see
                       ``estimate_quantile``); 503 before the first snapshot.
- anything else        404 with a JSON error.

Requests are not logged (no per-request logging); handlers run on daemon threads so a slow client
never blocks shutdown.
"""

from __future__ import annotations

import html
import json
import logging
import socket
import ssl
import threading
import zlib
from collections.abc import Iterator, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import urlsplit

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from tenantwatch import __version__
from tenantwatch.aggregation.records import Snapshot
from tenantwatch.errors import TenantwatchError
from tenantwatch.exporters.documents import tenants_payload
from tenantwatch.exporters.exposition import Exposition
from tenantwatch.exporters.web_config import WebConfig

log = logging.getLogger(__name__)

JSON_CONTENT_TYPE = "application/json"
HTML_CONTENT_TYPE = "text/html; charset=utf-8"
# Bodies smaller than this are sent as they are even when gzip is acceptable.
GZIP_MIN_BYTES = 1024

# serve_forever() checks for shutdown this often: bounds how long stop() takes; 10 idle
# wake-ups a second cost nothing measurable.
_POLL_INTERVAL_SECONDS = 0.1

JsonRoute = Callable[[], tuple[int, Any]]


# A TLS handshake must finish within this (it runs on the request's own thread).
HANDSHAKE_TIMEOUT_SECONDS = 10.0


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its ApiServer and picks IPv4 or IPv6 from the host; with
    TLS, the handshake runs on each request's thread, never in the accept loop."""

    daemon_threads = True
    api: ApiServer

    def __init__(self, address: tuple[str, int], api: ApiServer) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.api = api
        super().__init__(address, _Handler)
        web = api.web
        if web is not None and web.ssl_context is not None:
            self.socket = web.ssl_context.wrap_socket(self.socket, server_side=True,
                                                      do_handshake_on_connect=False)

    def finish_request(self, request, client_address) -> None:
        if isinstance(request, ssl.SSLSocket):
            request.settimeout(HANDSHAKE_TIMEOUT_SECONDS)
            try:
                request.do_handshake()
            except (OSError, ssl.SSLError):
                return  # not TLS, a bad certificate, a timeout: nothing to answer
        super().finish_request(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "tenantwatch"
    sys_version = ""

    def do_GET(self) -> None:
        path = urlsplit(self.path).path.rstrip("/") or "/"
        api = self.server.api
        try:
            if api.web is not None and not api.web.authorized(self.headers.get("Authorization")):
                self.send_response(HTTPStatus.UNAUTHORIZED)
                self.send_header("WWW-Authenticate", 'Basic realm="tenantwatch"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if path == "/metrics":
                body: bytes | Iterator[bytes]
                if isinstance(api.registry, Exposition):
                    body, content_type = api.registry.encode_parts(self.headers.get("Accept"))
                else:
                    encoder, content_type = choose_encoder(self.headers.get("Accept"))
                    body = encoder(api.registry)
                self._send(HTTPStatus.OK, body, content_type,
                           compress=_accepts_gzip(self.headers.get("Accept-Encoding")))
                return
            if path == "/":
                self._send(HTTPStatus.OK, api.landing_page().encode(), HTML_CONTENT_TYPE)
                return
            route = api.routes.get(path)
            if route is None:
                self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {path}"})
                return
            status, document = route()
            self._send_json(status, document)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away; nothing to answer
        except Exception:
            log.exception("error serving %s", path)
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"})

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: no per-request logging."""

    def _send_json(self, status: int, document: Any) -> None:
        text = json.dumps(document, sort_keys=True, allow_nan=False, default=str)
        body = text.encode() + b"\n"
        self._send(status, body, JSON_CONTENT_TYPE)

    def _send(self, status: int, body: bytes | Iterator[bytes], content_type: str,
              compress: bool = False) -> None:
        """One response.  A body in parts is never joined: compressed, each part is compressed
        as it comes and dropped, so only the compressed body is held; otherwise the parts are
        kept as they are (the length goes first) and written one by one."""
        parts: list[bytes] = []
        length = 0
        source = iter([body] if isinstance(body, bytes) else body)
        for p in source:  # until the body is known to be small, or big enough to compress
            parts.append(p)
            length += len(p)
            if compress and length >= GZIP_MIN_BYTES:
                break
        compress = compress and length >= GZIP_MIN_BYTES
        if compress:
            z = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: the gzip format
            parts = [z.compress(p) for p in parts]  # the plain parts read so far are dropped
            parts += [z.compress(p) for p in source]
            parts.append(z.flush())
            length = sum(len(p) for p in parts)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if compress:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Vary", "Accept, Accept-Encoding")
        self.send_header("Content-Length", str(length))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        for p in parts:
            if p:
                self.wfile.write(p)


def _accepts_gzip(accept_encoding: str | None) -> bool:
    """Does an Accept-Encoding allow gzip (q > 0)?"""
    for part in (accept_encoding or "").split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            q = params.strip()
            if q.startswith("q="):
                try:
                    return float(q[2:]) > 0
                except ValueError:
                    return False
            return True
    return False


class ApiServer:
    """The daemon's HTTP endpoints on a background thread; ``stop()`` is idempotent."""

    def __init__(
        self,
        host: str,
        port: int,
        get_snapshot: Callable[[], Snapshot | None],
        get_health: Callable[[], Mapping[str, Any]],
        registry: CollectorRegistry | Exposition,
        extra_routes: Mapping[str, JsonRoute] | None = None,
        web: WebConfig | None = None,
        tenants: Callable[[Snapshot], Mapping[str, Any]] = tenants_payload,
    ) -> None:
        """``extra_routes`` maps more paths (e.g. /api/v1/caps) to () -> (status, JSON document);
        ``web``: TLS and basic auth (web_config.py), None for plain HTTP to anyone;
        ``tenants``: the /api/v1/tenants document of a snapshot (documents.py; the daemon's
        adds detection's shares and flags)."""
        self.web = web
        self._host = host.strip("[]")  # accept "[::1]" as written in a listen address
        self._requested_port = port
        self._get_snapshot = get_snapshot
        self._get_health = get_health
        self._tenants_document = tenants
        self.registry = registry
        self.routes: dict[str, JsonRoute] = {
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/api/v1/tenants": self._tenants,
        }
        self.routes.update(extra_routes or {})
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.port: int | None = None

    def landing_page(self) -> str:
        """The page at /: what this is, and a link to every endpoint."""
        links = ["/metrics", *sorted(self.routes)]
        items = "\n".join(f'<li><a href="{html.escape(p)}">{html.escape(p)}</a></li>'
                          for p in links)
        return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
                f"<title>tenantwatch {html.escape(__version__)}</title></head>\n<body>\n"
                f"<h1>tenantwatch {html.escape(__version__)}</h1>\n"
                "<p>Per-tenant traffic, CPU and isolation of this gateway node, from eBPF.</p>\n"
                f"<ul>\n{items}\n</ul>\n</body></html>\n")

    def start(self) -> None:
        """Bind and serve on a background thread; binding errors raise TenantwatchError."""
        with self._lock:
            if self._server is not None:
                raise RuntimeError("ApiServer already started")
            try:
                server = _Server((self._host, self._requested_port), self)
            except OSError as exc:
                reason = exc.strerror or str(exc)
                raise TenantwatchError(
                    f"cannot listen on {self._host}:{self._requested_port}: {reason}"
                    " (check `listen` in the config; is another tenantwatch running?)"
                ) from exc
            self._server = server
            self.port = server.server_address[1]
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": _POLL_INTERVAL_SECONDS},
                name="tenantwatch-http",
                daemon=True,
            )
            self._thread.start()
            log.info("serving HTTP on %s:%d", self._host, self.port)

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call more than once."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join()

    def _healthz(self) -> tuple[int, Any]:
        try:
            health = dict(self._get_health())
        except Exception as exc:
            log.exception("health check failed")
            return HTTPStatus.SERVICE_UNAVAILABLE, {"ok": False, "error": str(exc)}
        ok = bool(health.get("ok"))
        return (HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE), health

    def _readyz(self) -> tuple[int, Any]:
        snapshot = self._get_snapshot()
        ready = snapshot is not None and snapshot.ready
        return (HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE), {"ready": ready}

    def _tenants(self) -> tuple[int, Any]:
        snapshot = self._get_snapshot()
        if snapshot is None:
            return HTTPStatus.SERVICE_UNAVAILABLE, {"error": "no snapshot yet"}
        return HTTPStatus.OK, self._tenants_document(snapshot)
