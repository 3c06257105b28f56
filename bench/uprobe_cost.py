#!/usr/bin/env python3
"""What one uprobe hit costs on this machine, by the kind of instruction probed.

Builds a tiny shared library (bench/uprobe_cost.S, with gcc) whose functions start with
`push %r13` (the kernel emulates it) or `sub $0x18,%rsp` (the kernel single-steps it out of
line), and a C loop that calls one of them N times.  Attaches empty BPF programs as an entry
uprobe, a return uprobe, or both (bcc, pid-filtered, as the daemon does) and prints ns per call.
This is the number behind kernel/ssl_points.py: in this VM class a single-step costs ~16 us,
an emulated hit ~0.4 us.  A benchmark: prints numbers, asserts nothing.  Needs root and gcc.

    sudo .venv/bin/python bench/uprobe_cost.py --calls 100000
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAIN_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
int f_push(int); int f_sub(int);
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    int (*f)(int) = !strcmp(argv[2], "push") ? f_push : f_sub;
    char c;
    if (read(0, &c, 1) != 1) return 2;  /* the probes are attached before the loop starts */
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    int s = 0;
    for (long i = 0; i < n; i++) s = f(s);
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
    return s != n;
}
"""
PROGRAMS = "int enter(struct pt_regs *ctx) { return 0; }\nint ret(struct pt_regs *ctx) { return 0; }\n"
CASES = [("push", ""), ("push", "entry"), ("push", "return"), ("push", "entry+return"),
         ("sub", ""), ("sub", "entry"), ("sub", "return"), ("sub", "entry+return")]


def build(tmp: Path) -> tuple[Path, Path]:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise SystemExit("bench/uprobe_cost.py needs gcc (apt-get install gcc)")
    lib, exe = tmp / "libtwcost.so", tmp / "twcost"
    subprocess.run([gcc, "-shared", "-fPIC", "-o", str(lib), str(HERE / "uprobe_cost.S")],
                   check=True)
    (tmp / "main.c").write_text(MAIN_C)
    subprocess.run([gcc, "-O2", "-o", str(exe), str(tmp / "main.c"), str(lib),
                    f"-Wl,-rpath,{tmp}"], check=True)
    return lib, exe


def one(lib: Path, exe: Path, fn: str, probes: str, calls: int) -> float:
    from bcc import BPF

    p = subprocess.Popen([str(exe), str(calls), fn], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    b = None
    try:
        if probes:
            b = BPF(text=PROGRAMS)
            sym = f"f_{fn}".encode()
            if "entry" in probes:
                b.attach_uprobe(name=str(lib).encode(), sym=sym, fn_name=b"enter", pid=p.pid)
            if "return" in probes:
                b.attach_uretprobe(name=str(lib).encode(), sym=sym, fn_name=b"ret", pid=p.pid)
        out, _ = p.communicate("x", timeout=600)
    finally:
        if p.poll() is None:
            p.kill()
        if b is not None:
            b.cleanup()
    return float(out.strip())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=100_000, help="calls per run [100000]")
    ap.add_argument("--rounds", type=int, default=3, help="runs per case; the median [3]")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/uprobe_cost.py must run as root (BPF)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="tw-uprobe-") as d:
        lib, exe = build(Path(d))
        print(f"{'first instruction':<26} {'probes':<14} {'ns per call':>12}")
        for fn, probes in CASES:
            ns = statistics.median(one(lib, exe, fn, probes, args.calls)
                                   for _ in range(args.rounds))
            insn = "push %r13 (emulated)" if fn == "push" else "sub $0x18,%rsp (stepped)"
            print(f"{insn:<26} {probes or '-':<14} {ns:>12.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
