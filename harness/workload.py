"""The workload of the nginx benchmarks: tenants, wrk scripts (small heads, or browser-sized
heads with `--heads browser`), a wrk run and its report, where nginx and wrk run (`--layout`), the
untraced upstream nginx, and a TLS listener with a self-signed certificate."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from harness.bench import BenchError
from harness.gateway import Gateway
from harness.processes import free_port

TENANTS = ("t1", "t2", "t3", "t4")
WRK_SLACK_S = 30.0  # a wrk run gets --seconds plus this before it is killed

# The end of both wrk scripts: hand out the precomputed requests in turn.
WRK_LUA_REQUEST = """
request = function()
  i = i % #requests + 1
  return requests[i]
end
"""

WRK_LUA = """\
-- written by bench/nginx_ab.py: rotate X-Tenant-ID over the tenants, one per request.
-- Each wrk thread has its own Lua state, so each rotates independently.
local tenants = {%(tenants)s}
local requests = {}
local i = 0

init = function(args)
  for k, t in ipairs(tenants) do
    requests[k] = wrk.format("GET", "%(path)s", {["Host"] = "%(host)s", ["X-Tenant-ID"] = t})
  end
end

"""

# --heads browser: what a browser-facing API gateway sees (issue 11).  Request heads of about
# 900 bytes (a ~400-byte session cookie, the usual browser headers, a request id, the tenant,
# a query string), answered by the untraced upstream nginx with a ~350-byte response head and
# a 1 KiB JSON body; the gateway proxies both ways, so each head crosses the daemon's parser
# twice (client -> gateway -> upstream, and back).
BROWSER_PATH = "/api/v1/orders"
BROWSER_QUERY = "?page=2&limit=50&sort=-created_at&fields=id,status,total,currency,items"
BROWSER_UA = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/124.0.0.0 Safari/537.36")
BROWSER_ACCEPT = ("text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
                  "application/json;q=0.8,*/*;q=0.7")
BROWSER_COOKIE = ("session=eyJ1c2VyIjoiYWxpY2UiLCJyb2xlcyI6WyJhZG1pbiJdLCJleHAiOjE3MzAwMDAwMDB9"
                  ".c2lnbmF0dXJlLXBsYWNlaG9sZGVyLXNpZ25hdHVyZQ; _ga=GA1.2.1234567890.1712345678; "
                  "_gid=GA1.2.987654321.1712345678; csrftoken=Zx8vK2mQ9pL4nR7sT1uW3yB6dF0hJ5kX; "
                  "prefs=theme%3Ddark%26lang%3Den-US%26tz%3DEurope%252FBerlin; "
                  "ab_test=checkout_v2%3Dvariant_b%7Csearch_v3%3Dcontrol; "
                  "consent=analytics%3A1%2Cmarketing%3A0%2Cfunctional%3A1")
BROWSER_REQUESTS_PER_TENANT = 8  # distinct request ids per tenant (precomputed in wrk's Lua)
BROWSER_JSON = (
    '{"data":[' + ",".join(
        f'{{"id":"ord_{i:04d}","status":"shipped","total":{40 + i}.{i % 100:02d},'
        '"currency":"EUR","items":3}' for i in range(12)) + '],"page":2,"limit":50}')
BROWSER_UPSTREAM = (
    "        location /api/ {\n"
    "            default_type application/json;\n"
    '            add_header Cache-Control "private, no-cache, no-store, max-age=0, '
    'must-revalidate";\n'
    "            add_header ETag '\"W/5f3c9a1e-4b2c-8d7f\"';\n"
    '            add_header Vary "Accept-Encoding, Origin, Authorization";\n'
    '            add_header Strict-Transport-Security "max-age=31536000; includeSubDomains; '
    'preload";\n'
    "            add_header X-Request-ID $http_x_request_id;\n"
    "            add_header X-Content-Type-Options nosniff;\n"
    f"            return 200 '{BROWSER_JSON}';\n"
    "        }\n"
    "        access_log off;")

WRK_BROWSER_LUA = """\
-- written by bench/nginx_ab.py --heads browser: ~900-byte browser request heads, tenants
-- rotating, a few request ids per tenant (precomputed: wrk's CPU stays on the load).
local tenants = {%(tenants)s}
local requests = {}
local i = 0

init = function(args)
  for k, t in ipairs(tenants) do
    for r = 1, %(per_tenant)d do
      local rid = string.format("%%08x-%%04x-4%%03x-a%%03x-%%012x", k * 7919 + r, r, k, r, k * r)
      requests[#requests + 1] = wrk.format("GET", "%(path)s", {
        ["Host"] = "%(host)s",
        ["User-Agent"] = "%(ua)s",
        ["Accept"] = "%(accept)s",
        ["Accept-Language"] = "en-US,en;q=0.9,de;q=0.8",
        ["Accept-Encoding"] = "gzip, deflate, br",
        ["Referer"] = "https://app.example.com/orders?view=list&filter=open",
        ["Cookie"] = "%(cookie)s",
        ["X-Request-ID"] = rid,
        ["X-Tenant-ID"] = t,
      })
    end
  end
end

"""

# --response-check (issue 17): the upstream marks each response with the tenant it served.
SERVED_HEADER = "            add_header X-Served-Tenant $http_x_tenant_context;\n"


def make_cert(tmp: Path) -> tuple[Path, Path]:
    """A self-signed RSA-2048 certificate for 127.0.0.1: (cert.pem, key.pem)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise BenchError("--tls needs the openssl command")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    p = subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                       capture_output=True, text=True, timeout=60, check=False)
    if p.returncode != 0:
        raise BenchError(f"openssl req failed:\n{p.stderr}")
    return cert, key


def tls_listener(tmp: Path) -> dict[str, Any]:
    """Gateway keyword arguments for a TLS listener with a certificate made in tmp."""
    cert, key = make_cert(tmp)
    return {"tls_port": free_port(), "ssl_certificate": cert, "ssl_certificate_key": key}


def write_wrk_script(tmp: Path, path: str, host: str, heads: str = "small") -> Path:
    script = tmp / "tenants.lua"
    tenants = ", ".join(f'"{t}"' for t in TENANTS)
    if heads == "browser":
        text = WRK_BROWSER_LUA % {
            "tenants": tenants, "path": path, "host": host, "ua": BROWSER_UA,
            "accept": BROWSER_ACCEPT, "cookie": BROWSER_COOKIE,
            "per_tenant": BROWSER_REQUESTS_PER_TENANT,
        }
    else:
        text = WRK_LUA % {"tenants": tenants, "path": path, "host": host}
    script.write_text(text + WRK_LUA_REQUEST)
    return script


_RPS_RE = re.compile(r"^Requests/sec:\s+([0-9.]+)", re.MULTILINE)
_TOTAL_RE = re.compile(r"^\s*(\d+) requests in ([0-9.]+)(us|ms|s|m|h)", re.MULTILINE)
_SOCKERR_RE = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON2XX_RE = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_UNIT_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_wrk(out: str) -> tuple[float, int, float, int, int]:
    """wrk's report -> (requests/sec, requests, seconds, socket errors, non-2xx/3xx)."""
    rps = _RPS_RE.search(out)
    total = _TOTAL_RE.search(out)
    if rps is None or total is None:
        raise BenchError(f"could not parse wrk output:\n{out}")
    sockerr = _SOCKERR_RE.search(out)
    non2xx = _NON2XX_RE.search(out)
    return (
        float(rps.group(1)),
        int(total.group(1)),
        float(total.group(2)) * _UNIT_S[total.group(3)],
        sum(int(x) for x in sockerr.groups()) if sockerr else 0,
        int(non2xx.group(1)) if non2xx else 0,
    )


def run_wrk(wrk: str, url: str, script: Path, args: argparse.Namespace,
            seconds: float) -> tuple[float, int, float, int, int]:
    cmd = [*getattr(args, "wrk_prefix", []), wrk, f"-t{args.threads}", f"-c{args.connections}",
           f"-d{seconds:g}s", "--timeout", "5s", "-s", str(script), url]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, check=False,
                           timeout=seconds + WRK_SLACK_S)
    except subprocess.TimeoutExpired as e:  # subprocess.run kills the child before raising
        raise BenchError(f"wrk did not finish within {seconds + WRK_SLACK_S:g}s") from e
    if p.returncode != 0:
        raise BenchError(f"wrk exited {p.returncode}:\n{p.stderr}{p.stdout}")
    return parse_wrk(p.stdout)


def add_load_arguments(p: argparse.ArgumentParser) -> None:
    """wrk's and nginx's sizes and where they run (shared by the nginx benchmarks)."""
    p.add_argument("--connections", type=int, default=20, help="wrk connections [20]")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (shared layout) [2]")
    p.add_argument("--workers", type=int, default=2,
                   help="nginx worker processes (shared layout) [2]")
    p.add_argument("--layout", choices=("pinned", "shared"), default="pinned",
                   help="pinned: one nginx worker on the last CPU, wrk (one thread) on CPU 0, so "
                        "nginx is the bottleneck and runs are repeatable (±1%%); shared: "
                        "--workers nginx workers and --threads wrk threads wherever the "
                        "scheduler puts them (runs vary by ±10%%, bimodal) [pinned]")


def apply_layout(args: argparse.Namespace, p: argparse.ArgumentParser) -> dict[str, Any]:
    """Settle workers/threads/wrk_prefix for --layout; gives Gateway keyword arguments."""
    args.wrk_prefix = []
    args.upstream_affinity = None
    if args.layout == "shared":
        return {}
    cpus = os.cpu_count() or 1
    if cpus < 2:
        p.error("--layout pinned needs 2 CPUs or more; use --layout shared")
    taskset = shutil.which("taskset")
    if taskset is None:
        p.error("--layout pinned needs taskset (util-linux)")
    args.workers, args.threads = 1, 1
    args.wrk_prefix = [taskset, "-c", "0"]
    args.upstream_affinity = "0" * (cpus - 1) + "1"  # the upstream nginx shares CPU 0 with wrk
    return {"cpu_affinity": "1" + "0" * (cpus - 1)}


def start_upstream(tmp: Path, backend_port: int, heads: str,
                   served_header: bool = False, cpu_affinity: str | None = None) -> Gateway:
    """A second nginx under another name (comm), so the daemon does not trace it: `/up` answers
    "ok", or with --heads browser `/api/` answers the browser-sized response head and JSON
    (with `served_header`, marked with X-Served-Tenant: the request's X-Tenant-Context)."""
    link = tmp / "tw-bench-upstream"
    link.symlink_to(Path(shutil.which("nginx") or "/usr/sbin/nginx").resolve())
    upstream = Gateway(
        tmp / "upstream", free_port(), backend_port, workers=1, nginx=str(link),
        extra_server=(BROWSER_UPSTREAM.replace("            return 200", SERVED_HEADER +
                                               "            return 200")
                      if served_header else BROWSER_UPSTREAM) if heads == "browser" else
        '        location = /up { return 200 "ok\\n"; }\n        access_log off;',
        cpu_affinity=cpu_affinity)
    upstream.start()
    return upstream


def add_heads_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--heads", choices=("small", "browser"), default="small",
                   help="small: wrk's minimal heads (~60 bytes); browser: ~900-byte browser "
                        "request heads proxied to the untraced upstream nginx, which answers "
                        "with a ~350-byte head and 1 KiB of JSON (implies --upstream nginx and "
                        f"--path {BROWSER_PATH}{BROWSER_QUERY}) [small]")
