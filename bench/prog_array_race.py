#!/usr/bin/env python3
"""The kernel race behind "a SIGKILL leaves two prog arrays loaded", shown without tenantwatch.

A child process loads a BPF prog array holding one tail program (bcc), and is SIGKILLed. When
its last fd to the array closes, the kernel clears the array in a deferred work item. If another
process opens the array by id (`BPF_MAP_GET_FD_BY_ID`, which `bpftool map show` does for every
map) and closes it again while that work is still pending, the array is never freed: it stays
loaded, empty, until reboot. Measured on 6.18 (2026-12-06): a look at once leaked the array on
every kill (6 of 6, with bpftool or with the bare syscall), a look 0.1 s later never did.

    sudo .venv/bin/python bench/prog_array_race.py --kills 6 --look bpftool --delay 0
    sudo .venv/bin/python bench/prog_array_race.py --kills 6 --look byid --delay 0.1
    sudo .venv/bin/python bench/prog_array_race.py --kills 6 --look none

Each leaked array costs 344 bytes of kernel memory until reboot: run it knowingly. Root.
"""

from __future__ import annotations

import argparse
import ctypes as ct
import json
import os
import shutil
import signal
import subprocess
import sys
import time

CHILD = r'''
import time
from bcc import BPF
b = BPF(text=b"""
BPF_PROG_ARRAY(race_progs, 4);
int tail(void *ctx) { race_progs.call(ctx, 0); return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) { race_progs.call(args, 0); return 0; }
""")
b[b"race_progs"][0] = b.load_func(b"tail", BPF.TRACEPOINT).fd
print("ready", flush=True)
time.sleep(3600)
'''
_NR_BPF = 321  # x86_64
_MAP_GET_NEXT_ID, _MAP_GET_FD_BY_ID = 12, 14


def arrays(bpftool: str) -> set[int]:
    out = subprocess.run([bpftool, "-j", "map", "show"], capture_output=True, text=True,
                         timeout=30, check=False).stdout
    return {m["id"] for m in json.loads(out or "[]") if m.get("name") == "race_progs"}


def look_by_id(seconds: float) -> None:
    """Open and close every map by id, for a while: the syscalls bpftool makes, nothing else."""
    libc = ct.CDLL(None, use_errno=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        nxt = 0
        while True:
            attr = (ct.c_uint32 * 4)(nxt, 0, 0, 0)
            if libc.syscall(_NR_BPF, _MAP_GET_NEXT_ID, ct.byref(attr), 16) < 0:
                break
            nxt = attr[1]
            get = (ct.c_uint32 * 4)(nxt, 0, 0, 0)
            fd = libc.syscall(_NR_BPF, _MAP_GET_FD_BY_ID, ct.byref(get), 16)
            if fd >= 0:
                os.close(fd)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=6)
    ap.add_argument("--look", choices=("bpftool", "byid", "none"), default="bpftool",
                    help="what looks at the maps after each kill [bpftool]")
    ap.add_argument("--delay", type=float, default=0.0,
                    help="seconds between the child's exit and the first look [0]")
    args = ap.parse_args(argv)
    bpftool = shutil.which("bpftool")
    if os.geteuid() != 0 or bpftool is None:
        print("needs root and bpftool", file=sys.stderr)
        return 2
    before = arrays(bpftool)
    for i in range(args.kills):
        child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
        if child.stdout.readline().strip() != "ready":
            print("the child did not load its programs", file=sys.stderr)
            return 1
        child.send_signal(signal.SIGKILL)
        child.wait()
        time.sleep(args.delay)
        if args.look == "bpftool":
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                subprocess.run([bpftool, "map", "show"], capture_output=True, timeout=30,
                               check=False)
        elif args.look == "byid":
            look_by_id(1.0)
        print(f"  kill {i + 1}/{args.kills}", flush=True)
    time.sleep(3)
    left = sorted(arrays(bpftool) - before)
    print(f"look {args.look}, delay {args.delay:g} s: {len(left)} of {args.kills} prog arrays "
          f"left loaded {left}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
