#!/usr/bin/env python3
"""Where a loaded BPF program spends its time, by source line: perf samples mapped through the
program's jited line info.

`perf annotate` needs a perf built with libopcodes for BPF, and `bpftool prog dump jited` needs
libbfd; Debian 12's builds have neither. This script needs only `perf` and `bpftool`: it samples
one CPU with `perf record -e cpu-clock` for a while, keeps the samples whose symbol is the
program, asks the kernel for the program's `jited_line_info` (the JIT address of each line-info
instruction) and `line_info`, and maps every sample to the source line of the instruction
before it (`bpftool prog dump xlated linum` names the lines).

Run it while the program works, for example during the B phase of
`bench/nginx_ab.py --heads browser --rounds 1 --seconds 25` (the gateway worker is on CPU 1):

    sudo .venv/bin/python bench/bpf_lines.py --prog tw_parse --cpu 1 --seconds 8

It prints the program's share of the CPU's samples and its hottest source lines. A benchmark
helper, not a test; root (perf on kernel addresses, BPF object info).
"""

from __future__ import annotations

import argparse
import bisect
import collections
import ctypes as ct
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_NR_BPF = 321  # x86_64
_PROG_GET_FD_BY_ID = 13
_OBJ_GET_INFO_BY_FD = 15
# struct bpf_prog_info offsets (include/uapi/linux/bpf.h)
_NR_LINE_INFO, _LINE_INFO, _JITED_LINE_INFO = 148, 152, 160
_NR_JITED_LINE_INFO, _LINE_INFO_REC_SIZE, _JITED_LINE_INFO_REC_SIZE = 168, 172, 176
_INFO_SIZE = 256


def _bpf(cmd: int, attr: ct.Array) -> int:
    libc = ct.CDLL(None, use_errno=True)
    r = libc.syscall(_NR_BPF, cmd, ct.byref(attr), ct.sizeof(attr))
    if r < 0:
        err = ct.get_errno()
        raise OSError(err, f"bpf({cmd}): {os.strerror(err)}")
    return r


def _info(fd: int, info: ct.Array) -> None:
    attr = (ct.c_uint8 * 16)()
    ct.c_uint32.from_buffer(attr, 0).value = fd
    ct.c_uint32.from_buffer(attr, 4).value = ct.sizeof(info)
    ct.c_uint64.from_buffer(attr, 8).value = ct.addressof(info)
    _bpf(_OBJ_GET_INFO_BY_FD, attr)


def line_addresses(prog_id: int) -> list[tuple[int, int]]:
    """[(JIT address, xlated instruction index)] of the program's line-info records."""
    attr = (ct.c_uint8 * 16)()
    ct.c_uint32.from_buffer(attr, 0).value = prog_id
    fd = _bpf(_PROG_GET_FD_BY_ID, attr)
    try:
        info = (ct.c_uint8 * _INFO_SIZE)()
        _info(fd, info)
        n = ct.c_uint32.from_buffer(info, _NR_LINE_INFO).value
        nj = ct.c_uint32.from_buffer(info, _NR_JITED_LINE_INFO).value
        rec = ct.c_uint32.from_buffer(info, _LINE_INFO_REC_SIZE).value
        jrec = ct.c_uint32.from_buffer(info, _JITED_LINE_INFO_REC_SIZE).value
        if not n or n != nj or jrec != 8:
            raise SystemExit(f"program {prog_id} has no usable line info ({n}/{nj} records)")
        lines = (ct.c_uint8 * (n * rec))()
        jited = (ct.c_uint64 * nj)()
        want = (ct.c_uint8 * _INFO_SIZE)()
        for off, value in ((_NR_LINE_INFO, n), (_NR_JITED_LINE_INFO, nj),
                           (_LINE_INFO_REC_SIZE, rec), (_JITED_LINE_INFO_REC_SIZE, jrec)):
            ct.c_uint32.from_buffer(want, off).value = value
        ct.c_uint64.from_buffer(want, _LINE_INFO).value = ct.addressof(lines)
        ct.c_uint64.from_buffer(want, _JITED_LINE_INFO).value = ct.addressof(jited)
        _info(fd, want)
    finally:
        os.close(fd)
    return sorted((int(jited[i]), ct.c_uint32.from_buffer(lines, i * rec).value)
                  for i in range(n))


def source_lines(bpftool: str, prog_id: int) -> dict[int, str]:
    """xlated instruction index -> the source line bpftool prints above it."""
    out = subprocess.run([bpftool, "prog", "dump", "xlated", "id", str(prog_id), "linum"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    src: dict[int, str] = {}
    current = "?"
    for line in out.splitlines():
        if line.startswith(";"):
            current = re.sub(r"\s*\[file:[^\]]*line_num:(\d+)[^\]]*\]$", r"  [line \1]",
                             line[1:].strip())
            continue
        m = re.match(r"\s*(\d+):", line)
        if m:
            src[int(m.group(1))] = current
    return src


def find_program(bpftool: str, name: str) -> int:
    progs = json.loads(subprocess.run([bpftool, "prog", "show", "-j"], capture_output=True,
                                      text=True, check=True, timeout=30).stdout or "[]")
    ids = [p["id"] for p in progs if p.get("name") == name]
    if not ids:
        raise SystemExit(f"no loaded BPF program named {name!r} (is the daemon running?)")
    return ids[-1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prog", default="tw_parse", help="program name (bpftool prog show) [tw_parse]")
    ap.add_argument("--cpu", type=int, default=1, help="CPU to sample [1]")
    ap.add_argument("--seconds", type=float, default=8, help="sampling time [8]")
    ap.add_argument("--top", type=int, default=30, help="source lines to print [30]")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/bpf_lines.py must run as root", file=sys.stderr)
        return 2
    perf, bpftool = shutil.which("perf"), shutil.which("bpftool")
    if perf is None or bpftool is None:
        print("needs perf (linux-perf) and bpftool on PATH", file=sys.stderr)
        return 2
    prog_id = find_program(bpftool, args.prog)
    addresses = line_addresses(prog_id)
    src = source_lines(bpftool, prog_id)
    with tempfile.TemporaryDirectory(prefix="tw-lines-") as tmp:
        data = Path(tmp) / "perf.data"
        print(f"sampling CPU {args.cpu} for {args.seconds:g} s ...", flush=True)
        subprocess.run([perf, "record", "-q", "-e", "cpu-clock", "-C", str(args.cpu), "-o",
                        str(data), "sleep", str(args.seconds)], check=True,
                       stdout=subprocess.DEVNULL, timeout=args.seconds + 60)
        script = subprocess.run([perf, "script", "-i", str(data), "-F", "ip,sym"],
                                capture_output=True, text=True, check=True, timeout=300).stdout
    starts = [a for a, _ in addresses]
    total = mine = 0
    hist: collections.Counter[str] = collections.Counter()
    suffix = f"_{args.prog}"
    for line in script.splitlines():
        parts = line.split()
        if not parts:
            continue
        total += 1
        if len(parts) < 2 or not parts[1].endswith(suffix) or not parts[1].startswith("bpf_prog_"):
            continue
        k = bisect.bisect_right(starts, int(parts[0], 16)) - 1
        if k < 0:
            continue
        mine += 1
        hist[src.get(addresses[k][1], "?")] += 1
    print(f"{args.prog} (id {prog_id}): {mine} of {total} samples on CPU {args.cpu} "
          f"({100 * mine / max(total, 1):.1f} %)")
    for text, n in hist.most_common(args.top):
        print(f"{n:6d} {100 * n / max(mine, 1):5.1f} %  {text[:140]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
