#!/usr/bin/env python3
"""Interleaved A/B benchmark: nginx saturated by wrk, without (A) and with (B) the daemon.

Takes a real nginx (`harness.gateway.Gateway`, the demo's, 2 workers) in front of the demo
`Backend`, and wrk (HTTP/1.1 keep-alive) rotating `X-Tenant-ID` over t1..t4 on every request.
Gives per-run wrk throughput, the daemon's own CPU during the run (from /proc/<pid>/stat), and how
many requests the daemon counted against what wrk and nginx's access log saw; then the medians and
whether the goals of docs/performance.md hold:

  throughput ratio  median over rounds of rps(B) / rps(A)            goal >= 0.95
  daemon CPU        % of one core per 10k req/s served in B          goal <= 5

Rounds alternate the order (AB, BA, AB, ...) so that drift on a shared, noisy VM hits both sides.
The daemon is started fresh for each B run (`tenantwatch run --config CFG`), its BPF compile and
attach happen before wrk starts (it waits for /readyz), and it is stopped with SIGTERM afterwards.
Its CPU is measured only over the wrk run. CPU that the BPF programs use is spent inside nginx's
syscalls, so it shows up as lost throughput in the ratio, not in the daemon's CPU.

Must run as root (BPF). Everything is on loopback; every wait is bounded; nginx and the daemon are
stopped by pid in `finally` blocks. A benchmark, not a test: it prints numbers and exits 0 unless
something failed to run (or, with --check, a goal was missed).

    sudo make bench
    sudo .venv/bin/python bench/nginx_ab.py --rounds 5 --seconds 8 --json /tmp/ab.json

--tls: wrk talks HTTPS (TLS 1.3, keep-alive: one handshake per connection) to a `listen ... ssl`
port of the same nginx (self-signed certificate made with `openssl req -x509` in the temporary
directory); the daemon then reads the plaintext through its uprobes on nginx's libssl.  Note that
uprobes are per library file: wrk maps the same libssl.so.3, so with the daemon on, wrk's own
SSL_read/SSL_write calls also trap into the (filtered-out) probes -- the B side pays that too.

What the other benchmarks share with this one (the daemon process, wrk and its workloads, the
/metrics counts) is in harness/: harness.processes, harness.workload, harness.metrics.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.backend import Backend
from harness.bench import BenchError, bpf_stats, median
from harness.gateway import Gateway
from harness.processes import Daemon, default_tenantwatch, free_port
from harness.workload import (
    BROWSER_PATH,
    BROWSER_QUERY,
    TENANTS,
    add_heads_argument,
    add_load_arguments,
    apply_layout,
    run_wrk,
    start_upstream,
    tls_listener,
    write_wrk_script,
)

RATIO_GOAL = 0.95  # B keeps at least 95% of A's throughput
TLS_RATIO_GOAL = 0.90  # the same over TLS (issue 5): six uprobe traps per request on top
CPU_GOAL_PER_10K = 5.0  # daemon CPU, % of one core, per 10k req/s the gateway serves
COOLDOWN_S = 1.0  # between runs: let sockets in TIME_WAIT and CPU frequency settle a little

DAEMON_CONFIG = """\
# written by bench/nginx_ab.py
listen: "127.0.0.1:%(port)d"
targets: [{process: nginx}]
tenancy:
  sources: [%(sources)s]
capture: {tls: %(tls)s, sides: [%(sides)s]}
"""
SOURCES = {"server": "{header: X-Tenant-ID, side: server}",
           "client": "{header: X-Tenant-Context, side: client, trusted: true}"}
# --response-check (issue 17): the upstream marks each response with the tenant it served, and
# the daemon compares it on the upstream leg (docs/isolation.md).
RESPONSE_CHECK_CONFIG = "  response_check: {header: X-Served-Tenant, side: client}\n"


@dataclass
class Run:
    round: int
    variant: str  # "A" (no daemon), "B" (daemon), "A'" (second A with --no-daemon)
    rps: float
    wrk_requests: int
    wrk_seconds: float
    socket_errors: int
    non_2xx: int
    # tracepoint BPF programs someone else had loaded before (and, for A, after) the run
    foreign_bpf: int | None = None
    nginx_logged: int | None = None  # access-log lines written during the run
    daemon_cpu_s: float | None = None
    daemon_cpu_pct: float | None = None  # % of one core over the run
    cpu_pct_per_10k: float | None = None
    daemon_counted: int | None = None  # server-side requests counted during the run, any tenant
    daemon_bench_counted: int | None = None  # ... under the bench's tenants t1..t4
    daemon_other_counted: int | None = None  # ... under any other label (misattributed, or
    #                                          traffic of another nginx on this host)
    daemon_client_counted: int | None = None  # gateway -> upstream requests (0 for /direct)
    daemon_checked: int | None = None  # responses the response check compared
    daemon_breaches: int | None = None  # ... that named another tenant (the bench plants none)
    daemon_by_tenant: dict[str, int] = field(default_factory=dict)
    daemon_events_lost: int | None = None
    bpf: dict[str, Any] | None = None  # --bpf-stats: run time of the daemon's BPF programs
    gateway_us_per_request: float | None = None  # on-CPU time of nginx's workers per request
    counted_over_wrk: float | None = None  # all tenants / wrk's count
    exact_over_nginx: float | None = None  # t1..t4 / nginx's access log: 1.0 when exact


# ---------------------------------------------------------------- helpers


def bpf_program_stats() -> dict[int, tuple[str, int, int]]:
    """{prog id: (name, run_time_ns, run_cnt)} of every loaded program (run_* stay 0 unless
    kernel.bpf_stats_enabled is 1); {} without bpftool."""
    bpftool = shutil.which("bpftool")
    if bpftool is None:
        return {}
    try:
        p = subprocess.run([bpftool, "prog", "show", "-j"], capture_output=True, text=True,
                           timeout=10, check=False)
        progs = json.loads(p.stdout or "[]")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {}
    return {int(x["id"]): (str(x.get("name", "?")), int(x.get("run_time_ns", 0)),
                           int(x.get("run_cnt", 0))) for x in progs if "id" in x}


def bpf_cost(before: dict[int, tuple[str, int, int]], after: dict[int, tuple[str, int, int]],
             ours: set[int], wall_s: float, requests: int) -> dict[str, Any]:
    """Run time of our programs between two bpf_program_stats() snapshots."""
    per_prog: dict[str, list[int]] = {}
    for pid in ours:
        if pid not in after:
            continue
        name, ns1, n1 = after[pid]
        _, ns0, n0 = before.get(pid, (name, 0, 0))
        acc = per_prog.setdefault(name, [0, 0])
        acc[0] += ns1 - ns0
        acc[1] += n1 - n0
    total_ns = sum(v[0] for v in per_prog.values())
    top = sorted(per_prog.items(), key=lambda kv: -kv[1][0])
    return {
        "total_ns": total_ns,
        "cpu_pct": 100.0 * total_ns / 1e9 / wall_s if wall_s > 0 else None,
        "ns_per_request": total_ns / requests if requests else None,
        "programs": {name: {"run_time_ns": ns, "run_cnt": n,
                            "ns_per_run": ns / n if n else None} for name, (ns, n) in top},
    }


def tracepoint_programs() -> list[str] | None:
    """Names of the tracepoint BPF programs loaded now (anyone's), or None without bpftool.

    An A run must see none of them: another tracer on nginx's syscalls (a test run, a leaked
    daemon of ours) would slow A down and flatter the ratio."""
    bpftool = shutil.which("bpftool")
    if bpftool is None:
        return None
    try:
        p = subprocess.run([bpftool, "prog", "show", "-j"], capture_output=True, text=True,
                           timeout=10, check=False)
        progs = json.loads(p.stdout or "[]")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None
    return sorted(str(x.get("name", "?")) for x in progs if x.get("type") == "tracepoint")


def count_lines(path: Path) -> int:
    n = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                n += chunk.count(b"\n")
    except FileNotFoundError:
        return 0
    return n


def wait_log_lines(path: Path, at_least: int, timeout: float = 2.0) -> int:
    """nginx writes the log line after the response: wait (bounded) for `at_least` lines."""
    deadline = time.monotonic() + timeout
    n = count_lines(path)
    while n < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
        n = count_lines(path)
    return n


def truncate(path: Path) -> None:
    """nginx opens its log with O_APPEND, so it keeps writing at the new end (offset 0)."""
    try:
        os.truncate(path, 0)
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------- runs

def foreign_tracepoints(when: str) -> int | None:
    """How many tracepoint BPF programs are loaded now (while none of ours is); warns if any."""
    progs = tracepoint_programs()
    if progs:
        print(f"  warning: {len(progs)} tracepoint BPF programs were loaded {when} "
              f"({', '.join(sorted(set(progs))[:3])}, ...): is a test suite or another daemon "
              "running? This round is not a clean comparison.", file=sys.stderr)
    return None if progs is None else len(progs)


def on_cpu_ns(pids: list[int]) -> int:
    """Time on CPU of these processes so far, ns (/proc/PID/schedstat; all their threads)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    return total


def one_run(rnd: int, variant: str, with_daemon: bool, ctx: dict[str, Any],
            args: argparse.Namespace) -> Run:
    gateway: Gateway = ctx["gateway"]
    daemon: Daemon | None = None
    try:
        foreign = foreign_tracepoints(f"before run {rnd}{variant}")
        progs_before_daemon = set(bpf_program_stats()) if args.bpf_stats else set()
        if with_daemon:
            daemon = Daemon(ctx["tenantwatch"], ctx["config"], ctx["daemon_port"],
                            ctx["tmp"] / "daemon.log")
            daemon.start()
            before = daemon.counts()
            if args.bpf_stats:
                stats0 = bpf_program_stats()
                ours = set(stats0) - progs_before_daemon
            cpu0 = daemon.cpu_ticks()
        truncate(gateway.access_log)
        workers = gateway.worker_pids()
        gw0 = on_cpu_ns(workers)
        t0 = time.monotonic()
        rps, total, wrk_s, sockerr, non2xx = run_wrk(ctx["wrk"], ctx["url"], ctx["script"], args,
                                                     args.seconds)
        wall = time.monotonic() - t0
        gw_ns = on_cpu_ns(workers) - gw0
        run = Run(round=rnd, variant=variant, rps=rps, wrk_requests=total, wrk_seconds=wrk_s,
                  socket_errors=sockerr, non_2xx=non2xx, foreign_bpf=foreign,
                  gateway_us_per_request=gw_ns / 1e3 / total if total else None)
        if daemon is not None:
            cpu_s = (daemon.cpu_ticks() - cpu0) / os.sysconf("SC_CLK_TCK")
            run.daemon_cpu_s = cpu_s
            run.daemon_cpu_pct = 100.0 * cpu_s / wall
            run.cpu_pct_per_10k = run.daemon_cpu_pct / (rps / 10_000) if rps > 0 else None
            if args.bpf_stats:
                run.bpf = bpf_cost(stats0, bpf_program_stats(), ours, wall, total)
        else:
            after = foreign_tracepoints(f"after run {rnd}{variant}")
            if after is not None:
                run.foreign_bpf = max(after, foreign or 0)
        if not args.no_access_log:
            run.nginx_logged = wait_log_lines(gateway.access_log, total)
        if daemon is not None:
            after_counts = daemon.settled_counts(at_least=total)
            run.daemon_counted = after_counts.server - before.server
            run.daemon_client_counted = after_counts.client - before.client
            run.daemon_checked = after_counts.checked - before.checked
            run.daemon_breaches = after_counts.breaches - before.breaches
            run.daemon_events_lost = after_counts.lost - before.lost
            run.daemon_by_tenant = {
                t: n - before.by_tenant.get(t, 0) for t, n in sorted(after_counts.by_tenant.items())
                if n - before.by_tenant.get(t, 0)
            }
            run.daemon_bench_counted = sum(run.daemon_by_tenant.get(t, 0) for t in TENANTS)
            run.daemon_other_counted = run.daemon_counted - run.daemon_bench_counted
            run.counted_over_wrk = run.daemon_counted / total if total else None
            if run.nginx_logged:
                run.exact_over_nginx = run.daemon_bench_counted / run.nginx_logged
            rc = daemon.stop()
            if rc not in (0, None):
                print(f"  note: daemon exited {rc} on SIGTERM:\n{daemon.log_tail(10)}",
                      file=sys.stderr)
        truncate(gateway.access_log)  # ~80 B a request; do not let the log grow to gigabytes
        return run
    finally:
        if daemon is not None:
            daemon.stop()


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


HEADER = (f"{'round':>5} {'run':>3} {'req/s':>8} {'wrk reqs':>9} {'nginx log':>9} "
          f"{'err/5xx':>7} {'cpu%':>6} {'cpu%/10k':>8} {'counted':>9} {'/wrk':>8} "
          f"{'t1-4/log':>8} {'other':>6} {'gw us/req':>9}")


def print_run(r: Run) -> None:
    errs = f"{r.socket_errors}/{r.non_2xx}"
    mark = "  (other tracers loaded)" if r.foreign_bpf else ""
    print(f"{r.round:>5} {r.variant:>3} {r.rps:>8.0f} {r.wrk_requests:>9} "
          f"{fmt(r.nginx_logged, 'd'):>9} {errs:>7} "
          f"{fmt(r.daemon_cpu_pct, '.2f'):>6} {fmt(r.cpu_pct_per_10k, '.3f'):>8} "
          f"{fmt(r.daemon_counted, 'd'):>9} {fmt(r.counted_over_wrk, '.5f'):>8} "
          f"{fmt(r.exact_over_nginx, '.5f'):>8} {fmt(r.daemon_other_counted, 'd'):>6} "
          f"{fmt(r.gateway_us_per_request, '.2f'):>9}{mark}",
          flush=True)
    if r.bpf:
        top = ", ".join(f"{name} {fmt(p['ns_per_run'], '.0f')} ns x {p['run_cnt']}"
                        for name, p in list(r.bpf["programs"].items())[:4])
        print(f"{'':>9} bpf: {fmt(r.bpf['ns_per_request'], '.0f')} ns/request, "
              f"{fmt(r.bpf['cpu_pct'], '.1f')}% of one core; top: {top}", flush=True)


def summarize(runs: list[Run], no_daemon: bool, goal: float = RATIO_GOAL) -> dict[str, Any]:
    a = [r for r in runs if r.variant == "A"]
    b = [r for r in runs if r.variant != "A"]
    ratios, clean_ratios, dirty_rounds = [], [], []
    for rnd in sorted({r.round for r in runs}):
        ra = [r for r in a if r.round == rnd]
        rb = [r for r in b if r.round == rnd]
        if ra and rb and ra[0].rps > 0:
            ratio = rb[0].rps / ra[0].rps
            ratios.append(ratio)
            if ra[0].foreign_bpf or rb[0].foreign_bpf:
                dirty_rounds.append(rnd)
            else:
                clean_ratios.append(ratio)
    cpu = [r.cpu_pct_per_10k for r in b if r.cpu_pct_per_10k is not None]
    gw_a = median([r.gateway_us_per_request for r in a if r.gateway_us_per_request])
    gw_b = median([r.gateway_us_per_request for r in b if r.gateway_us_per_request])
    s: dict[str, Any] = {
        "median_gateway_us_per_request_a": gw_a,
        "median_gateway_us_per_request_b": gw_b,
        # What the ratio would be where the gateway's CPU alone bounds the throughput.
        "gateway_cpu_ratio": gw_a / gw_b if gw_a and gw_b else None,
        "median_rps_a": median([r.rps for r in a]),
        "median_rps_b": median([r.rps for r in b]),
        "ratios": ratios,
        "median_ratio": median(ratios),
        "min_ratio": min(ratios) if ratios else None,
        "max_ratio": max(ratios) if ratios else None,
        "rounds_with_other_tracers": dirty_rounds,
        "median_ratio_clean_rounds": median(clean_ratios),
        "median_daemon_cpu_pct": median([r.daemon_cpu_pct for r in b
                                         if r.daemon_cpu_pct is not None]),
        "median_cpu_pct_per_10k": median(cpu),
        "median_bpf_ns_per_request": median([r.bpf["ns_per_request"] for r in b
                                             if r.bpf and r.bpf["ns_per_request"] is not None]),
        "median_bpf_cpu_pct": median([r.bpf["cpu_pct"] for r in b
                                      if r.bpf and r.bpf["cpu_pct"] is not None]),
        "median_counted_over_wrk": median([r.counted_over_wrk for r in b
                                           if r.counted_over_wrk is not None]),
        "min_exact_over_nginx": min([r.exact_over_nginx for r in b
                                     if r.exact_over_nginx is not None], default=None),
        "max_exact_over_nginx": max([r.exact_over_nginx for r in b
                                     if r.exact_over_nginx is not None], default=None),
        "other_counted": sum(r.daemon_other_counted or 0 for r in b),
        "client_counted": sum(r.daemon_client_counted or 0 for r in b),
        "server_counted": sum(r.daemon_counted or 0 for r in b),
        "events_lost": sum(r.daemon_events_lost or 0 for r in b),
        "responses_checked": sum(r.daemon_checked or 0 for r in b),
        "breaches": sum(r.daemon_breaches or 0 for r in b),
        "socket_errors": sum(r.socket_errors for r in runs),
        "non_2xx": sum(r.non_2xx for r in runs),
    }
    s["ratio_goal"] = goal
    if no_daemon:
        s["ratio_goal_met"] = s["cpu_goal_met"] = None
    else:
        s["ratio_goal_met"] = s["median_ratio"] is not None and s["median_ratio"] >= goal
        s["cpu_goal_met"] = (s["median_cpu_pct_per_10k"] is not None
                             and s["median_cpu_pct_per_10k"] <= CPU_GOAL_PER_10K)
    return s


def print_summary(s: dict[str, Any], runs: list[Run], no_daemon: bool) -> None:
    label_b = "A'" if no_daemon else "B"
    print()
    print(f"median rps A          {fmt(s['median_rps_a'], '.0f')}")
    print(f"median rps {label_b:<2}         {fmt(s['median_rps_b'], '.0f')}")
    print(f"throughput ratio      {fmt(s['median_ratio'], '.3f')} median of {label_b}/A per round "
          f"(min {fmt(s['min_ratio'], '.3f')}, max {fmt(s['max_ratio'], '.3f')}; "
          f"goal >= {s['ratio_goal']})")
    if s["gateway_cpu_ratio"] is not None:
        print(f"gateway CPU/request   {fmt(s['median_gateway_us_per_request_a'], '.2f')} us A, "
              f"{fmt(s['median_gateway_us_per_request_b'], '.2f')} us {label_b} (medians; "
              f"+{s['median_gateway_us_per_request_b'] - s['median_gateway_us_per_request_a']:.2f}"
              f" us); A/{label_b} {s['gateway_cpu_ratio']:.3f}: the ratio where the gateway's CPU "
              "alone bounds the rate")
    if s["rounds_with_other_tracers"]:
        print(f"WARNING               rounds {s['rounds_with_other_tracers']} ran while other "
              "tracepoint BPF programs were loaded (a test suite? another daemon?); median ratio "
              f"of the clean rounds: {fmt(s['median_ratio_clean_rounds'], '.3f')}")
    if no_daemon:
        print("(--no-daemon: both sides ran without the daemon; the ratio shows the noise floor)")
        return
    print(f"daemon CPU            {fmt(s['median_daemon_cpu_pct'], '.2f')} % of one core median; "
          f"{fmt(s['median_cpu_pct_per_10k'], '.3f')} % per 10k req/s "
          f"(goal <= {CPU_GOAL_PER_10K:g})")
    if s["median_bpf_ns_per_request"] is not None:
        print(f"BPF programs          {fmt(s['median_bpf_ns_per_request'], '.0f')} ns per request "
              f"median, {fmt(s['median_bpf_cpu_pct'], '.1f')}% of one core (inside nginx's "
              "syscalls; kernel.bpf_stats_enabled itself adds a little)")
    print(f"counted / wrk         {fmt(s['median_counted_over_wrk'], '.5f')} median, all tenants "
          "(wrk drops its in-flight requests at the end, so nginx serves a few more)")
    print(f"t1..t4 / nginx log    {fmt(s['min_exact_over_nginx'], '.5f')} .. "
          f"{fmt(s['max_exact_over_nginx'], '.5f')} (exact attribution: 1.00000 in every run)")
    print(f"other labels          {s['other_counted']} requests counted under tenants other than "
          f"t1..t4 (misattributed, or another nginx on this host)")
    if s["client_counted"]:
        print(f"upstream side         {s['client_counted']} requests nginx -> backend counted "
              f"(client side), {s['server_counted']} client -> nginx (server side)")
    print(f"events lost           {s['events_lost']}")
    if s["responses_checked"]:
        print(f"responses checked     {s['responses_checked']} ({s['breaches']} breaches)")
    tenants: dict[str, int] = {}
    for r in runs:
        for t, n in r.daemon_by_tenant.items():
            tenants[t] = tenants.get(t, 0) + n
    if tenants:
        total = sum(tenants.values())
        print("tenants (all B runs)  " + ", ".join(
            f"{t} {100.0 * n / total:.1f}%" for t, n in sorted(tenants.items())))
    ok = "yes" if s["ratio_goal_met"] else "NO"
    ok_cpu = "yes" if s["cpu_goal_met"] else "NO"
    print(f"goals                 ratio >= {s['ratio_goal']}: {ok}; "
          f"cpu <= {CPU_GOAL_PER_10K:g}% per 10k req/s: {ok_cpu}")


# ---------------------------------------------------------------- main

def environment(wrk: str, gateway: Gateway) -> dict[str, Any]:
    def first_line(cmd: list[str]) -> str:
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
            return (p.stdout + p.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "nginx": first_line([gateway.nginx, "-v"]),
        "wrk": first_line([wrk, "-v"]),
        "python": platform.python_version(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Interleaved A/B benchmark: nginx under wrk without (A) and with (B) the "
                    "tenantwatch daemon.")
    p.add_argument("--rounds", type=int, default=5, help="rounds of one A and one B run [5]")
    p.add_argument("--seconds", type=float, default=8, help="seconds per wrk run [8]")
    add_load_arguments(p)
    p.add_argument("--path", default="/direct",
                   help="request path: /direct is answered by nginx itself, / proxies to the "
                        "Python backend (which then is the bottleneck) [/direct]")
    p.add_argument("--upstream", choices=("python", "nginx"), default="python",
                   help="what / proxies to: the Python backend, or a second, untraced nginx "
                        "(named tw-bench-upstream) answering /up itself: a proxying gateway "
                        "with a fast upstream, use with --path /up [python]")
    p.add_argument("--tls", action="store_true",
                   help="wrk over HTTPS (keep-alive) to a TLS listener of the same nginx; the "
                        "daemon sees the plaintext through its libssl uprobes")
    add_heads_argument(p)
    p.add_argument("--warmup", type=float, default=2, help="seconds of wrk before round 1 [2]")
    p.add_argument("--json", metavar="FILE", help="write runs and summary as JSON")
    p.add_argument("--tenantwatch", metavar="PATH", default=default_tenantwatch(),
                   help="daemon executable [.venv/bin/tenantwatch]")
    p.add_argument("--no-access-log", action="store_true",
                   help="nginx without its access log (then no counted/nginx ratio)")
    p.add_argument("--no-daemon", action="store_true",
                   help="check the bench itself: run A twice per round, never the daemon")
    p.add_argument("--bpf-stats", action="store_true",
                   help="set kernel.bpf_stats_enabled=1 during the bench (restored after) and "
                        "report the run time of the daemon's BPF programs per request")
    p.add_argument("--no-tls-capture", action="store_true",
                   help="run the daemon with capture.tls: false (no libssl uprobes, no TLS check "
                        "on the syscall path): what TLS capture costs plain HTTP")
    p.add_argument("--sides", default="server,client",
                   help="capture.sides: the legs the daemon follows, server (client -> nginx), "
                        "client (nginx -> upstream) or both [server,client]")
    p.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    p.add_argument("--response-check", action="store_true",
                   help="the upstream marks responses with X-Served-Tenant and the daemon checks "
                        "them on the upstream leg (tenancy.response_check; needs --heads browser)")
    args = p.parse_args(argv)
    args.gateway_kwargs = apply_layout(args, p)
    if args.heads == "browser":
        args.upstream = "nginx"
        if args.path == "/direct":
            args.path = BROWSER_PATH + BROWSER_QUERY
    if args.response_check and args.heads != "browser":
        p.error("--response-check needs --heads browser (its upstream marks the responses)")
    if args.rounds < 1 or args.seconds <= 0 or args.connections < 1 or args.threads < 1:
        p.error("--rounds, --seconds, --connections and --threads must be positive")
    if args.connections < args.threads:
        p.error("wrk needs --connections >= --threads")
    if not args.path.startswith("/") or any(c in args.path for c in '"\\ \r\n'):
        p.error("--path must be an absolute path without quotes, backslashes or spaces")
    return args


def _term(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # run the finally blocks


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/nginx_ab.py must run as root (the daemon loads BPF programs); "
              "try: sudo make bench", file=sys.stderr)
        return 2
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk not found on PATH (apt-get install wrk, or: sudo make deps)", file=sys.stderr)
        return 2
    if args.bpf_stats and shutil.which("bpftool") is None:
        print("--bpf-stats needs bpftool on PATH", file=sys.stderr)
        return 2
    if not args.no_daemon and not args.tenantwatch:
        print("tenantwatch executable not found; pass --tenantwatch PATH", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _term)

    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="tw-bench-") as tmpdir:
        tmp = Path(tmpdir)
        backend = Backend()
        gateway: Gateway | None = None
        upstream: Gateway | None = None
        stats = contextlib.ExitStack()
        try:
            stats.enter_context(bpf_stats(args.bpf_stats))
            backend.start()
            upstream_port = backend.port
            if args.upstream == "nginx":
                upstream = start_upstream(tmp, backend.port, args.heads,
                                          served_header=args.response_check,
                                          cpu_affinity=args.upstream_affinity)
                upstream_port = upstream.listen_port
            listen = free_port()
            tls = tls_listener(tmp) if args.tls else {}
            gateway = Gateway(
                tmp / "nginx", listen, upstream_port, workers=args.workers,
                extra_server="        access_log off;" if args.no_access_log else "", **tls,
                **args.gateway_kwargs,
            )
            gateway.start()
            scheme = "http"
            if args.tls:
                scheme, listen = "https", gateway.tls_port
            daemon_port = free_port()
            config = tmp / "tenantwatch.yaml"
            sides = [x.strip() for x in args.sides.split(",") if x.strip()]
            text = DAEMON_CONFIG % {"port": daemon_port,
                                    "tls": "false" if args.no_tls_capture else "true",
                                    "sides": ", ".join(sides),
                                    "sources": ", ".join(SOURCES[x] for x in
                                                         ("client", "server") if x in sides)}
            if args.response_check:
                text = text.replace("\ncapture:", "\n" + RESPONSE_CHECK_CONFIG + "capture:")
            config.write_text(text)
            host = f"127.0.0.1:{listen}"
            ctx = {
                "gateway": gateway, "tmp": tmp, "wrk": wrk, "tenantwatch": args.tenantwatch,
                "config": config, "daemon_port": daemon_port,
                "script": write_wrk_script(tmp, args.path, host, args.heads),
                "url": f"{scheme}://{host}{args.path}",
            }
            env = environment(wrk, gateway)
            print(f"nginx {args.workers} workers on {scheme}://{host}{args.path}; {args.heads} heads; "
                  f"wrk -t{args.threads} "
                  f"-c{args.connections} -d{args.seconds:g}s, tenants {','.join(TENANTS)}; "
                  f"layout {args.layout}; "
                  f"{args.rounds} rounds; {env['cpus']} CPUs, kernel {env['kernel']}",
                  flush=True)
            if args.warmup > 0:
                run_wrk(wrk, ctx["url"], ctx["script"], args, args.warmup)
                truncate(gateway.access_log)
            print(HEADER)
            for rnd in range(1, args.rounds + 1):
                order = "AB" if rnd % 2 == 1 else "BA"
                for variant in order:
                    with_daemon = variant == "B" and not args.no_daemon
                    label = "A'" if variant == "B" and args.no_daemon else variant
                    run = one_run(rnd, label, with_daemon, ctx, args)
                    runs.append(run)
                    print_run(run)
                    time.sleep(COOLDOWN_S)
        except BenchError as e:
            print(f"bench failed: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        finally:
            if gateway is not None:
                gateway.stop()
            if upstream is not None:
                upstream.stop()
            backend.stop()
            stats.close()

    summary = summarize(runs, args.no_daemon, TLS_RATIO_GOAL if args.tls else RATIO_GOAL)
    print_summary(summary, runs, args.no_daemon)
    if args.json:
        doc = {"args": {k: v for k, v in vars(args).items() if k != "json"},
               "environment": env, "runs": [asdict(r) for r in runs], "summary": summary}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.check and not args.no_daemon and not (summary["ratio_goal_met"]
                                                  and summary["cpu_goal_met"]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
