#!/usr/bin/env python3
"""The seed's node at full size: many concurrent connections and tenants through one nginx.

nginx (comm `nginx`, the daemon's target; `--workers` workers with reuseport) proxies `/up` to
an untraced upstream nginx (`tw-bench-upstream`).  `--processes` client processes
(harness.many_clients) open `--connections` keep-alive connections between them, from
loopback addresses 127.10x.y.z, and send one request each naming one of `--tenants` tenants in
X-Tenant-ID (`--requests` per connection), as fast as nginx accepts them; the connections are
held open, measured, then closed and measured again.

    sudo .venv/bin/python bench/scale.py                          # 50k connections, 10k tenants
    sudo .venv/bin/python bench/scale.py --connections 100000 --processes 8   # 2x
    sudo .venv/bin/python bench/scale.py --histograms client      # no server-side histograms

Prints: the time to open and answer every connection, the requests counted per side against
those sent (exact per tenant or not), connections_active while open and after close, events
lost by reason, the daemon's tick duration (from tenantwatch_tick_duration_seconds), RSS,
/metrics size and scrape time.  Numbers only; it asserts nothing (tests/e2e/test_scale.py does
at the default size).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.bench import BenchError
from harness.gateway import Gateway
from harness.many_clients import ClientFleet
from harness.metrics import SCALE_FAMILIES, parse_selected
from harness.processes import Daemon, default_tenantwatch, free_port, http_get, proc_cpu_ticks

DAEMON_CONFIG = """\
listen: "127.0.0.1:{port}"
targets: [{{process: nginx}}]
tenancy:
  max_tenants: {max_tenants}
  sources:
    - {{header: X-Tenant-Context, side: client, trusted: true}}
    - {{header: X-Tenant-ID, side: server}}
capture:
  max_connections: {max_connections}
  slow_request_seconds: 0
"""
HISTOGRAMS = "metrics: {{histograms: [{sides}]}}\n"
SETTLE_S = 30.0
UPSTREAM_SERVER = '        location = /up { return 200 "ok\\n"; }\n        access_log off;'
# idle client connections stay open through the whole run, however long the big sizes take
GATEWAY_SERVER = "        keepalive_timeout 600s;"


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_text(pid: int) -> str:
    return (f"RSS {rss_mb(pid):.0f} MB (anonymous {rss_mb(pid, 'RssAnon'):.0f}, "
            f"file-backed {rss_mb(pid, 'RssFile'):.0f}; peak {rss_mb(pid, 'VmHWM'):.0f})")


def scrape(url: str) -> tuple[dict, float, int]:
    t0 = time.monotonic()
    status, body = http_get(url + "/metrics", timeout=60.0)
    took = time.monotonic() - t0
    if status != 200:
        raise BenchError(f"GET /metrics -> {status}")
    size = len(body.encode())
    # only the families read here: the bench's own time per scrape stays far below the daemon's
    return parse_selected(body, SCALE_FAMILIES), took, size


def per_tenant(m: dict, name: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for labels, v in m.get(name, []):
        out[labels["tenant"]] = out.get(labels["tenant"], 0) + int(v)
    return out


def total(m: dict, name: str, **match: str) -> float:
    return sum(v for labels, v in m.get(name, [])
               if all(labels.get(k) == want for k, want in match.items()))


def tick_hist(m: dict) -> tuple[float, float, dict[float, float]]:
    """(count, sum, cumulative count by bound) of tenantwatch_tick_duration_seconds."""
    return (total(m, "tenantwatch_tick_duration_seconds_count"),
            total(m, "tenantwatch_tick_duration_seconds_sum"),
            {float(lb["le"]): v for lb, v in m.get("tenantwatch_tick_duration_seconds_bucket", [])})


def tick_stats(m: dict, since: dict | None = None) -> str:
    """The ticks between two scrapes (or since start): how many, mean, the bound all were under."""
    count, total_s, buckets = tick_hist(m)
    if since is not None:
        c0, s0, b0 = tick_hist(since)
        count, total_s = count - c0, total_s - s0
        buckets = {le: v - b0.get(le, 0) for le, v in buckets.items()}
    if not count:
        return "no ticks (or no tenantwatch_tick_duration_seconds)"
    worst = next((le for le, v in sorted(buckets.items()) if v >= count), float("inf"))
    within = buckets.get(0.1, 0) / count
    return (f"{count:.0f} ticks, mean {total_s / count * 1000:.1f} ms, all <= {worst * 1000:g} ms, "
            f"{within:.0%} <= 100 ms")


def settle(daemon: Daemon, want_server: int) -> tuple[dict, float, int]:
    deadline = time.monotonic() + SETTLE_S
    while True:
        m, took, size = scrape(daemon.url)
        got = total(m, "tenantwatch_http_server_requests_total")
        if got >= want_server or time.monotonic() > deadline:
            return m, took, size
        time.sleep(1.0)


def compare(name: str, got: dict[str, int], want: dict[str, int]) -> None:
    wrong = {t for t in set(got) | set(want) if got.get(t, 0) != want.get(t, 0)}
    print(f"  {name:<7} counted {sum(got.values())} of {sum(want.values())}; tenants exact "
          f"{len(set(want) - wrong)} of {len(want)}; other labels "
          f"{ {t: got[t] for t in sorted(set(got) - set(want))} }")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=50000)
    p.add_argument("--tenants", type=int, default=10000)
    p.add_argument("--processes", type=int, default=4)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--requests", type=int, default=1)
    p.add_argument("--worker-connections", type=int, default=None,
                   help="nginx worker_connections [connections / workers x 1.25 + 1024]")
    p.add_argument("--max-connections", type=int, default=131072,
                   help="capture.max_connections (both legs share it) [131072]")
    p.add_argument("--histograms", default=None, metavar="SIDES",
                   help="metrics.histograms: server,client | client | server | none "
                        "[the default: both]")
    p.add_argument("--tenantwatch", default=default_tenantwatch())
    p.add_argument("--hold", type=float, default=3.0, help="seconds the connections stay open "
                   "after being counted [3]")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--profile", metavar="SVG", help="py-spy record the daemon while the "
                   "connections are open (needs py-spy on PATH)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/scale.py needs root (the daemon loads BPF programs)", file=sys.stderr)
        return 2
    # nginx counts client and upstream connections against worker_connections, and reuseport
    # spreads clients unevenly (a few %): short of it, nginx closes idle keep-alive connections
    per_worker = args.worker_connections or -(-args.connections // args.workers) * 5 // 4 + 1024
    results: dict = {"args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="tw-scale-") as tmp_s:
        tmp = Path(tmp_s)
        # the upstream: nginx under another name (not a target), big enough not to be the limit
        link = tmp / "tw-scale-upstream"
        link.symlink_to(Path(shutil.which("nginx") or "/usr/sbin/nginx").resolve())
        upstream = Gateway(tmp / "upstream", free_port(), 1, nginx=str(link),
                           workers=max(1, args.workers // 4), worker_connections=16384,
                           extra_server=UPSTREAM_SERVER)
        upstream.start()
        gw = Gateway(tmp / "gw", free_port(), upstream.listen_port, workers=args.workers,
                     worker_connections=per_worker, reuseport=True,
                     extra_server=GATEWAY_SERVER)
        gw.start()
        port = free_port()
        cfg = tmp / "tw.yaml"
        text = DAEMON_CONFIG.format(port=port, max_tenants=max(args.tenants, 1000),
                                    max_connections=args.max_connections)
        if args.histograms is not None:
            sides = "" if args.histograms == "none" else args.histograms
            text += HISTOGRAMS.format(sides=", ".join(x for x in sides.split(",") if x))
        cfg.write_text(text)
        daemon = Daemon(args.tenantwatch, cfg, port, tmp / "tw.log")
        fleet = ClientFleet(gw.listen_port, args.connections, args.tenants, args.processes,
                            path="/up", requests=args.requests)
        try:
            daemon.start()
            assert daemon.proc is not None
            print(f"daemon ready, {rss_text(daemon.proc.pid)}; opening {args.connections} connections "
                  f"({args.processes} processes, {args.tenants} tenants, {args.workers} workers)",
                  flush=True)
            with fleet:
                cpu0 = proc_cpu_ticks(daemon.proc.pid)
                opened = fleet.open()
                print(f"clients: {opened['open']} open, {opened['ok']} answered in "
                      f"{opened['seconds']:.1f} s, failed {opened['failed']} {opened['errors']}",
                      flush=True)
                want = fleet.expected()
                spy = None
                if args.profile:
                    spy = subprocess.Popen(["py-spy", "record", "-o", args.profile, "-d", "20",
                                            "-p", str(daemon.proc.pid)],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                burst, took, size = settle(daemon, sum(want.values()))
                burst_cpu = (proc_cpu_ticks(daemon.proc.pid) - cpu0) / os.sysconf("SC_CLK_TCK")
                time.sleep(args.hold)
                if spy is not None:
                    spy.wait()
                m, took, size = scrape(daemon.url)
                alive = fleet.alive()  # right after the scrape: the two describe one moment
                server = per_tenant(m, "tenantwatch_http_server_requests_total")
                client = per_tenant(m, "tenantwatch_http_client_requests_total")
                print("while open:")
                compare("server", server, want)
                compare("client", client, want)
                active_s = total(m, "tenantwatch_connections_active", side="server")
                active_c = total(m, "tenantwatch_connections_active", side="client")
                lost = {lb.get("reason"): int(v) for lb, v in
                        m.get("tenantwatch_events_lost_total", []) if v}
                rss_open = rss_mb(daemon.proc.pid)
                print(f"  connections_active server {active_s:.0f} (open: {alive} by the "
                      f"clients' check, {opened['open']} answered), client {active_c:.0f}")
                conns = {t: n // args.requests for t, n in want.items()}
                by_tenant = {lb["tenant"]: int(v) for lb, v in
                             m.get("tenantwatch_connections_active", []) if lb["side"] == "server"}
                off = {t: (by_tenant.get(t, 0), conns.get(t, 0)) for t in set(conns) | set(by_tenant)
                       if by_tenant.get(t, 0) != conns.get(t, 0)}
                if off:
                    print(f"  connections_active off for {len(off)} tenants, e.g. "
                          f"{dict(sorted(off.items())[:8])} (counted, open)")
                    opened_by = {lb["tenant"]: int(v) for lb, v in
                                 m.get("tenantwatch_connections_opened_total", [])
                                 if lb["side"] == "server"}
                    closed_by = {lb["tenant"]: int(v) for lb, v in
                                 m.get("tenantwatch_connection_duration_seconds_count", [])
                                 if lb["side"] == "server"}
                    print("  of those, (opened, closed): " + str(
                        {t: (opened_by.get(t), closed_by.get(t)) for t in sorted(off)[:8]}))
                print(f"  events lost {lost or 0}")
                print(f"  ticks until counted (the burst): {tick_stats(burst)}; daemon CPU "
                      f"{burst_cpu:.1f} s")
                print(f"  ticks while held: {tick_stats(m, burst)}")
                print(f"  /metrics {size / 1e6:.1f} MB in {took:.2f} s; {rss_text(daemon.proc.pid)}",
                      flush=True)
                results["open"] = {
                    "clients": opened, "server_counted": sum(server.values()),
                    "client_counted": sum(client.values()), "sent": sum(want.values()),
                    "server_exact": server == want, "client_exact": client == want,
                    "active_server": active_s, "active_client": active_c, "lost": lost,
                    "alive": alive,
                    "scrape_s": took, "scrape_bytes": size, "rss_mb": rss_open,
                    "rss_anon_mb": rss_mb(daemon.proc.pid, "RssAnon"), "burst_cpu_s": burst_cpu}
                held = m
                t0 = time.monotonic()
                closed = fleet.close()
                print(f"closed {closed} connections in {time.monotonic() - t0:.1f} s", flush=True)
            deadline = time.monotonic() + SETTLE_S
            while True:
                time.sleep(2.0)
                m, took, size = scrape(daemon.url)
                active_s = total(m, "tenantwatch_connections_active", side="server")
                if active_s == 0 or time.monotonic() > deadline:
                    break
            lost = {lb.get("reason"): int(v) for lb, v in
                    m.get("tenantwatch_events_lost_total", []) if v}
            print("after close:")
            print(f"  connections_active server {active_s:.0f}, client "
                  f"{total(m, 'tenantwatch_connections_active', side='client'):.0f}")
            print(f"  events lost {lost or 0}")
            print(f"  ticks after close: {tick_stats(m, held)}")
            print(f"  {rss_text(daemon.proc.pid)}", flush=True)
            results["closed"] = {"active_server": active_s, "lost": lost,
                                 "rss_mb": rss_mb(daemon.proc.pid),
                                 "peak_rss_mb": rss_mb(daemon.proc.pid, "VmHWM")}
        finally:
            for line in daemon.log_tail(400).splitlines():
                if "sweep:" in line or "targets:" in line:
                    print("  daemon log:", line.strip())
            try:
                for line in gw.error_log.read_text().splitlines():
                    if "worker_connections" in line:
                        print("  nginx:", line.strip()[:200])
            except OSError:
                pass
            daemon.stop()
            gw.stop()
            upstream.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
