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

    sudo .venv/bin/python bench/h2_load.py [--seconds 10] [--rounds 3] [--tls]

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
    - {{header: X-Tenant-Context, side: client, trusted: true}}
    - {{header: X-Tenant-ID, side: server}}
    - {{jwt: {{claim: tenant_id}}, side: server}}
"""
# The cost of decoding everything: no budget shedding (--budget-ms sets one; 0 leaves the key
# out, for a daemon older than the budget)
BUDGET_CONFIG = "capture: {{h2_budget_ms_per_tick: {budget}}}\n"


def jwt(tenant: str) -> str:
    def b64(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    claims = {"sub": "user-4711", "tenant_id": tenant, "iss": "https://idp.example.com",
              "aud": "api", "exp": 1900000000, "iat": 1700000000, "scope": "read write"}
    return ("Bearer " + b64({"alg": "RS256", "kid": "k1", "typ": "JWT"}) + "." + b64(claims)
            + "." + "s" * 342)


def headers(tenant: str) -> list[str]:
    h = [f"user-agent: {UA}", "content-type: application/json",
         "accept: application/json, text/plain, */*", "accept-language: en-US,en;q=0.5",
         "accept-encoding: gzip, deflate, br"]
    h += [f"x-custom-{i}: value-{i}-{tenant}" for i in range(12)]
    h.append(f"authorization: {jwt(tenant)}" if tenant == TENANTS[2] else f"x-tenant-id: {tenant}")
    return h


def run_h2load(url: str, seconds: float, rate: int | None) -> tuple[int, float]:
    """Three h2load processes at once, one per tenant: (requests succeeded, wall seconds).
    `rate`: requests per second in all (h2load --rps per client), None: as fast as it goes."""
    procs = []
    start = time.monotonic()
    for tenant in TENANTS:
        argv = ["h2load", "-c", str(CLIENTS_PER_TENANT), "-m", str(STREAMS),
                "-D", str(max(1, round(seconds)))]
        if rate:
            argv.append(f"--rps={max(1, rate // (len(TENANTS) * CLIENTS_PER_TENANT))}")
        for h in headers(tenant):
            argv += ["-H", h]
        procs.append(subprocess.Popen([*argv, f"{url}/api/{tenant}/orders?page=2"],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    done = 0
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 60)
        m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
        if p.returncode != 0 or m is None:
            raise BenchError(f"h2load failed:\n{out[-2000:]}")
        done += int(m.group(2))
    return done, time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tls", action="store_true", help="h2 over TLS (ALPN) instead of h2c")
    ap.add_argument("--tenantwatch", default=default_tenantwatch())
    ap.add_argument("--rate", type=int, default=6000,
                    help="requests per second in all (0: as fast as h2load goes) [6000]")
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
        cert, key = make_cert(tmp)
        h2c, h2s = free_port(), free_port()
        (tmp / "gw.conf").write_text(GATEWAY.format(tmp=tmp, upstream=upstream.listen_port,
                                                    h2c=h2c, h2s=h2s, cert=cert, key=key))
        subprocess.run(["nginx", "-p", str(tmp), "-c", str(tmp / "gw.conf")], check=True)
        port = free_port()
        (tmp / "tenantwatch.yaml").write_text(
            DAEMON_CONFIG.format(port=port)
            + (BUDGET_CONFIG.format(budget=args.budget_ms) if args.budget_ms > 0 else ""))
        daemon = Daemon(args.tenantwatch, tmp / "tenantwatch.yaml", port, tmp / "daemon.log")
        url = f"https://127.0.0.1:{h2s}" if args.tls else f"http://127.0.0.1:{h2c}"
        rows = []
        try:
            daemon.start()
            warm, _ = run_h2load(url, 1.0, args.rate)  # warm: connections to the upstream, caches
            # the warm-up's requests are counted before the first round starts (else a tick
            # that lands late adds them to round 1: counted/sent 1.02 once)
            daemon.settled_counts(at_least=warm)
            for rnd in range(1, args.rounds + 1):
                before, c0 = daemon.counts(), daemon.cpu_ticks()
                done, wall = run_h2load(url, args.seconds, args.rate)
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
                      f"{counted / done:.5f}", flush=True)
        finally:
            daemon.stop()
            subprocess.run(["nginx", "-p", str(tmp), "-c", str(tmp / "gw.conf"), "-s", "stop"],
                           check=False)
            upstream.stop()
    print(f"median: {median([r[0] for r in rows]):.0f} req/s, daemon "
          f"{median([r[1] for r in rows]):.1f} % of a core, "
          f"{median([r[2] for r in rows]):.1f} % per 10k req/s "
          f"({'h2 over TLS' if args.tls else 'h2c'}, {len(TENANTS)} tenants x "
          f"{CLIENTS_PER_TENANT} connections x {STREAMS} streams, 1 in 3 with a JWT)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
