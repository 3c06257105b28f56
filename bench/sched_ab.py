#!/usr/bin/env python3
"""Cost of the CPU probes (sched_switch / sched_wakeup) on a context-switch-heavy workload.

Interleaved A/B: two processes pinned to one CPU (--cpu, default 0) hand a token back and forth
for --seconds, without (A) and with (B) the probes loaded; B is run twice per round: the
processes not traced (every switch and wakeup on the machine pays the "is this a target?"
check) and traced (T: their CPU slices are charged to an identity).

--mode futex (default): the token is a shared word and futex(2) wait/wake (bench/pingpong.c,
built with gcc): a round trip is two wakeups, two context switches and no traced syscall, so the
ratio is the sched probes alone.  --mode pipe: one byte over two pipes, in Python: each round
trip also has four read/write syscalls that the HTTP probes watch, so the ratio is all probes.

Pinned, runs repeat within a few per cent; --cpu -1 lets the scheduler place the two processes
(runs then vary by ±30 %, by where they land).  Prints round trips per second and the ratios
B/A.  Needs root.  Not a test: nothing asserts.

    sudo .venv/bin/python bench/sched_ab.py --rounds 5 --seconds 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def build_pingpong(tmp: Path) -> Path:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise SystemExit("--mode futex needs gcc (apt-get install gcc), or use --mode pipe")
    exe = tmp / "twpingpong"  # not a target name: traced only when T adds it by pid
    subprocess.run([gcc, "-O2", "-o", str(exe), str(Path(__file__).with_name("pingpong.c"))],
                   check=True)
    return exe


def futex_pingpong(exe: Path, seconds: float, cpu: int, probes: HttpProbes | None) -> float:
    """Round trips per second of bench/pingpong.c; traced when `probes` is given."""
    p = subprocess.Popen([str(exe), str(seconds), str(cpu)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        if probes is not None:
            probes.set_targets({p.pid})  # before it forks: the fork hook adds the child
        out, _ = p.communicate("go\n", timeout=seconds + 60)
    finally:
        if p.poll() is None:
            p.kill()
    if p.returncode != 0:
        raise SystemExit(f"pingpong exited {p.returncode}")
    return float(out.strip())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--cpu", type=int, default=0,
                   help="pin both ping-pong processes to this CPU; -1: anywhere [0]")
    p.add_argument("--mode", choices=("futex", "pipe"), default="futex",
                   help="futex: no traced syscall, the sched probes alone; pipe: with four "
                        "watched syscalls per round trip [futex]")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("must run as root (BPF)", file=sys.stderr)
        return 2
    if args.cpu >= 0 and args.mode == "pipe":
        os.sched_setaffinity(0, {args.cpu})  # the forked echo side inherits it
    tmp = Path(tempfile.mkdtemp(prefix="tw-sched-"))
    exe = build_pingpong(tmp) if args.mode == "futex" else None
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
                if loaded:
                    probes.set_targets(set())
                if exe is not None:
                    rate = futex_pingpong(exe, args.seconds, args.cpu,
                                          probes if v == "T" else None)
                else:
                    if v == "T":  # the parent is traced; the fork hook adds the echo side
                        probes.set_targets({os.getpid()})
                    rate, _ = pingpong(args.seconds)
                (a if v == "A" else b_plain if v == "B" else b_traced).append(rate)
                print(f"round {rnd} {v}: {rate:10.0f} round trips/s", flush=True)
    finally:
        probes.close()
        shutil.rmtree(tmp, ignore_errors=True)
    ra = statistics.median(a)
    what = "sched probes only" if exe is not None else "sched + syscall probes"
    print(f"\nmode {args.mode}: A (no probes) {ra:10.0f} round trips/s (2 switches each)")
    for label, runs in (("B (probes, not traced)", b_plain), (f"T (traced: {what})", b_traced)):
        r = statistics.median(runs)
        ratios = [x / y for x, y in zip(runs, a)]
        print(f"{label:30}{r:10.0f} round trips/s  ratio {statistics.median(ratios):.3f} "
              f"(min {min(ratios):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
