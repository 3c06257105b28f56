"""HttpProbes' drain of the generation-keyed maps (tw_cpu, tw_closes, tw_breach): one batch
lookup and one batch delete where the kernel has them, one key at a time where it does not or
where a batch stops.  The map is a stand-in with bcc's table interface (no BPF here; the kernel
suite and the 5.10 guest run the real maps through both paths)."""

from __future__ import annotations

import ctypes as ct

from tenantwatch.kernel.loader import HttpProbes


class Key(ct.Structure):
    _fields_ = [("key", ct.c_uint64), ("gen", ct.c_uint32)]


class Leaf(ct.Structure):
    _fields_ = [("closed", ct.c_uint64)]


class MapCallFailed(Exception):
    """bcc raises a bare Exception when a map call fails; the drain catches any."""


class StandInTable:
    """bcc's TableBase as the drain uses it, over a dict; batch calls can be made to fail."""

    Key, Leaf = Key, Leaf

    def __init__(self, entries: dict[tuple[int, int], int], batch_lookup: bool = True,
                 batch_delete: bool = True) -> None:
        self.data = dict(entries)
        self.batch_lookup, self.batch_delete = batch_lookup, batch_delete
        self.calls: list[str] = []

    def items_lookup_batch(self):
        self.calls.append("lookup_batch")
        if not self.batch_lookup:
            raise MapCallFailed("BPF_MAP_LOOKUP_BATCH has failed: Invalid argument")
        keys = (Key * len(self.data))(*(Key(k, g) for k, g in self.data))
        leaves = (Leaf * len(self.data))(*(Leaf(v) for v in self.data.values()))
        return ((keys[i], leaves[i]) for i in range(len(self.data)))  # views, as bcc's

    def items(self):
        self.calls.append("items")
        return [(Key(k, g), Leaf(v)) for (k, g), v in self.data.items()]

    def items_delete_batch(self, keys) -> None:
        self.calls.append("delete_batch")
        if not self.batch_delete:
            raise MapCallFailed("BPF_MAP_DELETE_BATCH has failed: Invalid argument")
        for k in keys:
            if (k.key, k.gen) not in self.data:  # the kernel stops at a missing key
                raise MapCallFailed("BPF_MAP_DELETE_BATCH has failed: No such file")
            del self.data[(k.key, k.gen)]

    def __delitem__(self, k) -> None:
        self.calls.append("delete")
        if (k.key, k.gen) not in self.data:
            raise KeyError(k)
        del self.data[(k.key, k.gen)]


ENTRIES = {(1, 0): 10, (2, 0): 20, (3, 1): 30, (4, 1): 40}


def probes_with(table: StandInTable) -> HttpProbes:
    p = HttpProbes([], ["nginx"], (0.1,))
    p._bpf = {b"tw_closes": table}
    return p


def taken(p: HttpProbes, gen: int) -> dict[tuple[int, int], int]:
    return {(int(k.key), int(k.gen)): int(v.closed)
            for k, v in p._take_generation(b"tw_closes", gen)}


def test_one_batch_lookup_and_one_batch_delete_take_one_generation() -> None:
    table = StandInTable(ENTRIES)
    p = probes_with(table)
    assert taken(p, 0) == {(1, 0): 10, (2, 0): 20}
    assert table.data == {(3, 1): 30, (4, 1): 40}  # the generation the kernel writes stays
    assert table.calls == ["lookup_batch", "delete_batch"]
    assert taken(p, 1) == {(3, 1): 30, (4, 1): 40} and table.data == {}
    assert p.drain_path == "batch"


def test_the_taken_entries_are_copies_not_views_of_the_batch_buffer() -> None:
    table = StandInTable(ENTRIES)
    rows = probes_with(table)._take_generation(b"tw_closes", 1)
    assert all(not k._b_base_ and not v._b_base_ for k, v in rows)


def test_without_batch_lookup_every_later_call_goes_key_by_key() -> None:
    table = StandInTable(ENTRIES, batch_lookup=False)
    p = probes_with(table)
    assert taken(p, 0) == {(1, 0): 10, (2, 0): 20}
    assert table.calls == ["lookup_batch", "items", "delete", "delete"]
    assert p.drain_path == "per-key"
    table.calls.clear()
    assert taken(p, 1) == {(3, 1): 30, (4, 1): 40} and table.data == {}
    assert table.calls == ["items", "delete", "delete"]


def test_a_batch_delete_that_stops_is_finished_key_by_key() -> None:
    table = StandInTable(ENTRIES)
    p = probes_with(table)
    original = table.items_lookup_batch

    def lookup_then_lose_one():  # a key goes between the lookup and the delete
        rows = list(original())
        del table.data[(2, 0)]
        return iter(rows)

    table.items_lookup_batch = lookup_then_lose_one
    assert taken(p, 0) == {(1, 0): 10, (2, 0): 20}
    assert table.data == {(3, 1): 30, (4, 1): 40}
    assert table.calls[-2:] == ["delete", "delete"]  # the missing key is no error
    assert p.drain_path == "batch"  # one stopped batch does not switch batches off


def test_nothing_of_the_generation_means_no_delete_call() -> None:
    table = StandInTable({(3, 1): 30})
    assert taken(probes_with(table), 0) == {}
    assert table.calls == ["lookup_batch"] and table.data == {(3, 1): 30}


def test_the_unpacked_batch_rows_equal_the_ctypes_conversion() -> None:
    """The aggregate map's raw rows are unpacked with struct (_unpacked_counts, both drain
    paths); the reference here reads the same rows field by field through the ctypes layout of
    tw_state.h (abi.AggKey, abi.AggVal). Random rows, with empty ones, unknown values, bearer
    tokens longer than an entry (from token events, or missing), every flag bit."""
    import random

    from tenantwatch.kernel import abi
    from tenantwatch.kernel.loader import _unpacked_counts

    rng = random.Random(16)
    n = 400
    keys, vals = (abi.AggKey * n)(), (abi.AggVal * n)()
    tokens = {}
    for i in range(n):
        keys[i].key, keys[i].side = rng.getrandbits(64), rng.choice((0, 1))
        v = vals[i]
        if rng.random() < 0.2:
            continue  # nothing counted: left out by both
        for c in range(abi.NCLASS):
            v.req_by_class[c] = rng.choice((0, 0, 1, 7))
        v.heads, v.rx_bytes, v.tx_bytes = (rng.getrandbits(20) for _ in range(3))
        for b in range(abi.MAX_BUCKETS + 1):
            v.lat_buckets[b] = rng.choice((0, 0, 3))
        v.lat_sum_ns, v.conn_opened, v.conn_closed, v.conn_dur_ns = (
            rng.getrandbits(40), rng.randrange(9), rng.randrange(9), rng.getrandbits(40))
        v.source, v.flags, v.lost = rng.randrange(-1, 8), rng.getrandbits(12), rng.randrange(3)
        kind = rng.random()
        if kind < 0.2:
            v.value_len = abi.VALUE_UNKNOWN
        elif kind < 0.3:  # a long token: whole from its event, or not (yet) received
            v.value_len = abi.VALUE_MAX + 50
            if rng.random() < 0.5:
                tokens[keys[i].key] = b" " + b"t" * (abi.VALUE_MAX + 49)
        else:
            raw = rng.choice((b"acme", b" \tglobex", b"x" * abi.VALUE_MAX, b""))
            v.value_len = len(raw)
            ct.memmove(v.value, raw, len(raw))
    for nbounds in (16, abi.MAX_BUCKETS):
        want = tuple(reference_counts(keys[i], vals[i], nbounds, tokens) for i in range(n)
                     if counts_something(vals[i]))
        got = tuple(_unpacked_counts(bytes(keys), bytes(vals), nbounds, tokens))
        assert got == want and len(got) > n // 2


def counts_something(v) -> bool:
    return bool(v.heads or sum(v.req_by_class) or v.rx_bytes or v.tx_bytes or v.conn_opened
                or v.conn_closed or v.lost)


def reference_counts(k, v, nbounds: int, tokens: dict):
    """One aggregate row's IdentityCounts, read field by field from its ctypes structs."""
    from tenantwatch.kernel import abi
    from tenantwatch.kernel.records import IdentityCounts, Side, ValueFlag

    raw = None
    if v.value_len == abi.VALUE_UNKNOWN:
        pass
    elif v.value_len <= abi.VALUE_MAX:
        raw = bytes(v.value[: v.value_len])
    else:
        raw = tokens.get(int(k.key))
        if raw is not None and len(raw) != v.value_len:
            raw = None
    if raw is not None:
        raw = raw.lstrip(b" \t")
    return IdentityCounts(
        key=int(k.key), side=Side.SERVER if k.side == abi.SIDE_SERVER else Side.CLIENT,
        raw_value=raw, source_index=int(v.source), flags=ValueFlag(v.flags & 0x1FF),
        requests_by_class=tuple(v.req_by_class[:]), request_heads=int(v.heads),
        rx_bytes=int(v.rx_bytes), tx_bytes=int(v.tx_bytes),
        latency_buckets=tuple(v.lat_buckets[:nbounds + 1]), latency_sum_ns=int(v.lat_sum_ns),
        connections_opened=int(v.conn_opened), connections_closed=int(v.conn_closed),
        connections_duration_ns=int(v.conn_dur_ns), losses=int(v.lost))
