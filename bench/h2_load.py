#!/usr/bin/env python3
"""The daemon's own CPU per HTTP/2 request, end to end: h2load through a traced nginx.

nginx (Debian's, comm `nginx`: the daemon's target) listens for h2c and for h2 over TLS (ALPN)
and proxies (HTTP/1.1 keep-alive) to an untraced upstream nginx that answers the browser-sized
response head of bench/nginx_ab.py --heads browser.  Three h2load clients run at once, one per
tenant, with realistic header blocks: a Firefox user-agent, content-type, accept headers and a
dozen custom headers on every request, and for the third tenant a 600-byte bearer JWT instead
of X-Tenant-ID (so one request in three carries a token); nghttp2's encoder reuses its dynamic
table across a connection's requests.  The daemon (tenantwatch run, from this tree) traces the
gateway; its CPU time (utime + stime of its process) is read over each run, and so is the
number of requests it counted, which must equal h2load's.

With --grpc the same three tenants send unary gRPC calls instead (POST with
`content-type: application/grpc`, `te: trailers` and a length-prefixed 64-byte message, through
nginx's `grpc_pass` to an untraced grpcio server that echoes it); the gateway then speaks HTTP/2
on both legs, so both are decoded in user space.

    sudo .venv/bin/python bench/h2_load.py [--seconds 10] [--rounds 3] [--tls | --grpc]
                                           [--sides both|server]

Prints per run: requests/s, the daemon's CPU in % of one core, that per 10k requests/s, and
the counted/sent ratio; then the medians.  The HTTP/1 figure to compare with is
bench/nginx_ab.py's "cpu%/10k" column on the same machine.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.bench import BenchError, median
from harness.metrics import EVENTS_LOST, parse_metrics
from harness.processes import Daemon, default_tenantwatch, free_port, http_get
from harness.workload import make_cert, start_upstream

TENANTS = ("h2-alpha", "h2-beta", "h2-gamma")  # gamma: a bearer JWT, no X-Tenant-ID
CLIENTS_PER_TENANT = 4
STREAMS = 10  # h2load -m: concurrent streams per connection
UA = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"

GATEWAY = """\
daemon on;
pid {tmp}/gw.pid;
error_log {tmp}/gw-error.log warn;
worker_processes 1;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
    map $http_x_tenant_id $tenant_root {{ default "common"; "~^[a-zA-Z0-9-]+$" $http_x_tenant_id; }}
    upstream up {{ server 127.0.0.1:{upstream}; keepalive 32; }}
    http2_max_concurrent_streams 128;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{grpc} http2;
        location / {{
            grpc_set_header X-Tenant-Context $tenant_root;
            grpc_pass grpc://127.0.0.1:{grpc_backend};
        }}
    }}
    server {{
        listen 127.0.0.1:{h2c} http2;
        listen 127.0.0.1:{h2s} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Tenant-Context $tenant_root;
            proxy_pass http://up;
        }}
    }}
}}
"""

DAEMON_CONFIG = """\
listen: "127.0.0.1:{port}"
targets: [{{process: nginx}}]
tenancy:
  sources:
{client_source}    - {{header: X-Tenant-ID, side: server}}
    - {{jwt: {{claim: tenant_id}}, side: server}}
"""
CLIENT_SOURCE = "    - {header: X-Tenant-Context, side: client, trusted: true}\n"


def daemon_config(port: int, budget_ms: float, server_only: bool) -> str:
    """The cost of decoding everything: no budget shedding (--budget-ms sets one; 0 leaves the
    key out, for a daemon older than the budget).  ``server_only``: capture.sides [server] (the
    upstream leg untraced, and so no source on it)."""
    capture = []
    if budget_ms > 0:
        capture.append(f"h2_budget_ms_per_tick: {budget_ms}")
    if server_only:
        capture.append("sides: [server]")
    return (DAEMON_CONFIG.format(port=port, client_source="" if server_only else CLIENT_SOURCE)
            + (f"capture: {{{', '.join(capture)}}}\n" if capture else ""))


def jwt(tenant: str) -> str:
    def b64(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    claims = {"sub": "user-4711", "tenant_id": tenant, "iss": "https://idp.example.com",
              "aud": "api", "exp": 1900000000, "iat": 1700000000, "scope": "read write"}
    return ("Bearer " + b64({"alg": "RS256", "kid": "k1", "typ": "JWT"}) + "." + b64(claims)
            + "." + "s" * 342)


# An untraced gRPC server (comm python3): the method tw.Bench/Echo answers its request's bytes.
GRPC_SERVER = r"""
import sys, time
from concurrent import futures
import grpc
handlers = {"Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request)}
server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("tw.Bench", handlers),))
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
server.start()
print("ready", flush=True)
server.wait_for_termination()
"""
GRPC_PATH = "/tw.Bench/Echo"
GRPC_MESSAGE = b"\0" + (64).to_bytes(4, "big") + b"m" * 64  # uncompressed, length-prefixed


def headers(tenant: str, grpc: bool = False) -> list[str]:
    if grpc:
        h = ["user-agent: grpc-python/1.51.1 grpc-c/29.0.0 (linux; chttp2)",
             "content-type: application/grpc", "te: trailers", "grpc-accept-encoding: identity"]
    else:
        h = [f"user-agent: {UA}", "content-type: application/json",
             "accept: application/json, text/plain, */*", "accept-language: en-US,en;q=0.5",
             "accept-encoding: gzip, deflate, br"]
    h += [f"x-custom-{i}: value-{i}-{tenant}" for i in range(12)]
    h.append(f"authorization: {jwt(tenant)}" if tenant == TENANTS[2] else f"x-tenant-id: {tenant}")
    return h


def run_h2load(url: str, seconds: float, rate: int | None,
               grpc_body: Path | None = None) -> tuple[int, int, float]:
    """Three h2load processes at once, one per tenant: (requests succeeded, requests started,
    wall seconds).  A run ends at its duration with its last streams in flight: h2load resets
    them, and the ones the gateway had answered count for the daemon but not as succeeded.
    `rate`: requests per second in all (h2load --rps per client), None: as fast as it goes.
    `grpc_body`: POST that file as a unary gRPC call to GRPC_PATH."""
    procs = []
    start = time.monotonic()
    for tenant in TENANTS:
        argv = ["h2load", "-c", str(CLIENTS_PER_TENANT), "-m", str(STREAMS),
                "-D", str(max(1, round(seconds)))]
        if rate:
            argv.append(f"--rps={max(1, rate // (len(TENANTS) * CLIENTS_PER_TENANT))}")
        for h in headers(tenant, grpc=grpc_body is not None):
            argv += ["-H", h]
        if grpc_body is not None:
            argv += ["-d", str(grpc_body)]
        target = f"{url}{GRPC_PATH}" if grpc_body else f"{url}/api/{tenant}/orders?page=2"
        procs.append(subprocess.Popen([*argv, target],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    done = started = 0
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 60)
        m = re.search(r"requests: \d+ total, (\d+) started, (\d+) done, (\d+) succeeded", out)
        if p.returncode != 0 or m is None:
            raise BenchError(f"h2load failed:\n{out[-2000:]}")
        done += int(m.group(3))
        started += int(m.group(1))
    return done, started, time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--tls", action="store_true", help="h2 over TLS (ALPN) instead of h2c")
    mode.add_argument("--grpc", action="store_true",
                      help="unary gRPC calls through grpc_pass to an untraced grpcio server")
    ap.add_argument("--tenantwatch", default=default_tenantwatch())
    ap.add_argument("--rate", type=int, default=6000,
                    help="requests per second in all (0: as fast as h2load goes) [6000]")
    ap.add_argument("--sides", choices=("both", "server"), default="both",
                    help="the legs traced: both (the default), or the client -> gateway leg "
                    "only (capture.sides: [server])")
    ap.add_argument("--budget-ms", type=float, default=60000,
                    help="capture.h2_budget_ms_per_tick of the daemon [60000: none binding]")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("must run as root (the daemon loads BPF programs)", file=sys.stderr)
        return 2
    for tool in ("h2load", "nginx"):
        if shutil.which(tool) is None:
            print(f"{tool} not found (apt-get install nghttp2-client nginx)", file=sys.stderr)
            return 2
    hz = os.sysconf("SC_CLK_TCK")
    with tempfile.TemporaryDirectory(prefix="tw-h2load-") as t:
        tmp = Path(t)
        upstream = start_upstream(tmp, free_port(), "browser")
        grpc_backend = free_port()
        grpc_server = subprocess.Popen([sys.executable, "-c", GRPC_SERVER, str(grpc_backend)],
                                       stdout=subprocess.PIPE, text=True) if args.grpc else None
        if grpc_server is not None and grpc_server.stdout.readline().strip() != "ready":
            raise BenchError("the grpcio server did not start (pip install grpcio)")
        grpc_body = None
        if args.grpc:
            grpc_body = tmp / "grpc-message.bin"
            grpc_body.write_bytes(GRPC_MESSAGE)
        cert, key = make_cert(tmp)
        h2c, h2s, grpc_port = free_port(), free_port(), free_port()
        (tmp / "gw.conf").write_text(GATEWAY.format(
            tmp=tmp, upstream=upstream.listen_port, h2c=h2c, h2s=h2s, cert=cert, key=key,
            grpc=grpc_port, grpc_backend=grpc_backend))
        subprocess.run(["nginx", "-p", str(tmp), "-c", str(tmp / "gw.conf")], check=True)
        port = free_port()
        (tmp / "tenantwatch.yaml").write_text(
            daemon_config(port, args.budget_ms, args.sides == "server"))
        daemon = Daemon(args.tenantwatch, tmp / "tenantwatch.yaml", port, tmp / "daemon.log")
        url = (f"https://127.0.0.1:{h2s}" if args.tls else
               f"http://127.0.0.1:{grpc_port}" if args.grpc else f"http://127.0.0.1:{h2c}")
        rows = []
        try:
            daemon.start()
            warm, _, _ = run_h2load(url, 1.0, args.rate, grpc_body)  # warm: connections to the upstream, caches
            # the warm-up's requests are counted before the first round starts (else a tick
            # that lands late adds them to round 1: counted/sent 1.02 once)
            daemon.settled_counts(at_least=warm)
            # /healthz answers 200 (with its body) once the tick loop runs
            health = json.loads(http_get(daemon.url + "/healthz", timeout=5)[1] or "{}")
            print(f"daemon's HTTP/2 decoder: {health.get('h2_decoder', 'unknown')}", flush=True)
            for rnd in range(1, args.rounds + 1):
                before, c0 = daemon.counts(), daemon.cpu_ticks()
                done, started, wall = run_h2load(url, args.seconds, args.rate, grpc_body)
                c1 = daemon.cpu_ticks()
                after = daemon.settled_counts(at_least=before.server + done)
                cpu_pct = (c1 - c0) / hz / wall * 100
                rps = done / wall
                counted = after.server - before.server
                rows.append((rps, cpu_pct, cpu_pct / (rps / 10_000), counted / done))
                text = http_get(daemon.url + "/metrics", timeout=5)[1]
                lost = {lb["reason"]: v for lb, v in parse_metrics(text).get(EVENTS_LOST, [])}
                if lost:
                    print(f"  events lost (since start): {lost}", flush=True)
                print(f"round {rnd}: {rps:8.0f} req/s  daemon {cpu_pct:5.1f} % of a core  "
                      f"{cpu_pct / (rps / 10_000):5.1f} %/10k req/s  counted/sent "
                      f"{counted / done:.5f}"
                      + ("" if counted == done else
                         f" ({counted} counted, {done} succeeded, {started} started: "
                         f"{'within' if done <= counted <= started else 'OUTSIDE'} the "
                         "streams in flight at the end)"), flush=True)
        finally:
            daemon.stop()
            subprocess.run(["nginx", "-p", str(tmp), "-c", str(tmp / "gw.conf"), "-s", "stop"],
                           check=False)
            upstream.stop()
            if grpc_server is not None:
                grpc_server.kill()
                grpc_server.wait(5)
    print(f"median: {median([r[0] for r in rows]):.0f} req/s, daemon "
          f"{median([r[1] for r in rows]):.1f} % of a core, "
          f"{median([r[2] for r in rows]):.1f} % per 10k req/s "
          f"({'h2 over TLS' if args.tls else 'gRPC' if args.grpc else 'h2c'}, "
          f"{len(TENANTS)} tenants x "
          f"{CLIENTS_PER_TENANT} connections x {STREAMS} streams, 1 in 3 with a JWT"
          f"{', server leg only' if args.sides == 'server' else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
