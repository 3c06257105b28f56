"""A gateway that authenticates before it writes the trusted header, end to end:
examples/nginx-auth-request.conf as shipped (ports filled in), an auth service mapping API keys
to tenants, a backend, and the daemon trusting X-Tenant-Context on the upstream side.

A client with acme's key is counted as acme, trusted.  A client with evil's key that sends
"X-Tenant-ID: acme" and "X-Tenant-Context: acme" is counted as evil upstream (trusted: the
gateway authenticated it) and only as a *claimed* acme on the client side: it adds nothing to
acme's trusted requests, so it can neither get acme counted as trusted nor capped (enforcement
acts on trusted verdicts only: docs/enforcement.md, "Policy").
"""

from __future__ import annotations

import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import _free_port, require_root
from tests.e2e.auth_service import auth_handler
from tests.e2e.conftest import CONFIG_TEMPLATE, Daemon

REPO = Path(__file__).resolve().parents[2]
KEYS = {"Bearer k-acme": "acme", "Bearer k-evil": "evil"}


class _Backend(BaseHTTPRequestHandler):
    """Answers with the X-Tenant-Context it received: what the gateway wrote upstream."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = (self.headers.get("X-Tenant-Context") or "-").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def serve(handler) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def get(port: int, key: str, headers: dict[str, str]) -> tuple[int, bytes]:
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", "/x", headers={"Authorization": key, **headers})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, nginx_binary):
    require_root()
    work = tmp_path_factory.mktemp("auth-request")
    auth, backend = serve(auth_handler(KEYS)), serve(_Backend)
    port = _free_port()
    conf = (REPO / "examples" / "nginx-auth-request.conf").read_text()
    for name, value in {"@PID@": str(work / "nginx.pid"),
                        "@ERROR_LOG@": str(work / "error.log"),
                        "@TEMP_PATHS@": f"client_body_temp_path {work}/body; "
                                        f"proxy_temp_path {work}/proxy;",
                        "@BACKEND_PORT@": str(backend.server_address[1]),
                        "@AUTH_PORT@": str(auth.server_address[1]),
                        "@LISTEN_PORT@": str(port)}.items():
        conf = conf.replace(name, value)
    assert "@" not in conf.replace("$upstream_http", "")
    (work / "nginx.conf").write_text(conf)
    nginx = subprocess.Popen([nginx_binary, "-p", str(work), "-c", str(work / "nginx.conf"),
                              "-g", "daemon off;"], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if get(port, "Bearer k-acme", {})[0] == 200:
                break
        except OSError:
            time.sleep(0.1)
    else:
        nginx.kill()
        pytest.fail(f"nginx did not come up: {nginx.stderr.read()!r}")
    yield port
    nginx.terminate()
    nginx.wait(10)
    auth.shutdown()
    backend.shutdown()


def test_a_forged_tenant_header_gets_neither_trust_nor_counts_of_another_tenant(
        gateway, daemon_factory):
    d: Daemon = daemon_factory()
    assert "X-Tenant-Context, side: client, trusted: true" in CONFIG_TEMPLATE
    forged = {"X-Tenant-ID": "acme", "X-Tenant-Context": "acme"}
    for _ in range(12):
        assert get(gateway, "Bearer k-acme", {}) == (200, b"acme")
    for _ in range(9):  # the gateway writes the authenticated tenant, not the forged one
        assert get(gateway, "Bearer k-evil", forged) == (200, b"evil")
    assert get(gateway, "Bearer nobody", forged)[0] == 401  # never reaches the backend

    def rows():
        _, doc = d.get_json("/api/v1/tenants")
        return {(t["side"], t["tenant"]): t for t in doc["tenants"]}

    deadline = time.monotonic() + 15
    got = rows()
    while time.monotonic() < deadline and not (
            got.get(("client", "acme"), {}).get("requests") == 12
            and got.get(("client", "evil"), {}).get("requests") == 9):
        time.sleep(0.3)
        got = rows()
    # upstream (what the gateway authenticated): exact, trusted
    assert got[("client", "acme")]["requests"] == 12 and got[("client", "acme")]["trusted"]
    assert got[("client", "evil")]["requests"] == 9 and got[("client", "evil")]["trusted"]
    # client side: the forged claim is a claim, never trusted
    server_acme = got.get(("server", "acme"))
    assert server_acme is not None and server_acme["requests"] == 10  # 9 + the refused one
    assert server_acme["trusted"] is False
