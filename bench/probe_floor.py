#!/usr/bin/env python3
"""What attaching costs before any work: nginx under wrk with do-nothing probes (bench/probe_floor.c).

The same workload as bench/nginx_ab.py (nginx answering /direct itself, wrk keep-alive, 4
rotating tenants), run in interleaved rounds under three variants:

  none         no BPF program attached
  syscall-tp   the per-syscall tracepoints bpf/http.c uses (syscalls:sys_enter_X / sys_exit_X)
               and sched_switch, each program only checking "is this a target?" and stashing
               or unstashing one slot: the floor of the tracepoint mechanism itself
  raw-tp       the same checks on raw tracepoints (raw_syscalls:sys_enter / sys_exit, and
               sched_switch): no perf record per hit, but every syscall of every process runs
               the program, which filters on the syscall number

With --tls, wrk talks HTTPS (TLS 1.3, keep-alive) to nginx, and the variants are about the
libssl uprobes instead (empty programs, attached per nginx process as the daemon does):

  uprobe-public    entry and return probes on SSL_read, SSL_read_ex, SSL_write, SSL_write_ex:
                   each hit single-steps the probed instruction (`sub $0x18,%rsp`)
  uprobe-internal  the same on the internal functions kernel/ssl_points.py finds (their first
                   instruction is a push, which the kernel emulates: no single-step)

It prints the per-variant median throughput and its ratio to `none`.

--syscalls measures the same variants without nginx: ns per syscall of this (untraced)
process, for a syscall the probes watch (write to /dev/null) and one they do not (getppid):
what every other process on the node pays.  A benchmark, not a test:
it never fails on a number.  Needs root (BPF).

    sudo .venv/bin/python bench/probe_floor.py --rounds 5 --seconds 5
"""

from __future__ import annotations

import argparse
import ctypes as ct
import os
import shutil
import signal
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

from harness.backend import Backend
from harness.bench import BenchError, bpf_stats
from harness.gateway import Gateway
from harness.processes import free_port
from harness.workload import (
    BROWSER_PATH,
    BROWSER_QUERY,
    add_heads_argument,
    add_load_arguments,
    apply_layout,
    run_wrk,
    start_upstream,
    tls_listener,
    write_wrk_script,
)

VARIANTS = ("none", "syscall-tp", "raw-tp")
TLS_VARIANTS = ("none", "uprobe-public", "uprobe-internal")
DEFINES = {"syscall-tp": "-DFLOOR_SYSCALL_TP=1", "raw-tp": "-DFLOOR_RAW_TP=1"}


class Floor:
    """One variant's programs, loaded and attached (bcc), with nginx's processes as targets."""

    def __init__(self, variant: str, tgids: list[int]) -> None:
        from bcc import BPF

        self.variant = variant
        self.bpf = None
        if variant == "none":
            return
        src = (REPO / "bench" / "probe_floor.c").read_text()
        # bcc attaches TRACEPOINT_PROBE and RAW_TRACEPOINT_PROBE programs itself.
        self.bpf = BPF(text=src.encode(), cflags=[DEFINES.get(variant, "-DFLOOR_UPROBES=1")])
        if variant.startswith("uprobe-"):
            self._attach_uprobes(tgids, internal=variant == "uprobe-internal")
        bits = self.bpf[b"floor_bits"]
        words: dict[int, int] = {}
        for t in tgids:
            words[t >> 6] = words.get(t >> 6, 0) | (1 << (t & 63))
        for w, v in words.items():
            bits[ct.c_int(w)] = ct.c_uint64(v)

    def _attach_uprobes(self, tgids: list[int], internal: bool) -> None:
        from tenantwatch.kernel.elf import ElfImage
        from tenantwatch.kernel.ssl_points import FUNCTIONS, probe_points
        from tenantwatch.kernel.tls import ssl_libraries

        for pid in tgids:
            for lib in ssl_libraries(pid):
                image = ElfImage.open(lib.path)
                if internal:
                    addrs = [p.vaddr for p in probe_points(image) if p.internal]
                    if not addrs:
                        raise BenchError(f"{lib.path}: no internal probe points found")
                else:
                    addrs = [a for f in FUNCTIONS for sym in f[:2]
                             if (a := image.symbol(sym)) is not None]
                for a in addrs:
                    self.bpf.attach_uprobe(name=lib.path.encode(), addr=a, pid=pid,
                                           fn_name=b"floor_uprobe_enter")
                    self.bpf.attach_uretprobe(name=lib.path.encode(), addr=a, pid=pid,
                                              fn_name=b"floor_uprobe_return")

    def hits(self) -> list[int]:
        if self.bpf is None:
            return [0, 0, 0]
        table = self.bpf[b"floor_hits"]
        return [sum(table[ct.c_int(i)]) for i in range(3)]

    def close(self) -> None:
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="rounds of each variant [5]")
    p.add_argument("--seconds", type=float, default=5, help="seconds per wrk run [5]")
    add_load_arguments(p)
    add_heads_argument(p)
    p.add_argument("--syscalls", action="store_true",
                   help="ns per syscall of an untraced process under each variant, no nginx")
    p.add_argument("--tls", action="store_true",
                   help=f"wrk over HTTPS; variants {','.join(TLS_VARIANTS)}")
    p.add_argument("--variants", default=None,
                   help=f"comma-separated, from {','.join(VARIANTS)}, or with --tls "
                        f"{','.join(TLS_VARIANTS)} [all]")
    args = p.parse_args(argv)
    args.gateway_kwargs = apply_layout(args, p)
    known = TLS_VARIANTS if args.tls else VARIANTS
    args.variants = [v for v in (args.variants or ",".join(known)).split(",") if v]
    bad = [v for v in args.variants if v not in known]
    if bad or "none" not in args.variants:
        p.error(f"--variants: unknown {bad}; 'none' is the reference and must be included")
    if args.rounds < 1 or args.seconds <= 0:
        p.error("--rounds and --seconds must be positive")
    return args


def syscall_costs(rounds: int, calls: int = 300_000) -> int:
    """ns per write(2) (watched) and getppid(2) (not watched) under each syscall variant."""
    import time

    fd = os.open("/dev/null", os.O_WRONLY)

    def loop(kind: str) -> float:
        t = time.perf_counter_ns()
        if kind == "write":
            for _ in range(calls):
                os.write(fd, b"x")
        else:
            for _ in range(calls):
                os.getppid()
        return (time.perf_counter_ns() - t) / calls

    res: dict[tuple[str, str], list[float]] = {}
    try:
        for _ in range(rounds):
            for v in VARIANTS:
                floor = Floor(v, [])
                try:
                    for kind in ("write", "getppid"):
                        res.setdefault((v, kind), []).append(loop(kind))
                finally:
                    floor.close()
    finally:
        os.close(fd)
    print(f"{'syscall':<9} {'variant':<11} {'ns/call':>8} {'added':>6}  (median of {rounds})")
    for kind in ("write", "getppid"):
        base = statistics.median(res[("none", kind)])
        for v in VARIANTS:
            m = statistics.median(res[(v, kind)])
            print(f"{kind:<9} {v:<11} {m:>8.0f} {m - base:>+6.0f}")
    return 0


def _term(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/probe_floor.py must run as root (BPF)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _term)
    if args.syscalls:  # no nginx, no wrk
        return syscall_costs(args.rounds)
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk not found on PATH (sudo make deps)", file=sys.stderr)
        return 2
    rps: dict[str, list[float]] = {v: [] for v in args.variants}
    with tempfile.TemporaryDirectory(prefix="tw-floor-") as tmpdir, bpf_stats(False):
        tmp = Path(tmpdir)
        backend = Backend()
        gateway: Gateway | None = None
        upstream: Gateway | None = None
        try:
            backend.start()
            upstream_port = backend.port
            path = "/direct"
            if args.heads == "browser":  # the same proxying workload as nginx_ab --heads browser
                upstream = start_upstream(tmp, backend.port, args.heads,
                                          cpu_affinity=args.upstream_affinity)
                upstream_port = upstream.listen_port
                path = BROWSER_PATH + BROWSER_QUERY
            listen = free_port()
            tls = tls_listener(tmp) if args.tls else {}
            gateway = Gateway(tmp / "nginx", listen, upstream_port, workers=args.workers,
                              **tls, **args.gateway_kwargs)
            gateway.start()
            tgids = gateway.our_pids()
            scheme, port = ("https", gateway.tls_port) if args.tls else ("http", listen)
            url = f"{scheme}://127.0.0.1:{port}{path}"
            script = write_wrk_script(tmp, path, f"127.0.0.1:{listen}", args.heads)
            print(f"nginx {args.workers} workers, {url}; wrk -t{args.threads} "
                  f"-c{args.connections} -d{args.seconds:g}s; layout {args.layout}; "
                  f"{args.rounds} rounds")
            run_wrk(wrk, url, script, args, 2)  # warm-up
            for rnd in range(1, args.rounds + 1):
                k = (rnd - 1) % len(args.variants)
                order = args.variants[k:] + args.variants[:k]  # rotate: drift hits all alike
                for v in order:
                    floor = Floor(v, tgids)
                    try:
                        r, n, _secs, err, non2xx = run_wrk(wrk, url, script, args, args.seconds)
                        hits = floor.hits()
                    finally:
                        floor.close()
                    rps[v].append(r)
                    print(f"  round {rnd} {v:<11} {r:>10.0f} req/s  err {err}/{non2xx}  "
                          f"hits/request enter {hits[0] / max(n, 1):.2f} "
                          f"exit {hits[1] / max(n, 1):.2f} switch {hits[2] / max(n, 1):.2f}",
                          flush=True)
        except BenchError as e:
            print(f"probe_floor: {e}", file=sys.stderr)
            return 1
        finally:
            if gateway is not None:
                gateway.stop()
            if upstream is not None:
                upstream.stop()
            backend.stop()
    print(f"\n{'variant':<12} {'median req/s':>12} {'ratio':>6}  (median of per-round ratios)")
    for v in args.variants:
        ratios = [b / a for a, b in zip(rps["none"], rps[v], strict=True)]
        print(f"{v:<12} {statistics.median(rps[v]):>12.0f} {statistics.median(ratios):>6.3f}  "
              f"(min {min(ratios):.3f}, max {max(ratios):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
