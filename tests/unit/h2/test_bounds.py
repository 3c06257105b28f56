"""Memory bounds: connections, streams, header blocks, held events, keys per tick."""

from __future__ import annotations

import tracemalloc

from hpack import Encoder

from tenantwatch.h2 import H2Event, H2Tracker
from tenantwatch.h2.session import MAX_HEADER_BLOCK, MAX_PENDING_EVENTS
from tenantwatch.kernel.records import Side

from .conv import closed, frame, headers_frame
from .summary import BOUNDS, SOURCES, fold

SETTINGS = frame(0x4, 0, 0)


def req(tenant: str) -> list[tuple[str, str]]:
    return [(":method", "GET"), (":scheme", "https"), (":authority", "api.example.com"),
            (":path", "/v1/items?page=2"), ("x-tenant-id", tenant),
            ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0"),
            ("accept", "application/json"), ("accept-encoding", "gzip, deflate, br")]


def ev(conn: int, is_request: bool, seq: int, data: bytes, ts_ns: int = 0) -> H2Event:
    return H2Event(conn, Side.SERVER, is_request, seq, ts_ns, data)


def open_request(conn: int, tenant: str, sid: int = 1) -> H2Event:
    return ev(conn, True, 0, SETTINGS + headers_frame(Encoder(), sid, req(tenant), True))


def tracker(**kw) -> H2Tracker:
    return H2Tracker(SOURCES, BOUNDS, secret=b"k", **kw)


def test_connection_limit() -> None:
    t = tracker(max_connections=10)
    t.feed([open_request(c, f"t{c}") for c in range(20)])
    assert t.connections == 10
    assert t.lost_streams == {"h2_conn_limit": 10}
    t.feed([ev(c, True, 1, frame(0x8, 0, 0, b"\x00\x00\x01\x00")) for c in range(20)])
    assert t.lost_streams == {"h2_conn_limit": 10}  # counted once per connection
    t.feed([closed(c) for c in range(10)])
    assert t.connections == 0
    t.feed([open_request(c, f"t{c}") for c in range(10, 15)])  # ids reused: new connections
    assert t.connections == 5
    got = fold(t.take())
    assert set(got) == {f"t{c}" for c in range(15)}


def test_stream_limit() -> None:
    t = tracker(max_streams=1000)
    enc = Encoder()
    frames = b"".join(headers_frame(enc, 2 * i + 1, req(f"t{i % 3}"), True) for i in range(1500))
    t.feed([ev(1, True, 0, SETTINGS + frames)])
    assert t.lost_streams == {"h2_stream_limit": 500}
    got = fold(t.take())
    assert sum(v.classes.get("none", 0) for v in got.values()) == 500  # counted at once
    assert sum(v.heads for v in got.values()) == 1500
    t.feed([closed(1)])
    got = fold(t.take())
    assert sum(v.classes.get("none", 0) for v in got.values()) == 1000


def test_header_block_limit() -> None:
    enc = Encoder()
    big = enc.encode([("x-tenant-id", "t1"), ("x-big", "v" * (MAX_HEADER_BLOCK + 1))],
                     huffman=False)
    assert MAX_HEADER_BLOCK < len(big) < 0xFFFFFF
    t = tracker()
    t.feed([ev(1, True, 0, SETTINGS + frame(0x1, 0x5, 1, big))])
    assert t.lost_streams == {"h2_header_limit": 1}
    # over the limit in CONTINUATIONs: each piece is small, the block is not
    t2 = tracker()
    piece = 16 * 1024
    parts = [big[i:i + piece] for i in range(0, len(big), piece)]
    data = frame(0x1, 0x1, 1, parts[0]) + b"".join(
        frame(0x9, 0x4 if i == len(parts) - 1 else 0, 1, p) for i, p in enumerate(parts[1:], 1))
    t2.feed([ev(1, True, 0, SETTINGS + data)])
    assert t2.lost_streams == {"h2_header_limit": 1}
    assert fold(t2.take())["__unattributed__"].classes == {"none": 1}


def test_indexed_flood_is_bounded_by_the_decoded_list_size() -> None:
    enc = Encoder()
    first = enc.encode(req("t1") + [("x-pad", "p" * 3000)])  # now in the dynamic table
    index = enc.encode([("x-pad", "p" * 3000)])  # one byte: an index
    assert len(index) == 1
    t = tracker()
    t.feed([ev(1, True, 0, SETTINGS + frame(0x1, 0x5, 1, first)
               + frame(0x1, 0x5, 3, index * 200))])
    assert t.lost_streams == {"h2_decode": 2}  # stream 1 in flight, stream 3


def test_events_held_behind_a_gap_are_bounded() -> None:
    t = tracker()
    t.feed([open_request(1, "t1")])
    ping = frame(0x6, 0, 0, b"12345678")
    t.feed([ev(1, True, s, ping) for s in range(2, MAX_PENDING_EVENTS + 3)])  # seq 1 missing
    assert t.lost_streams == {"h2_gap": 1}


def test_keys_per_tick_bounded() -> None:
    t = tracker(max_keys=5)
    enc = Encoder()
    frames = b"".join(headers_frame(enc, 2 * i + 1, req(f"t{i}"), True) for i in range(10))
    t.feed([ev(1, True, 0, SETTINGS + frames)])
    counts = t.take()
    assert len(counts) == 6
    got = fold(counts)
    assert got["__other__"].heads == 5 and len(got) == 6


def test_connection_flood_memory_and_release() -> None:
    n = 1000
    enc_first = [open_request(c, f"t{c % 50}") for c in range(n)]
    t = tracker()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        t.feed(enc_first)
        t.take()
        held = tracemalloc.get_traced_memory()[0] - base
        t.feed([closed(c) for c in range(n)])
        t.take()
        after = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert t.connections == 0
    per_conn = held / n
    assert per_conn < 12 * 1024, per_conn  # two HPACK tables, splitters, one open stream
    assert after < held / 10


class _ByteClock:
    """A clock for the budget that charges each connection the bytes of its events in the
    feed (cost proportional to bytes, deterministic, and blind to how the tracker is built:
    it runs the same on the compiled modules).  The tracker reads the clock before and after
    each connection it decodes, in the order the connections first appear in the feed;
    ``expect(batch)`` queues those costs, and a connection the tracker skips unread never
    reads the clock, so is never charged (the skipped one must come last in the feed, as in
    the test below, or the queue would shift)."""

    def __init__(self) -> None:
        self.now = 0
        self._costs: list[int] = []
        self._inside = False

    def expect(self, batch) -> None:
        costs: dict[int, int] = {}
        for e in batch:
            costs[e.conn] = costs.get(e.conn, 0) + len(e.data)
        self._costs = list(costs.values())

    def __call__(self) -> int:
        if self._inside:
            self.now += self._costs.pop(0)
        self._inside = not self._inside
        return self.now


def test_a_flood_is_shed_over_the_budget_and_a_cheap_tenant_stays_exact() -> None:
    clock = _ByteClock()
    t = tracker(budget_ns_per_tick=20_000, clock=clock)
    good, flood = Encoder(), Encoder()
    # the flood: huge header blocks (a 16 KiB junk header each, CONTINUATION-split), new
    # values every time (table churn), on streams that never end
    seq = {1: 1, 2: 1}
    first = [ev(1, True, 0, SETTINGS), ev(2, True, 0, SETTINGS)]
    clock.expect(first)
    t.feed(first)
    sid = {1: 1, 2: 1}
    for tick in range(5):
        batch = []
        for _ in range(4):  # the good tenant: 4 small requests a tick, answered
            batch.append(ev(1, True, seq[1], headers_frame(good, sid[1], req("good"), True)))
            seq[1] += 1
            sid[1] += 2
        for _ in range(3):
            block = flood.encode([(":method", "GET"), (":path", "/"), ("x-tenant-id", "mallory"),
                                  ("x-junk", f"{tick}-{sid[2]}-" + "j" * 16000)], huffman=False)
            half = len(block) // 2
            data = frame(0x1, 0x0, sid[2], block[:half]) + frame(0x9, 0x4, sid[2], block[half:])
            batch.append(ev(2, True, seq[2], data))
            seq[2] += 1
            sid[2] += 2
        clock.expect(batch)
        t.feed(batch)
        spent = t.spent_ns
        got = fold(t.take())
        assert got["good"].heads == 4, (tick, got)
        if tick == 0:
            assert got["mallory"].heads >= 1  # decoded until it was shed
            assert spent <= 20_000  # the shed connection's cost is taken off the tick
        else:
            assert "mallory" not in got  # its events are dropped unread: no cost
            assert spent < 2_000, spent  # the good tenant's four small requests only
    assert t.connections == 1  # the flood's connection is gone, the good one decoded
    assert t.lost_streams["h2_budget"] >= 2  # its open streams, and the connection once
    assert t.lost_streams == {"h2_budget": t.lost_streams["h2_budget"]}


IDLE_BYTES_PER_CONNECTION = 3 * 1024  # documented in docs/http2.md ("Limits")


def test_fifty_thousand_idle_connections_stay_within_the_documented_memory() -> None:
    """The seed's node: 50,000 connections.  Idle HTTP/2 ones (SETTINGS both ways, no request
    yet) cost their session, two splitters and two decoders sharing the static table."""
    n = 50_000
    t = tracker(max_connections=65536)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for start in range(0, n, 5000):
            t.feed([e for c in range(start, start + 5000)
                    for e in (ev(c, True, 0, SETTINGS), ev(c, False, 0, SETTINGS))])
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert t.connections == n
    per_conn = held / n
    print(f"{per_conn:.0f} bytes per idle HTTP/2 connection")
    assert per_conn < IDLE_BYTES_PER_CONNECTION, per_conn
    t2 = tracker(max_connections=n - 10)  # the tracker honours its connection bound
    t2.feed([ev(c, True, 0, SETTINGS) for c in range(n)])
    assert t2.connections == n - 10 and t2.lost_streams == {"h2_conn_limit": 10}
