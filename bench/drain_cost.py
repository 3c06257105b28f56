#!/usr/bin/env python3
"""What the drain (HttpProbes.drain: reading the kernel's maps into records) costs per identity.

Loads the probes (root; they trace no process), fills the aggregate map the kernel writes now
with N tenants on both sides (2N identities, each with a raw value, a request, a latency bucket,
opened connections) and tw_cpu with --cpu-rows entries per identity (one per worker and CPU, as
bench/scale.py's burst makes), then times drain(), less its 10 ms flip grace period.  Prints
the median and best of --rounds, and µs per identity.

    sudo .venv/bin/python bench/drain_cost.py [--tenants 10000] [--cpu-rows 4] [--rounds 5]

A white-box bench: it writes the maps through the loaded module (nothing else may).  The fold of
these records into the totals is bench/tick_cost.py; the whole tick under traffic bench/scale.py.
"""

from __future__ import annotations

import argparse
import ctypes as ct
import os
import statistics
import sys
import time

from tenantwatch.kernel.loader import FLIP_GRACE_SECONDS, HttpProbes, KernelSource
from tenantwatch.kernel.records import Side

BASE_KEY = 10**9


def fill(p: HttpProbes, identities: int, cpu_rows: int) -> None:
    """The maps of the generation the kernel writes now, as a burst leaves them."""
    b = p._bpf
    gen = p._ctl.active & 1
    agg = b[b"tw_agg1" if gen else b"tw_agg0"]
    keys, vals = (agg.Key * identities)(), (agg.Leaf * identities)()
    for i in range(identities):
        keys[i].key, keys[i].side = BASE_KEY + i // 2, i & 1
        v = vals[i]
        v.heads, v.rx_bytes, v.tx_bytes, v.lat_sum_ns, v.conn_opened = 1, 900, 1400, 800_000, 5
        v.req_by_class[1] = 1
        v.lat_buckets[2] = 1
        name = f"t{i // 2}".encode()
        v.value_len = len(name)
        ct.memmove(v.value, name, len(name))
    agg.items_update_batch(keys, vals)
    cpu = b[b"tw_cpu"]
    m = identities * cpu_rows
    ckeys, cvals = (cpu.Key * m)(), (cpu.Leaf * m)()
    for j in range(m):
        i, r = divmod(j, cpu_rows)
        k = ckeys[j]
        k.key, k.tgid, k.cpu, k.side, k.gen = BASE_KEY + i // 2, 4242 + r // 2, r % 2, i & 1, gen
        cvals[j] = 30_000
    cpu.items_update_batch(ckeys, cvals)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tenants", type=int, default=10000)
    ap.add_argument("--cpu-rows", type=int, default=4,
                    help="tw_cpu entries per identity (one per worker and CPU that ran it)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/drain_cost.py needs root (it loads the BPF programs)", file=sys.stderr)
        return 2
    n = 2 * args.tenants
    p = HttpProbes([KernelSource("x-tenant-id", (Side.SERVER,))], ["tw-bench-nobody"],
                   (0.001, 0.01, 0.1, 1.0), max_identities=n + 2048)
    p.load()
    times = []
    try:
        for r in range(args.rounds):
            fill(p, n, args.cpu_rows)
            started = time.perf_counter()
            tick = p.drain()
            times.append(time.perf_counter() - started - FLIP_GRACE_SECONDS)
            if len(tick.identities) != n or len(tick.cpu) != n * args.cpu_rows:
                raise SystemExit(f"drained {len(tick.identities)} identities and "
                                 f"{len(tick.cpu)} CPU rows, filled {n} and {n * args.cpu_rows}")
            print(f"round {r + 1}: {times[-1] * 1e3:.0f} ms", flush=True)
    finally:
        p.close()
    print(f"drain of {n} identities and {n * args.cpu_rows} CPU rows ({p.drain_path}): median "
          f"{statistics.median(times) * 1e3:.0f} ms, best {min(times) * 1e3:.0f} ms "
          f"({min(times) / n * 1e6:.1f} µs an identity)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
