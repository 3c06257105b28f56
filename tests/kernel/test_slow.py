"""Slow requests reach user space as rate-limited events; fast ones never do."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

SERVER = r"""
import ctypes, time
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
ctypes.CDLL(None).prctl(15, b"python3-twsrv", 0, 0, 0)
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def _go(self):
        if self.path.startswith("/sleep"):
            time.sleep(0.07)
        code = 404 if self.path == "/sleepmissing" else 200
        self.send_response(code)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")
    do_GET = do_POST = _go
    def log_message(self, *a):
        pass
ThreadingHTTPServer.daemon_threads = True
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"""


def _req(s: socket.socket, method: str, path: str, tenant: str) -> None:
    body = "Content-Length: 0\r\n" if method == "POST" else ""
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: t\r\nX-Tenant-ID: {tenant}\r\n{body}\r\n"
              .encode())
    got = b""
    while not got.endswith(b"ok\n"):
        chunk = s.recv(4096)
        assert chunk
        got += chunk


def _server(probes):
    proc = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    probes.set_targets({proc.pid})
    probes.drain()
    return proc, port


def test_slow_requests_become_events_with_method_status_and_identity(probes):
    proc, port = _server(probes)
    try:
        with socket.create_connection(("127.0.0.1", port)) as s:
            for _ in range(5):
                _req(s, "GET", "/", "fast")
            _req(s, "GET", "/sleep", "slowpoke")
            _req(s, "POST", "/sleepmissing", "slowpoke")
        time.sleep(0.1)
        tick = probes.drain()
    finally:
        proc.kill()
        proc.wait(5)
        probes.set_targets(set())
    names = {c.key: c.raw_value for c in tick.identities if c.raw_value}
    got = sorted((names.get(e.key), e.method, e.status, e.side.value) for e in tick.slow)
    assert got == [(b"slowpoke", "GET", 200, "server"), (b"slowpoke", "POST", 404, "server")]
    assert all(e.latency_ns >= 50_000_000 for e in tick.slow)
    assert all(e.tgid == proc.pid for e in tick.slow)


def test_slow_events_are_rate_limited_and_the_rest_counted(probes):
    proc, port = _server(probes)

    def client() -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            for _ in range(12):
                _req(s, "GET", "/sleep", "flood")

    try:
        threads = [threading.Thread(target=client) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        time.sleep(0.1)
        tick = probes.drain()
    finally:
        proc.kill()
        proc.wait(5)
        probes.set_targets(set())
    sent, limited = len(tick.slow), tick.lost.get("slow_rate_limited", 0)
    assert sent + limited == 72  # every slow request is an event or a counted drop
    assert limited > 0 and sent >= 5
