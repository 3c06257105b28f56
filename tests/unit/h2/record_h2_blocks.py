#!/usr/bin/env python3
"""Record HTTP/2 header block streams from real encoders, for test_hpack_lazy.py.

Starts nginx with an h2c listener (answers with a few response headers, some per request),
puts a TCP relay in front of it that keeps each direction's bytes, and drives it with curl
(--http2-prior-knowledge, many URLs on one connection) and nghttp (-n, several requests, with
a bearer token and custom headers).  Each direction of each connection becomes one stream of
header blocks (HEADERS + CONTINUATION fragments, in order), written as hex to
recorded_h2_blocks.json.  Run as any user with nginx, curl and nghttp (nghttp2-client):

    .venv/bin/python tests/unit/h2/record_h2_blocks.py
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tenantwatch.h2.frames import (
    CONTINUATION,
    HEADERS,
    PUSH_PROMISE,
    header_fragment,
)

OUT = Path(__file__).with_name("recorded_h2_blocks.json")
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
TOKEN = "Bearer eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0." + "eyJ0ZW5hbnRfaWQiOiJhY21lIn0." + "s" * 342

NGINX = """\
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port} http2;
        location / {{
            add_header X-Served-Tenant $http_x_tenant_id;
            add_header X-Request-ID $request_id;
            add_header Cache-Control "private, no-cache";
            return 200 "ok";
        }}
        location /missing {{ return 404; }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Relay:
    """Accepts connections and pipes them to the target, keeping each direction's bytes."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conns: list[dict[str, bytearray]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.listener.accept()
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", self.target))
            rec = {"request": bytearray(), "response": bytearray()}
            self.conns.append(rec)
            for a, b, key in ((c, u, "request"), (u, c, "response")):
                threading.Thread(target=self._pipe, args=(a, b, rec[key]), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, keep: bytearray) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            keep += data
            dst.sendall(data)


def blocks(data: bytes) -> list[str]:
    """The header blocks of one direction's raw bytes (DATA payloads included, unlike what the
    kernel hands tenantwatch/h2, so the frames are walked here)."""
    data = data.removeprefix(PREFACE)
    out, block, pos = [], [], 0
    while len(data) - pos >= 9:
        length = int.from_bytes(data[pos:pos + 3], "big")
        ftype, flags = data[pos + 3], data[pos + 4]
        payload = data[pos + 9:pos + 9 + length]
        pos += 9 + length
        if ftype in (HEADERS, PUSH_PROMISE, CONTINUATION):
            block.append(header_fragment(ftype, flags, payload) or b"")
            if flags & 0x4:  # END_HEADERS
                out.append(b"".join(block).hex())
                block = []
    return out


def main() -> int:
    for tool in ("nginx", "curl", "nghttp"):
        if shutil.which(tool) is None:
            print(f"{tool} is needed", file=sys.stderr)
            return 1
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        (Path(tmp) / "nginx.conf").write_text(NGINX.format(tmp=tmp, port=port))
        nginx = subprocess.Popen(["nginx", "-p", tmp, "-c", f"{tmp}/nginx.conf"])
        try:
            time.sleep(0.5)
            relay = Relay(port)
            base = f"http://127.0.0.1:{relay.port}"
            runs = []
            urls = [f"{base}/v1/orders/{i}?expand=items&page={i % 3}" for i in range(40)]
            urls += [f"{base}/missing"] * 3
            runs.append(("curl", ["curl", "-s", "-o", "/dev/null", "--http2-prior-knowledge",
                                  "-H", "X-Tenant-ID: acme", "-H", "Accept: application/json",
                                  "-H", "X-Request-ID: 7f3c2a", *urls]))
            runs.append(("curl, no custom headers",
                         ["curl", "-s", "-o", "/dev/null", "--http2-prior-knowledge", *urls[:20]]))
            for tenant in ("globex", "initech"):
                runs.append((f"nghttp {tenant}", [
                    "nghttp", "-n", "-H", f"x-tenant-id: {tenant}", "-H", f"authorization: {TOKEN}",
                    "-H", "user-agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Firefox/128.0",
                    "-H", "accept-language: en-US,en;q=0.5", "-H", "x-custom-1: a" * 1,
                    *(f"{base}/api/{tenant}/items/{i}" for i in range(30))]))
            runs.append(("nghttp, a 512-byte encoder table", [
                "nghttp", "-n", "--encoder-header-table-size=512", "-H", "x-tenant-id: umbrella",
                "-H", f"authorization: {TOKEN}", "-H", "x-custom-2: b",
                *(f"{base}/api/umbrella/{i}" for i in range(30))]))
            runs.append(("h2load", [
                "h2load", "-n", "200", "-c", "1", "-m", "10", "-H", "x-tenant-id: hooli",
                "-H", "user-agent: h2load-recorder", "-H", "accept: application/json",
                f"{base}/v1/hooli/orders", f"{base}/v1/hooli/items"]))
            for name, argv in runs:
                before = len(relay.conns)
                # curl may exit 16 at the relay's close after its last response: what counts
                # is the blocks recorded
                subprocess.run(argv, check=False, timeout=60, stdout=subprocess.DEVNULL)
                time.sleep(0.3)
                for rec in relay.conns[before:]:
                    for key in ("request", "response"):
                        found = blocks(bytes(rec[key]))
                        if found:
                            streams_out.append({"source": f"{name}: {key}s", "blocks": found})
        finally:
            nginx.terminate()
            nginx.wait(10)
    OUT.write_text(json.dumps(streams_out, indent=1) + "\n")
    print(f"wrote {OUT}: {len(streams_out)} streams, "
          f"{sum(len(s['blocks']) for s in streams_out)} blocks")
    return 0


streams_out: list[dict] = []

if __name__ == "__main__":
    sys.exit(main())
