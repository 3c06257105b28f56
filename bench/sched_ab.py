#!/usr/bin/env python3
"""Cost of the CPU probes (sched_switch / sched_wakeup) on a context-switch-heavy workload.

Interleaved A/B: a ping-pong of two processes over pipes (every round trip is two wakeups and
two context switches) runs for --seconds, without (A) and with (B) the probes loaded; B is run
twice per round: the ping-pong processes not traced (every switch on the machine pays the
"is this a target?" check) and traced (their switches are charged to a tenant).
Both ping-pong processes are pinned to one CPU (--cpu, default 0), so every round trip really
switches and runs repeat within a few per cent; --cpu -1 lets the scheduler place them (runs then
vary by ±30 %, by where the two land).
Prints round trips per second and the ratios B/A.  Needs root.  Not a test: nothing asserts.

    sudo .venv/bin/python bench/sched_ab.py --rounds 5 --seconds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tenantwatch.kernel.loader import HttpProbes, KernelSource
from tenantwatch.kernel.records import Side

PING_NAME = "tw-pingpong"


def pingpong(seconds: float) -> tuple[float, list[int]]:
    """Round trips per second of a two-process pipe ping-pong; returns (rate, pids)."""
    a_r, a_w = os.pipe()
    b_r, b_w = os.pipe()
    child = os.fork()
    if child == 0:  # echo side
        try:
            import ctypes
            ctypes.CDLL(None).prctl(15, PING_NAME.encode(), 0, 0, 0)
            while True:
                d = os.read(a_r, 1)
                if not d or d == b"q":
                    break
                os.write(b_w, d)
        finally:
            os._exit(0)
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(200):
            os.write(a_w, b"x")
            os.read(b_r, 1)
        n += 200
    os.write(a_w, b"q")
    os.waitpid(child, 0)
    for fd in (a_r, a_w, b_r, b_w):
        os.close(fd)
    return n / seconds, [child]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--cpu", type=int, default=0,
                   help="pin both ping-pong processes to this CPU; -1: anywhere [0]")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("must run as root (BPF)", file=sys.stderr)
        return 2
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})  # the forked echo side inherits it
    probes = HttpProbes([KernelSource("x-tenant-id", (Side.SERVER,))], [PING_NAME], (0.001,))
    a, b_plain, b_traced = [], [], []
    try:
        probes.load()
        loaded = True
        for rnd in range(1, args.rounds + 1):
            order = ("A", "B", "T") if rnd % 2 else ("T", "B", "A")
            for v in order:
                if v == "A" and loaded:
                    probes.close()
                    loaded = False
                if v in "BT" and not loaded:
                    probes = HttpProbes([KernelSource("x-tenant-id", (Side.SERVER,))],
                                        [PING_NAME], (0.001,))
                    probes.load()
                    loaded = True
                if v == "T":  # the ping-pong's parent is traced too (exec hook names the child)
                    probes.set_targets({os.getpid()})
                elif loaded:
                    probes.set_targets(set())
                rate, _ = pingpong(args.seconds)
                (a if v == "A" else b_plain if v == "B" else b_traced).append(rate)
                print(f"round {rnd} {v}: {rate:10.0f} round trips/s", flush=True)
    finally:
        probes.close()
    ra = statistics.median(a)
    print(f"\nA (no probes)                 {ra:10.0f} round trips/s (4 switches each)")
    for label, runs in (("B (probes, not traced)", b_plain), ("T (probes, traced: sched + syscall probes)", b_traced)):
        r = statistics.median(runs)
        ratios = [x / y for x, y in zip(runs, a)]
        print(f"{label:30}{r:10.0f} round trips/s  ratio {statistics.median(ratios):.3f} "
              f"(min {min(ratios):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
