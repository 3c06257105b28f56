"""ApiServer on port 0, hit with urllib: every endpoint, 404, 503 before ready, bind errors."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from tenantwatch.errors import TenantwatchError
from tenantwatch.exporters import ApiServer
from tests.unit.exporters.live import LiveApi
from tests.unit.exporters.snapshots import make_snapshot

TENANT_KEYS = {
    "tenant",
    "side",
    "trusted",
    "requests",
    "requests_by_class",
    "rx_bytes",
    "tx_bytes",
    "latency_p50_seconds",
    "latency_p99_seconds",
    "latency_sum_seconds",
    "connections_active",
    "connections_opened",
    "connections_closed",
    "connection_seconds",
    "cpu_seconds",
}


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def get_json(url: str) -> tuple[int, Any]:
    status, headers, body = get(url)
    assert headers["Content-Type"] == "application/json"
    return status, json.loads(body)


def test_metrics(live_api: LiveApi) -> None:
    status, headers, body = get(live_api.url + "/metrics")
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    names = {s.name for f in text_string_to_metric_families(body.decode()) for s in f.samples}
    assert "tenantwatch_http_server_requests_total" in names
    assert get(live_api.url + "/metrics?x=1")[0] == 200


def test_healthz_ok_and_failing(live_api: LiveApi) -> None:
    assert get_json(live_api.url + "/healthz") == (
        200,
        {"ok": True, "ticks": 42, "events_lost": {"ringbuf_full": 2}},
    )
    live_api.health = {"ok": False, "reason": "probe detached", "events_lost": {"x": 1}}
    status, doc = get_json(live_api.url + "/healthz")
    assert status == 503
    assert doc["events_lost"] == {"x": 1}


def test_healthz_when_the_health_callable_fails(live_api: LiveApi) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    live_api.server._get_health = broken
    status, doc = get_json(live_api.url + "/healthz")
    assert status == 503
    assert doc == {"ok": False, "error": "boom"}


def test_readyz(live_api: LiveApi) -> None:
    assert get_json(live_api.url + "/readyz") == (200, {"ready": True})
    live_api.snapshot = make_snapshot(ready=False)
    assert get_json(live_api.url + "/readyz") == (503, {"ready": False})
    live_api.snapshot = None
    assert get_json(live_api.url + "/readyz") == (503, {"ready": False})


def test_tenants(live_api: LiveApi) -> None:
    status, doc = get_json(live_api.url + "/api/v1/tenants")
    assert status == 200
    assert set(doc) == {"taken_at", "tenants", "identity_rejected", "events_lost"}
    assert doc["taken_at"] == 1_700_000_000.0
    assert doc["identity_rejected"] == {"pattern": 4}
    assert doc["events_lost"] == {"ringbuf_full": 2}
    assert len(doc["tenants"]) == 3
    for entry in doc["tenants"]:
        assert set(entry) == TENANT_KEYS
    acme = next(t for t in doc["tenants"] if t["tenant"] == "acme" and t["side"] == "server")
    assert acme["requests"] == 10
    assert acme["requests_by_class"]["4xx"] == 2
    assert acme["trusted"] is False
    assert acme["latency_p50_seconds"] == 0.01  # rank 5 of (2, 6, 9, 10)
    assert acme["latency_p99_seconds"] == 0.1  # rank 9.9 falls in +Inf: highest finite bound
    assert acme["latency_sum_seconds"] == 0.75
    assert (acme["rx_bytes"], acme["tx_bytes"]) == (1000, 20000)
    assert (acme["connections_active"], acme["connections_opened"]) == (3, 4)
    assert (acme["connections_closed"], acme["connection_seconds"]) == (1, 2.5)


def test_tenants_before_the_first_snapshot(live_api: LiveApi) -> None:
    live_api.snapshot = None
    assert get_json(live_api.url + "/api/v1/tenants") == (503, {"error": "no snapshot yet"})


def test_the_tenants_document_is_the_one_given() -> None:
    """The daemon's /api/v1/tenants (with detection's flags) is built by the document it passes,
    not shadowed by a route of its own."""
    api = ApiServer("127.0.0.1", 0, lambda: make_snapshot(), lambda: {"ok": True},
                    CollectorRegistry(),
                    tenants=lambda snap: {"rows": len(snap.tenants), "flags": {"acme": ["NOISY"]}})
    api.start()
    try:
        status, doc = get_json(f"http://127.0.0.1:{api.port}/api/v1/tenants")
    finally:
        api.stop()
    assert status == 200
    assert doc == {"rows": len(make_snapshot().tenants), "flags": {"acme": ["NOISY"]}}


def test_unknown_path_is_a_json_404(live_api: LiveApi) -> None:
    status, doc = get_json(live_api.url + "/nope")
    assert status == 404
    assert "error" in doc


def test_the_landing_page_links_every_endpoint(live_api: LiveApi) -> None:
    status, headers, body = get(live_api.url + "/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    page = body.decode()
    for path in ("/metrics", "/healthz", "/readyz", "/api/v1/tenants"):
        assert f'<a href="{path}">' in page
    assert "<title>tenantwatch " in page


def _get_with(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.status, dict(r.headers), r.read()


def test_openmetrics_when_asked_for_and_gzip_when_allowed(live_api: LiveApi) -> None:
    import gzip

    from prometheus_client.openmetrics.parser import text_string_to_metric_families as om

    status, headers, body = _get_with(
        live_api.url + "/metrics", Accept="application/openmetrics-text; version=1.0.0")
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    text = body.decode()
    assert text.endswith("# EOF\n")
    assert "tenantwatch_http_server_requests" in {f.name for f in om(text)}
    status, headers, body = _get_with(live_api.url + "/metrics", **{
        "Accept-Encoding": "gzip, deflate"})
    assert headers.get("Content-Encoding") == "gzip"
    plain = gzip.decompress(body).decode()
    assert "tenantwatch_http_server_requests_total" in plain
    status, headers, body = _get_with(live_api.url + "/metrics", **{
        "Accept-Encoding": "gzip;q=0, identity"})
    assert "Content-Encoding" not in headers and body.decode().startswith("#")


def test_no_per_request_logging(live_api: LiveApi, capfd: pytest.CaptureFixture) -> None:
    get(live_api.url + "/metrics")
    get(live_api.url + "/nope")
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_extra_routes() -> None:
    server = ApiServer(
        "127.0.0.1",
        0,
        lambda: None,
        lambda: {"ok": True},
        CollectorRegistry(),
        extra_routes={"/api/v1/caps": lambda: (200, {"caps": []})},
    )
    server.start()
    try:
        assert get_json(f"http://127.0.0.1:{server.port}/api/v1/caps") == (200, {"caps": []})
    finally:
        server.stop()


def test_port_in_use_raises_a_clear_error(live_api: LiveApi) -> None:
    other = ApiServer(
        "127.0.0.1", live_api.server.port or 0, lambda: None, dict, CollectorRegistry()
    )
    with pytest.raises(
        TenantwatchError, match=rf"cannot listen on 127\.0\.0\.1:{live_api.server.port}"
    ):
        other.start()
    other.stop()  # never started: a no-op


def test_bad_host_raises_a_clear_error() -> None:
    server = ApiServer("203.0.113.1", 0, lambda: None, dict, CollectorRegistry())
    with pytest.raises(TenantwatchError, match="cannot listen on 203.0.113.1:0"):
        server.start()


def test_stop_is_idempotent_and_closes_the_port() -> None:
    server = ApiServer("127.0.0.1", 0, lambda: None, lambda: {"ok": True}, CollectorRegistry())
    server.start()
    port = server.port
    assert isinstance(port, int) and port > 0
    server.stop()
    server.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    server = ApiServer("[::1]", 0, lambda: None, lambda: {"ok": True}, CollectorRegistry())
    try:
        server.start()
    except TenantwatchError:
        pytest.skip("IPv6 loopback not configured")
    try:
        assert get_json(f"http://[::1]:{server.port}/healthz") == (200, {"ok": True})
    finally:
        server.stop()


# ---------------------------------------------------------------------------- TLS, basic auth


def _cert(tmp_path) -> tuple[str, str]:
    import subprocess

    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True,
                   timeout=60)
    return str(cert), str(key)


def test_tls_and_basic_auth_from_an_exporter_toolkit_web_config(tmp_path) -> None:
    import base64
    import ssl

    import bcrypt

    from tenantwatch.exporters.web_config import load_web_config

    cert, key = _cert(tmp_path)
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    web_file = tmp_path / "web.yml"
    web_file.write_text(f"tls_server_config: {{cert_file: {cert}, key_file: {key}}}\n"
                        f"basic_auth_users: {{prometheus: '{hashed}'}}\n")
    web = load_web_config(str(web_file))
    api = ApiServer("127.0.0.1", 0, lambda: make_snapshot(), lambda: {"ok": True},
                    CollectorRegistry(), web=web)
    api.start()
    try:
        ctx = ssl.create_default_context(cafile=cert)
        url = f"https://127.0.0.1:{api.port}/metrics"

        def fetch(auth: str | None) -> int:
            req = urllib.request.Request(url, headers={"Authorization": auth} if auth else {})
            try:
                with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                assert e.headers["WWW-Authenticate"] == 'Basic realm="tenantwatch"'
                return e.code

        good = "Basic " + base64.b64encode(b"prometheus:s3cret").decode()
        bad = "Basic " + base64.b64encode(b"prometheus:guess").decode()
        assert fetch(good) == 200 and fetch(good) == 200  # the second from the cache
        assert fetch(None) == 401 and fetch(bad) == 401
        assert fetch("Basic !!notbase64") == 401
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP: no answer
            urllib.request.urlopen(f"http://127.0.0.1:{api.port}/metrics", timeout=5)
        assert fetch(good) == 200  # the server goes on after a failed handshake
    finally:
        api.stop()


@pytest.mark.parametrize(("text", "words"), [
    ("basic_auth_users: {alice: plaintext}\n", "bcrypt hash"),
    ("tls_server_config: {cert_file: /nope}\n", "key_file is required"),
    ("tls_server_config: {cert_file: /nope.crt, key_file: /nope.key}\n", "cannot load"),
    ("tls_server_config: {cert_file: a, key_file: b, min_version: TLS10}\n", "min_version"),
    ("tsl_server_config: {}\n", "unknown keys"),
    ("- a list\n", "a mapping"),
])
def test_a_bad_web_config_is_a_config_error_naming_the_problem(tmp_path, text, words) -> None:
    from tenantwatch.exporters.web_config import load_web_config

    f = tmp_path / "web.yml"
    f.write_text(text)
    with pytest.raises(TenantwatchError) as e:
        load_web_config(str(f))
    assert words in str(e.value) and "web_config_file" in str(e.value)
