"""The drain of tw_cpu, the busiest map of a burst, on the real map: the batch read unpacked
with struct and the per-key path give the same rows, take only the generation the kernel no
longer writes, keep the overflow entry (zeroed) and leave empty entries alone.  And the same
for an aggregate map (tw_agg0/1): both paths read its raw rows alike and empty it.  A white-box
test of the loader: it writes the maps through the loaded module (nothing else may)."""

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


def _agg_rows(table) -> None:
    """Rows in an aggregate map the kernel does not write now: a value, a token too long for
    the entry (no token event: no value), an unknown value, and an entry that counts nothing."""
    rows = [  # (key, side, value_len, value, heads, lost)
        (KEY + 11, abi.SIDE_SERVER, 4, b"acme", 3, 0),
        (KEY + 12, abi.SIDE_CLIENT, abi.VALUE_MAX + 9, b"t" * abi.VALUE_MAX, 1, 0),
        (KEY + 13, abi.SIDE_SERVER, abi.VALUE_UNKNOWN, b"", 0, 2),
        (KEY + 14, abi.SIDE_CLIENT, 6, b"globex", 0, 0),  # counts nothing: left out
    ]
    for key, side, value_len, value, heads, lost in rows:
        k, v = abi.AggKey(), abi.AggVal()
        k.key, k.side = key, side
        v.value_len, v.heads, v.lost, v.rx_bytes = value_len, heads, lost, 100 * heads
        v.req_by_class[1] = heads
        v.lat_buckets[2] = heads
        ct.memmove(v.value, value, len(value))
        leaf = table.Leaf()
        ct.memmove(ct.byref(leaf), ct.byref(v), ct.sizeof(abi.AggVal))
        table[table.Key(key, side)] = leaf


def test_batch_and_per_key_reads_of_an_aggregate_map_agree(probes):
    table = probes._bpf[b"tw_agg1" if probes._ctl.active & 1 == 0 else b"tw_agg0"]
    try:
        got = {}
        for batch in (True, False):
            probes._batch_ok = batch
            _agg_rows(table)
            n, rows = probes._read_and_clear(table)
            assert n >= 4 and len(table.items()) == 0  # read and emptied
            got[batch] = {r for r in rows if r.key > KEY}
            assert probes.drain_path == ("batch" if batch else "per-key")
        assert got[True] == got[False]
        by_key = {r.key: r for r in got[True]}
        assert set(by_key) == {KEY + 11, KEY + 12, KEY + 13}
        assert by_key[KEY + 11].raw_value == b"acme" and by_key[KEY + 11].side == Side.SERVER
        assert by_key[KEY + 11].request_heads == 3 and by_key[KEY + 11].rx_bytes == 300
        assert by_key[KEY + 12].raw_value is None and by_key[KEY + 12].side == Side.CLIENT
        assert by_key[KEY + 13].raw_value is None and by_key[KEY + 13].losses == 2
    finally:
        probes._batch_ok = True
        table.clear()
