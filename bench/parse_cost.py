#!/usr/bin/env python3
"""BPF time per parsed message head, by head size: the parser alone, without nginx.

Loads the probes (`tenantwatch.kernel.loader.HttpProbes`, as the daemon does), starts a traced
server process (comm "python3-twsrv") that reads each request with one recv(2) and answers it
with one send(2), and drives it from this (untraced) process over keep-alive loopback
connections. With `kernel.bpf_stats_enabled` on (restored after), it reads the run time of the
exit programs from /proc/self/fdinfo and gives, per workload:

  request head   ns per sys_exit_recvfrom run (the request head read and parsed, identity hashed,
                 request counted)
  response head  ns per sys_exit_sendto run (status, framing, latency and counts; the body after
                 the head is skipped by arithmetic)

Workloads: `small` (a 60-byte request head, a 40-byte response head) and `browser` (the heads
of bench/nginx_ab.py --heads browser: ~900 bytes of request, ~350 of response, 1 KiB of JSON).
The difference between them, divided by the difference in head bytes, is the parser's cost per
head byte. The exits of untraced processes do not count here (they return at the target check).

A benchmark, not a test: it prints numbers and exits 0 unless something failed to run. Root.

    sudo .venv/bin/python bench/parse_cost.py --requests 20000
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

from harness.bench import BPF_STATS_SYSCTL
from harness.workload import (
    BROWSER_ACCEPT,
    BROWSER_COOKIE,
    BROWSER_JSON,
    BROWSER_PATH,
    BROWSER_QUERY,
    BROWSER_UA,
)

SERVER = r"""
import ctypes, socket, sys
ctypes.CDLL(None).prctl(15, b"python3-twsrv", 0, 0, 0)  # PR_SET_NAME
small, big = bytes.fromhex(sys.argv[1]), bytes.fromhex(sys.argv[2])
ls = socket.create_server(("127.0.0.1", 0))
print(ls.getsockname()[1], flush=True)
while True:
    c, _ = ls.accept()
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.send(big if d.startswith(b"GET /api") else small)
    c.close()
"""


def heads() -> dict[str, tuple[bytes, bytes]]:
    """{workload: (request, response)}."""
    body = BROWSER_JSON.encode()
    browser_req = (
        f"GET {BROWSER_PATH}{BROWSER_QUERY} HTTP/1.1\r\nHost: api.example.com\r\n"
        f"User-Agent: {BROWSER_UA}\r\nAccept: {BROWSER_ACCEPT}\r\n"
        "Accept-Language: en-US,en;q=0.9,de;q=0.8\r\nAccept-Encoding: gzip, deflate, br\r\n"
        "Referer: https://app.example.com/orders?view=list&filter=open\r\n"
        f"Cookie: {BROWSER_COOKIE}\r\nX-Request-ID: 0000a1b2-0001-4001-a001-000000000001\r\n"
        "X-Tenant-ID: t1\r\n\r\n").encode()
    browser_resp = (
        "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 06 Dec 2026 15:00:00 GMT\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: keep-alive\r\n"
        "Cache-Control: private, no-cache, no-store, max-age=0, must-revalidate\r\n"
        'ETag: "W/5f3c9a1e-4b2c-8d7f"\r\nVary: Accept-Encoding, Origin, Authorization\r\n'
        "Strict-Transport-Security: max-age=31536000; includeSubDomains; preload\r\n"
        "X-Request-ID: 0000a1b2-0001-4001-a001-000000000001\r\n"
        "X-Content-Type-Options: nosniff\r\n\r\n").encode() + body
    small_req = b"GET /direct HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nX-Tenant-ID: t1\r\n\r\n"
    small_resp = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"
    return {"small": (small_req, small_resp), "browser": (browser_req, browser_resp)}


def prog_stats(probes) -> dict[str, tuple[int, int]]:
    """{program name: (run_time_ns, run_cnt)} of the loaded module's programs."""
    out = {}
    for name, fd in probes.program_fds().items():
        try:
            with open(f"/proc/self/fdinfo/{fd}") as f:
                kv = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        out[name] = (int(kv.get("run_time_ns", "0")), int(kv.get("run_cnt", "0")))
    return out


def drive(port: int, req: bytes, resp_len: int, n: int, conns: int = 1) -> None:
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(conns)]
    try:
        for i in range(n):
            s = socks[i % conns]
            s.sendall(req)
            got = 0
            while got < resp_len:
                chunk = s.recv(65536)
                if not chunk:
                    raise RuntimeError("server closed")
                got += len(chunk)
    finally:
        for s in socks:
            s.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20000, help="exchanges per run [20000]")
    ap.add_argument("--rounds", type=int, default=3, help="runs per workload, interleaved [3]")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/parse_cost.py must run as root (BPF)", file=sys.stderr)
        return 2
    from tenantwatch.kernel.loader import HttpProbes, KernelSource
    from tenantwatch.kernel.records import Side

    work = heads()
    probes = HttpProbes(
        sources=[KernelSource("x-tenant-context", (Side.CLIENT,)),
                 KernelSource("x-tenant-id", (Side.SERVER,))],
        process_names=["python3-twsrv"], latency_bounds_seconds=(0.001, 0.01, 0.1, 1.0))
    stats_was = BPF_STATS_SYSCTL.read_text().strip()
    server = None
    res: dict[tuple[str, str], list[float]] = {}
    try:
        probes.load()
        print(f"probes loaded: {probes.window} parser steps a run", flush=True)
        BPF_STATS_SYSCTL.write_text("1\n")
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER, work["small"][1].hex(), work["browser"][1].hex()],
            stdout=subprocess.PIPE, text=True)
        port = int(server.stdout.readline())
        probes.set_targets({server.pid})
        drive(port, work["small"][0], len(work["small"][1]), 500)  # warm-up
        for rnd in range(args.rounds):
            for w in (("small", "browser") if rnd % 2 == 0 else ("browser", "small")):
                req, resp = work[w]
                before = prog_stats(probes)
                t0 = time.monotonic()
                drive(port, req, len(resp), args.requests)
                wall = time.monotonic() - t0
                after = prog_stats(probes)
                probes.drain()
                for prog, kind in (("tracepoint__syscalls__sys_exit_recvfrom", "request"),
                                   ("tracepoint__syscalls__sys_exit_sendto", "response")):
                    ns = after[prog][0] - before[prog][0]
                    res.setdefault((w, kind), []).append(ns / args.requests)
                print(f"  round {rnd + 1} {w:<8} {args.requests / wall:>8.0f} exchanges/s",
                      flush=True)
    finally:
        BPF_STATS_SYSCTL.write_text(stats_was + "\n")
        if server is not None:
            server.kill()
            server.wait(5)
        probes.close()
    print(f"\n{'workload':<9} {'head':<9} {'bytes':>6} {'ns/head':>8}  (median of "
          f"{args.rounds} x {args.requests})")
    for w in ("small", "browser"):
        for kind, i in (("request", 0), ("response", 1)):
            data = work[w][i]
            nbytes = data.index(b"\r\n\r\n") + 4
            print(f"{w:<9} {kind:<9} {nbytes:>6} {statistics.median(res[(w, kind)]):>8.0f}")
    for kind, i in (("request", 0), ("response", 1)):
        db = (work["browser"][i].index(b"\r\n\r\n") - work["small"][i].index(b"\r\n\r\n"))
        dns = statistics.median(res[("browser", kind)]) - statistics.median(res[("small", kind)])
        print(f"per head byte ({kind}): {dns / db:.2f} ns")
    return 0


if __name__ == "__main__":
    sys.exit(main())
