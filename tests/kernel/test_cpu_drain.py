"""The drain of tw_cpu, the busiest map of a burst, on the real map: the batch read unpacked
with struct and the per-key path give the same rows, take only the generation the kernel no
longer writes, keep the overflow entry (zeroed) and leave empty entries alone.  A white-box test
of the loader: it writes the map through the loaded module (nothing else may)."""

from __future__ import annotations

import ctypes as ct

from tenantwatch.kernel import abi
from tenantwatch.kernel.records import CpuCounts, Side

KEY = 7_000_000_000  # identity keys no request of this module makes


def _fill(table, gen: int) -> None:
    rows = [  # (key, tgid, cpu, side, ns)
        (KEY + 1, 101, 0, abi.SIDE_SERVER, 1_000),
        (KEY + 1, 101, 1, abi.SIDE_SERVER, 2_000),
        (KEY + 2, 102, 0, abi.SIDE_CLIENT, 3_000),
        (KEY + 3, 103, 1, abi.SIDE_SERVER | abi.CPU_H2, 4_000),  # an HTTP/2 stream's key
        (KEY + 4, 104, 0, abi.SIDE_SERVER, 0),  # nothing counted: skipped, stays
        (abi.KEY_OVERFLOW, 0, 0, abi.SIDE_SERVER, 5_000),  # the full map's entry: stays, zeroed
    ]
    for key, tgid, cpu, side, ns in rows:
        table[table.Key(key, tgid, cpu, side, gen)] = ct.c_uint64(ns + gen if ns else 0)


def _ours(rows) -> set:
    return {r for r in rows if r.key > KEY or r.key == abi.KEY_OVERFLOW}


def _left(table) -> dict:
    return {(int(k.key), int(k.tgid), int(k.cpu), int(k.gen)): int(v.value)
            for k, v in table.items() if k.key > KEY or k.key == abi.KEY_OVERFLOW}


def expected(gen: int) -> set:
    return {CpuCounts(KEY + 1, 101, 0, Side.SERVER, 1_000 + gen),
            CpuCounts(KEY + 1, 101, 1, Side.SERVER, 2_000 + gen),
            CpuCounts(KEY + 2, 102, 0, Side.CLIENT, 3_000 + gen),
            CpuCounts(KEY + 3, 103, 1, Side.SERVER, 4_000 + gen, h2_stream=True),
            CpuCounts(abi.KEY_OVERFLOW, 0, 0, Side.SERVER, 5_000 + gen)}


def test_batch_and_per_key_drains_take_one_generation_alike(probes):
    table = probes._bpf[b"tw_cpu"]
    try:
        _fill(table, 0)
        _fill(table, 1)
        assert probes._batch_ok  # this kernel (5.6+) has batch operations
        assert _ours(probes._drain_cpu(0)) == expected(0)
        left = _left(table)
        assert left[(abi.KEY_OVERFLOW, 0, 0, 0)] == 0  # zeroed, not deleted
        assert left[(KEY + 4, 104, 0, 0)] == 0  # empty: left alone
        assert {k for k in left if k[3] == 0} == {(abi.KEY_OVERFLOW, 0, 0, 0),
                                                  (KEY + 4, 104, 0, 0)}
        assert len([k for k in left if k[3] == 1]) == 6  # the other generation untouched

        probes._batch_ok = False  # the per-key path, as on a kernel before 5.6
        assert _ours(probes._drain_cpu(1)) == expected(1)
        left = _left(table)
        assert {k for k in left if k[3] == 1} == {(abi.KEY_OVERFLOW, 0, 0, 1),
                                                  (KEY + 4, 104, 0, 1)}
        assert left[(abi.KEY_OVERFLOW, 0, 0, 1)] == 0
    finally:
        probes._batch_ok = True
        for k in [k for k, _ in table.items() if k.key > KEY or k.key == abi.KEY_OVERFLOW]:
            del table[k]
