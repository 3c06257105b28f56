#!/usr/bin/env python3
"""A day of gateway traffic in an hour: is the daemon's footprint flat?

nginx (comm `nginx`, 2 workers, plain HTTP and TLS, and h2c when h2load is installed) proxies
to the demo backend; the daemon (tenantwatch run, from this tree) traces nginx.  For
`--minutes`, at once:

- keep-alive clients (`--keepalive` connections) at `--rate` requests/s in all, each request
  for a tenant of a set of `--tenants` that churns: 1 % of the set is replaced every minute;
- short connections (one request each) at `--short-rate`/s;
- slow requests (the backend sleeps 300 ms) at `--slow-rate`/s;
- a flood of junk tenant values, each one new, at `--junk-rate`/s;
- one keep-alive client over TLS; h2load bursts over h2c every 30 s (if present);
- `nginx -s reload` every `--reload-minutes`.

Every `--sample-seconds` it records the daemon's RSS (and its anonymous part), open fds, CPU
(% of one core), the kernel tables' fill, the ticks since the last sample (mean, and the bound
all were under), requests counted and events lost; it writes them to `--csv`, and a plot to
`--png` (matplotlib, Debian python3-matplotlib).  The verdict compares the second half of the
run with the first: RSS growth per hour from a least-squares line over the second half, and
the change in open fds (the lower of two samples at each end).  With `--check` it exits 1 when
the RSS of the second half grew more than `--max-rss-growth-mb` or the fds more than
`--max-fd-growth` (the CI variant:
tests/e2e/test_soak.py runs it for 2 minutes).

    sudo .venv/bin/python bench/soak.py --minutes 60 --csv soak.csv --png soak.png
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from harness.backend import Backend
from harness.gateway import Gateway
from harness.metrics import parse_metrics
from harness.processes import Daemon, default_tenantwatch, free_port, http_get, proc_cpu_ticks
from harness.workload import make_cert

DAEMON_CONFIG = """\
listen: "127.0.0.1:{port}"
targets: [{{process: nginx}}]
tenancy:
  max_tenants: {max_tenants}
  sources:
    - {{header: X-Tenant-Context, side: client, trusted: true}}
    - {{header: X-Tenant-ID, side: server}}
capture:
  slow_request_seconds: 0.2
"""
H2C_SERVER = """
    server {{
        listen 127.0.0.1:{port} http2;
        location / {{
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Tenant-Context $tenant_root;
            proxy_pass http://tw_backend;
        }}
    }}
"""
FIELDS = ("t_s", "rss_mb", "rss_anon_mb", "fds", "cpu_pct", "ticks", "tick_mean_ms",
          "tick_max_ms", "requests", "lost", "conn_entries", "conn_capacity",
          "identity_entries", "identity_capacity", "cpu_entries", "tenants")


class Traffic:
    """The load generators: threads that run until stop is set, counting what they send."""

    def __init__(self, port: int, tls_port: int, h2_port: int | None, args: argparse.Namespace):
        self.port, self.tls_port, self.h2_port, self.args = port, tls_port, h2_port, args
        self.stop = threading.Event()
        self.sent: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def _count(self, what: str, table: dict[str, int] | None = None) -> None:
        with self._lock:
            t = self.sent if table is None else table
            t[what] = t.get(what, 0) + 1

    def tenant(self) -> str:
        """A tenant of the churning set: 1 % of it is replaced every minute."""
        minute = int((time.monotonic() - self.started) // 60)
        base = minute * self.args.tenants // 100
        return f"t{base + random.randrange(self.args.tenants):06d}"

    @staticmethod
    def _request(tenant: str, path: str = "/api/items") -> bytes:
        return (f"GET {path} HTTP/1.1\r\nHost: gw\r\nX-Tenant-ID: {tenant}\r\n"
                f"User-Agent: tenantwatch-soak\r\n\r\n").encode()

    @staticmethod
    def _response(f) -> None:
        status = f.readline()
        if not status.startswith(b"HTTP/1.1 "):
            raise ConnectionError(f"bad status line {status[:40]!r}")
        length = 0
        while True:
            line = f.readline()
            if line in (b"\r\n", b""):
                break
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        f.read(length)

    def _paced(self, rate: float, step) -> None:
        """Call step() `rate` times a second until stopped; errors counted by type."""
        if rate <= 0:
            return
        interval = 1.0 / rate
        next_at = time.monotonic()
        while not self.stop.is_set():
            try:
                step()
            except (OSError, ConnectionError, ValueError) as e:
                self._count(type(e).__name__, self.errors)
                self.stop.wait(0.2)
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)
            else:
                next_at = time.monotonic()

    def _keepalive(self, rate: float, tls: bool = False) -> None:
        conn: list = [None, None]

        def step() -> None:
            if conn[0] is None:
                s = socket.create_connection(("127.0.0.1", self.tls_port if tls else self.port),
                                             timeout=10)
                if tls:
                    ctx = ssl.create_default_context()
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                    s = ctx.wrap_socket(s)
                conn[0], conn[1] = s, s.makefile("rb")
            try:
                conn[0].sendall(self._request(self.tenant()))
                self._response(conn[1])
                self._count("tls" if tls else "keepalive")
            except (OSError, ConnectionError):
                conn[1].close()
                conn[0].close()
                conn[0] = None  # nginx closed it (a reload): the next step reconnects
                raise

        self._paced(rate, step)

    def _one_shot(self, rate: float, what: str, path: str, tenant) -> None:
        def step() -> None:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                s.sendall(self._request(tenant(), path))
                with s.makefile("rb") as f:
                    self._response(f)
            self._count(what)

        self._paced(rate, step)

    def _h2(self) -> None:
        h2load = shutil.which("h2load")
        while h2load and self.h2_port and not self.stop.wait(30):
            subprocess.run([h2load, "-n", "2000", "-c", "4", "-m", "10", "-H",
                            f"x-tenant-id: h2-{random.randrange(100)}",
                            f"http://127.0.0.1:{self.h2_port}/api/h2"],
                           capture_output=True, timeout=60, check=False)
            self._count("h2_bursts")

    def start(self) -> None:
        a = self.args
        junk = iter(range(10 ** 9))
        targets = [(self._keepalive, (a.rate / a.keepalive,)) for _ in range(a.keepalive)]
        targets += [
            (self._keepalive, (5.0, True)),
            (self._one_shot, (a.short_rate, "short", "/api/short", self.tenant)),
            (self._one_shot, (a.slow_rate, "slow", "/sleep/300", self.tenant)),
            (self._one_shot, (a.junk_rate, "junk", "/api/junk",
                              lambda: f"junk-{next(junk):09d}")),
            (self._h2, ()),
        ]
        for fn, fargs in targets:
            t = threading.Thread(target=fn, args=fargs, daemon=True)
            t.start()
            self.threads.append(t)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)


def proc_status(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def sample(daemon: Daemon, pid: int, t0: float, last: dict) -> dict:
    status, body = http_get(daemon.url + "/metrics", timeout=30.0)
    if status != 200:
        raise RuntimeError(f"GET /metrics -> {status}")
    m = parse_metrics("\n".join(line for line in body.splitlines()
                                if line.startswith(("tenantwatch_kernel_table_",
                                                    "tenantwatch_tick_duration_seconds_",
                                                    "tenantwatch_http_server_requests_total",
                                                    "tenantwatch_events_lost_total"))))

    def total(name: str, **match: str) -> float:
        return sum(v for lb, v in m.get(name, [])
                   if all(lb.get(k) == want for k, want in match.items()))

    count = total("tenantwatch_tick_duration_seconds_count")
    tsum = total("tenantwatch_tick_duration_seconds_sum")
    buckets = sorted((float(lb["le"]), v) for lb, v in
                     m.get("tenantwatch_tick_duration_seconds_bucket", []))
    prev = last.get("buckets", {})
    dcount = count - last.get("count", 0)
    worst = next((le for le, v in buckets if v - prev.get(le, 0) >= dcount), float("inf"))
    ticks = proc_cpu_ticks(pid)
    now = time.monotonic()
    cpu = (ticks - last.get("cpu", ticks)) / os.sysconf("SC_CLK_TCK") / max(
        1e-9, now - last.get("at", now)) * 100 if "cpu" in last else 0.0
    tenants = {lb["tenant"] for lb, _ in m.get("tenantwatch_http_server_requests_total", [])}
    row = {
        "t_s": round(now - t0, 1), "rss_mb": round(proc_status(pid, "VmRSS"), 1),
        "rss_anon_mb": round(proc_status(pid, "RssAnon"), 1),
        "fds": len(os.listdir(f"/proc/{pid}/fd")), "cpu_pct": round(cpu, 1),
        "ticks": int(dcount), "tick_mean_ms": round((tsum - last.get("sum", 0)) / dcount * 1000, 1)
        if dcount else 0.0, "tick_max_ms": worst * 1000,
        "requests": int(total("tenantwatch_http_server_requests_total")),
        "lost": int(total("tenantwatch_events_lost_total")),
        "conn_entries": int(total("tenantwatch_kernel_table_entries", table="connections")),
        "conn_capacity": int(total("tenantwatch_kernel_table_capacity", table="connections")),
        "identity_entries": int(total("tenantwatch_kernel_table_entries", table="identities")),
        "identity_capacity": int(total("tenantwatch_kernel_table_capacity",
                                       table="identities")),
        "cpu_entries": int(total("tenantwatch_kernel_table_entries", table="cpu")),
        "tenants": len(tenants),
    }
    last.update(count=count, sum=tsum, buckets=dict(buckets), cpu=ticks, at=now)
    last["lost_by_reason"] = {lb.get("reason", ""): int(v) for lb, v in
                              m.get("tenantwatch_events_lost_total", []) if v}
    return row


def slope_per_hour(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return 0.0 if var == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var * 3600


def verdict(rows: list[dict], args: argparse.Namespace) -> tuple[bool, str]:
    half = rows[len(rows) // 2:]
    if len(half) < 2:
        return False, "too few samples"
    growth = half[-1]["rss_mb"] - half[0]["rss_mb"]
    # fds: the floor at each end of the half (the lower of two samples).  A leak raises every
    # later sample; a scrape or a reload's new uprobes caught in one sample is not growth
    # (a CI run failed on 138 -> 148 in its very last sample, 138 the sample before).
    fd_growth = min(r["fds"] for r in half[-2:]) - min(r["fds"] for r in half[:2])
    slope = slope_per_hour([r["t_s"] for r in half], [r["rss_mb"] for r in half])
    ok = growth <= args.max_rss_growth_mb and fd_growth <= args.max_fd_growth
    return ok, (f"second half: RSS {half[0]['rss_mb']:.0f} -> {half[-1]['rss_mb']:.0f} MB "
                f"({growth:+.1f} MB, trend {slope:+.1f} MB/h), fds {half[0]['fds']} -> "
                f"{half[-1]['fds']}; {'flat' if ok else 'GROWING'} (bounds: "
                f"+{args.max_rss_growth_mb} MB, +{args.max_fd_growth} fds)")


def plot(rows: list[dict], path: str) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (Debian: python3-matplotlib)"
    t = [r["t_s"] / 60 for r in rows]
    fig, ax = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    ax[0].plot(t, [r["rss_mb"] for r in rows], label="RSS")
    ax[0].plot(t, [r["rss_anon_mb"] for r in rows], label="anonymous")
    ax[0].set_ylabel("MB")
    ax[0].legend(loc="lower right")
    ax[1].plot(t, [r["fds"] for r in rows])
    ax[1].set_ylabel("open fds")
    ax[2].plot(t, [r["tick_mean_ms"] for r in rows], label="mean")
    ax[2].plot(t, [r["tick_max_ms"] if r["tick_max_ms"] != float("inf") else None
                   for r in rows], label="all under", linestyle=":")
    ax[2].set_ylabel("tick ms")
    ax[2].legend(loc="upper right")
    ax[3].plot(t, [r["conn_entries"] for r in rows], label="connections")
    ax[3].plot(t, [r["identity_entries"] for r in rows], label="identities / tick")
    ax[3].plot(t, [r["cpu_pct"] for r in rows], label="daemon CPU %")
    ax[3].set_ylabel("entries, %")
    ax[3].set_xlabel("minutes")
    ax[3].legend(loc="upper right")
    fig.suptitle("tenantwatch soak (bench/soak.py)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--tenants", type=int, default=10000)
    p.add_argument("--rate", type=float, default=300.0, help="keep-alive requests/s [300]")
    p.add_argument("--keepalive", type=int, default=6, help="keep-alive connections [6]")
    p.add_argument("--short-rate", type=float, default=30.0)
    p.add_argument("--slow-rate", type=float, default=2.0)
    p.add_argument("--junk-rate", type=float, default=20.0)
    p.add_argument("--reload-minutes", type=float, default=5.0)
    p.add_argument("--sample-seconds", type=float, default=10.0)
    p.add_argument("--csv", default="soak.csv")
    p.add_argument("--png", default="soak.png", help="'' for none")
    p.add_argument("--check", action="store_true", help="exit 1 when the footprint grows")
    p.add_argument("--max-rss-growth-mb", type=float, default=20.0)
    p.add_argument("--max-fd-growth", type=int, default=5)
    p.add_argument("--tenantwatch", default=default_tenantwatch())
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/soak.py needs root (the daemon loads BPF programs)", file=sys.stderr)
        return 2
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="tw-soak-") as tmp_s:
        tmp = Path(tmp_s)
        cert, key = make_cert(tmp)
        backend = Backend().start()
        h2_port = free_port() if shutil.which("h2load") else None
        gw = Gateway(tmp / "gw", free_port(), backend.port, workers=2,
                     tls_port=free_port(), ssl_certificate=cert, ssl_certificate_key=key,
                     extra_http=H2C_SERVER.format(port=h2_port) if h2_port else "")
        gw.start()
        port = free_port()
        cfg = tmp / "tw.yaml"
        cfg.write_text(DAEMON_CONFIG.format(port=port, max_tenants=args.tenants + 1000))
        daemon = Daemon(args.tenantwatch, cfg, port, tmp / "tw.log")
        traffic = Traffic(gw.listen_port, gw.tls_port, h2_port, args)
        try:
            daemon.start()
            assert daemon.proc is not None
            pid = daemon.proc.pid
            t0 = time.monotonic()
            traffic.start()
            end = t0 + args.minutes * 60
            next_reload = t0 + args.reload_minutes * 60
            last: dict = {}
            with open(args.csv, "w", newline="") as f:
                out = csv.DictWriter(f, fieldnames=FIELDS)
                out.writeheader()
                while time.monotonic() < end:
                    time.sleep(max(0.0, min(args.sample_seconds, end - time.monotonic())))
                    if daemon.proc.poll() is not None:
                        print(f"daemon exited {daemon.proc.returncode}:\n{daemon.log_tail()}")
                        return 1
                    if time.monotonic() >= next_reload:
                        gw.reload()
                        next_reload += args.reload_minutes * 60
                    row = sample(daemon, pid, t0, last)
                    rows.append(row)
                    out.writerow(row)
                    f.flush()
                    print(f"{row['t_s'] / 60:5.1f} min  RSS {row['rss_mb']:.0f} MB "
                          f"(anon {row['rss_anon_mb']:.0f})  fds {row['fds']}  CPU "
                          f"{row['cpu_pct']:.0f}%  ticks {row['tick_mean_ms']:.0f} ms "
                          f"(<= {row['tick_max_ms']:g})  conns {row['conn_entries']}  "
                          f"ids/tick {row['identity_entries']}  requests {row['requests']}  "
                          f"lost {row['lost']}", flush=True)
        finally:
            traffic.close()
            daemon.stop()
            gw.stop()
            backend.stop()
    print("sent", json.dumps(traffic.sent), "client errors", json.dumps(traffic.errors))
    print("events lost by reason", json.dumps(last.get("lost_by_reason", {}), sort_keys=True))
    ok, text = verdict(rows, args)
    print(text)
    if args.png:
        note = plot(rows, args.png)
        print(note or f"plot: {args.png}")
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
