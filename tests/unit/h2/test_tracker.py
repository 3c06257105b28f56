"""H2Tracker on real HTTP/2 byte streams (h2 library), cut and reordered like kernel events."""

from __future__ import annotations

import base64
import json
import random

import pytest

from tenantwatch.h2 import H2_UNATTRIBUTED_KEY, H2Event, H2Tracker
from tenantwatch.kernel.records import Side, ValueFlag

from .conv import (
    MS,
    Conversation,
    closed,
    events,
    polls,
    request_headers,
    strip_data,
    strip_preface,
)
from .summary import BOUNDS, SOURCES, fold

CONN = 7 << 32 | 12


def bearer(tenant: str) -> str:
    def b64(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return "Bearer " + b64({"alg": "none"}) + "." + b64({"tenant_id": tenant}) + ".sig"


def tracker(**kw) -> H2Tracker:
    return H2Tracker(SOURCES, BOUNDS, secret=b"test", **kw)


def run(evs: list[H2Event], seed: int, t: H2Tracker | None = None) -> H2Tracker:
    t = t or tracker()
    for batch in polls(evs, random.Random(seed)):
        t.feed(batch)
    return t


def mixed_conversation(rounds: int = 4) -> Conversation:
    """Four tenants' requests interleaved on one connection, answered out of order."""
    c = Conversation()
    for _ in range(rounds):
        a = c.request(request_headers("t1"))
        b = c.request(request_headers("t2", path="/v1/upload", method="POST"), body=b"x" * 3000)
        h = c.request(request_headers(authority="acme.api.example.com"))
        j = c.request(request_headers(extra=[("authorization", bearer("beta"))]))
        c.advance(MS // 2)
        c.respond(h, 200, [("content-type", "text/plain")], body=b"ok")
        c.respond(a, 404)
        c.respond(j, 503, body=b"busy" * 100)
        c.respond(b, 200, trailers=[("x-checksum", "abc")])
    return c


@pytest.mark.parametrize("seed", range(6))
def test_tenants_interleaved_on_one_connection(seed: int) -> None:
    c = mixed_conversation()
    evs = c.kernel_events(CONN, random.Random(seed))
    evs.append(closed(CONN))
    t = run(evs, seed)
    got = fold(t.take())
    assert {k: v.classes for k, v in got.items()} == {
        "t1": {"4xx": 4}, "t2": {"2xx": 4}, "acme": {"2xx": 4}, "beta": {"5xx": 4}}
    assert {k: v.heads for k, v in got.items()} == {"t1": 4, "t2": 4, "acme": 4, "beta": 4}
    # one connection, opened and closed under its first request's tenant
    assert {k: (v.opened, v.closed) for k, v in got.items() if v.opened or v.closed} == {
        "t1": (1, 1)}
    for v in got.values():
        assert v.buckets == [4, 0, 0, 0] and v.latency_sum_ns == 4 * MS // 2
    assert t.connections == 0 and t.lost_streams == {}
    assert t.take() == ()


def test_dynamic_table_entries_are_used_across_streams() -> None:
    c = Conversation()
    for _ in range(3):
        c.respond(c.request(request_headers("tenant-with-a-long-name")), 200)
    # the h2 encoder indexed the header: later HEADERS frames are smaller than the first
    sizes = [len(d) for _, d in c.c2s[2:]]
    assert sizes[1] < sizes[0] - len("tenant-with-a-long-name")
    evs = c.kernel_events(CONN, random.Random(1))
    got = fold(run(evs, 1).take())
    assert got["tenant-with-a-long-name"].classes == {"2xx": 3}
    # Without the start of the request direction the later blocks cannot be read: never guessed
    late = [e for e in evs if not e.is_request or e.seq > 0]
    t = run(late, 1)
    t.feed([])
    t.feed([])
    assert "tenant-with-a-long-name" not in fold(t.take())


def test_latency_buckets_exact() -> None:
    c = Conversation()
    for wait_ns in (MS // 2, 10 * MS, 50 * MS, 2_000 * MS):  # 10 ms is a bound: its bucket
        sid = c.request(request_headers("t1"))
        c.advance(wait_ns)
        c.respond(sid, 200)
        c.advance(3 * MS)  # between requests: no one's latency
    got = fold(run(c.kernel_events(CONN, random.Random(3)), 3).take())["t1"]
    assert got.buckets == [1, 1, 1, 1]
    assert got.latency_sum_ns == MS // 2 + 10 * MS + 50 * MS + 2_000 * MS


def test_latency_from_request_head_to_final_response_head() -> None:
    c = Conversation()
    sid = c.request(request_headers("t1", method="POST"), body=b"b" * 100)
    c.advance(MS // 2)
    c.server.send_headers(sid, [(":status", "103"), ("link", "</a.css>")])  # early hints
    c.flush()
    c.advance(5 * MS)
    c.respond(sid, 201, body=b"made")
    got = fold(run(c.kernel_events(CONN, random.Random(4)), 4).take())["t1"]
    assert got.classes == {"2xx": 1}
    assert got.buckets == [0, 1, 0, 0] and got.latency_sum_ns == MS // 2 + 5 * MS


@pytest.mark.parametrize("seed", range(3))
def test_grpc_status(seed: int) -> None:
    c = Conversation()
    grpc = [("content-type", "application/grpc+proto"), ("te", "trailers")]
    expect = {"g-ok": (0, False, "2xx"), "g-notfound": (5, True, "4xx"),
              "g-unavail": (14, False, "5xx"), "g-exhausted": (8, True, "4xx"),
              "g-unimpl": (12, True, "5xx"), "g-odd": (77, False, "5xx")}
    sids = {name: c.request(request_headers(name, method="POST", extra=grpc),
                            body=b"\x00\x00\x00\x00\x00") for name in expect}
    for name, (code, trailers_only, _) in reversed(expect.items()):
        c.grpc(sids[name], code, trailers_only)
    # gRPC without grpc-status (no trailers): the :status class
    s = c.request(request_headers("g-bare", method="POST", extra=grpc), body=b"\x00" * 5)
    c.respond(s, 200, [("content-type", "application/grpc")], body=b"\x00" * 5)
    # grpc-status on a non-gRPC response means nothing
    s = c.request(request_headers("plain"))
    c.respond(s, 200, [("content-type", "text/plain"), ("grpc-status", "13")])
    # a proxy's error page for a gRPC request: its own content-type, the :status class
    s = c.request(request_headers("g-proxy", method="POST", extra=grpc), body=b"\x00" * 5)
    c.respond(s, 502, [("content-type", "text/html")], body=b"<html>")
    got = fold(run(c.kernel_events(CONN, random.Random(seed)), seed).take())
    want = {name: {cls: 1} for name, (_, _, cls) in expect.items()}
    want.update({"g-bare": {"2xx": 1}, "plain": {"2xx": 1}, "g-proxy": {"5xx": 1}})
    assert {k: v.classes for k, v in got.items()} == want


def test_rst_stream_and_close_end_streams_without_status() -> None:
    c = Conversation()
    a = c.request(request_headers("t1"))
    c.reset(a)  # client cancels
    b = c.request(request_headers("t2", method="POST"), body=b"x")
    c.server.send_headers(b, [(":status", "200")])
    c.flush()
    c.reset(b, by_client=False)  # server resets after its headers
    c.request(request_headers("t3"))  # never answered: the connection closes
    c.respond(c.request(request_headers("t4")), 200)
    evs = c.kernel_events(CONN, random.Random(5)) + [closed(CONN)]
    t = run(evs, 5)
    got = fold(t.take())
    assert {k: v.classes for k, v in got.items()} == {
        "t1": {"none": 1}, "t2": {"none": 1}, "t3": {"none": 1}, "t4": {"2xx": 1}}
    assert sum(sum(v.buckets) for v in got.values()) == 1  # "none" has no latency
    assert (got["t1"].opened, got["t1"].closed) == (1, 1)
    assert t.lost_streams == {}


def test_connection_closed_before_any_stream_counts_nothing() -> None:
    c = Conversation()
    t = run(c.kernel_events(CONN, random.Random(0)) + [closed(CONN)], 0)
    assert t.take() == () and t.connections == 0


def test_close_of_unknown_connection_is_ignored() -> None:
    t = tracker()
    t.feed([closed(99)])
    assert t.take() == () and t.lost_streams == {}


def two_connections() -> tuple[Conversation, Conversation]:
    """A: t1 answered, t2 in flight while A's request bytes are lost, then t3, t4; B: clean."""
    a, b = Conversation(), Conversation()
    s1 = a.request(request_headers("t1"))
    a.respond(s1, 200)
    a.request(request_headers("t2"))
    a.advance(MS)
    a.request(request_headers("t3"))  # this write will be lost
    a.advance(MS)
    s4 = a.request(request_headers("t4"))
    a.respond(s4, 200)
    a.respond(3, 200)
    a.respond(5, 200)
    for name in ("u1", "u2", "u3"):
        b.respond(b.request(request_headers(name)), 200)
    return a, b


def drop_write(evs: list[H2Event], ts_ns: int, is_request: bool) -> list[H2Event]:
    return [e for e in evs if not (e.is_request == is_request and e.ts_ns == ts_ns)]


@pytest.mark.parametrize("seed", range(4))
def test_seq_gap_breaks_only_that_connection(seed: int) -> None:
    a, b = two_connections()
    rng = random.Random(seed)
    ea = drop_write(a.kernel_events(1, rng), a.now - MS, True)
    eb = b.kernel_events(2, rng)
    merged = sorted(ea + eb, key=lambda e: e.ts_ns)
    t = run(merged + [closed(1), closed(2)], seed)
    got = fold(t.take())
    # t2 was in flight, t3 and t4 after the loss: counted, without a tenant
    assert got.pop("__unattributed__").classes == {"none": 3}
    assert {k: v.classes for k, v in got.items()} == {
        "t1": {"2xx": 1}, "t2": {}, "u1": {"2xx": 1}, "u2": {"2xx": 1}, "u3": {"2xx": 1}}
    assert got["t2"].heads == 1  # its head was read before the loss
    assert (got["t1"].opened, got["t1"].closed) == (1, 1)
    assert (got["u1"].opened, got["u1"].closed) == (1, 1)
    assert t.lost_streams == {"h2_gap": 3}
    assert t.take_lost() == {"h2_gap": 3} and t.take_lost() == {}


def test_gap_waits_one_poll_for_a_late_event() -> None:
    c = Conversation()
    for name in ("t1", "t2"):
        c.respond(c.request(request_headers(name)), 200)
    evs = c.kernel_events(CONN, random.Random(2), max_piece=8)
    late = next(e for e in evs if e.is_request and e.seq == 3)
    t = tracker()
    t.feed([e for e in evs if e is not late])
    t.feed([late])  # the next poll brings it: no loss
    assert {k: v.classes for k, v in fold(t.take()).items()} == {
        "t1": {"2xx": 1}, "t2": {"2xx": 1}}
    assert t.lost_streams == {}


def test_lost_event_breaks_the_connection() -> None:
    c = Conversation()
    c.request(request_headers("t1"))
    evs = c.kernel_events(CONN, random.Random(0))
    nreq = sum(e.is_request for e in evs)
    evs.append(H2Event(CONN, Side.SERVER, True, nreq, c.now, b"", lost=True))
    t = run(evs, 0)
    got = fold(t.take())
    assert got["__unattributed__"].classes == {"none": 1}
    assert got["t1"].heads == 1 and got["t1"].classes == {}
    assert t.lost_streams == {"h2_gap": 1}


def test_hpack_error_breaks_the_connection_later_requests_still_counted() -> None:
    c = Conversation()
    c.respond(c.request(request_headers("t1")), 200)
    c.request(request_headers("t2"))
    evs = c.kernel_events(CONN, random.Random(0))
    nreq = sum(e.is_request for e in evs)
    # stream 5: an index far past the tables; then stream 7, readable by its frame alone
    bad = b"\x00\x00\x04\x01\x05\x00\x00\x00\x05" + b"\xff\xff\xff\x7f"
    later = b"\x00\x00\x01\x01\x05\x00\x00\x00\x07" + b"\x82"
    evs.append(H2Event(CONN, Side.SERVER, True, nreq, c.now + MS, bad))
    evs.append(H2Event(CONN, Side.SERVER, True, nreq + 1, c.now + MS, later))
    evs.append(closed(CONN))
    t = run(evs, 0)
    got = fold(t.take())
    assert got["t1"].classes == {"2xx": 1}
    unat = got["__unattributed__"]
    assert unat.classes == {"none": 3} and unat.heads == 2  # t2 in flight; streams 5 and 7
    assert t.lost_streams == {"h2_decode": 3}


def test_connection_id_reused_without_close() -> None:
    first, second = Conversation(), Conversation()
    first.request(request_headers("t1"))
    second.respond(second.request(request_headers("t2")), 200)
    t = tracker()
    t.feed(first.kernel_events(CONN, random.Random(0)))
    t.feed(second.kernel_events(CONN, random.Random(0)))
    got = fold(t.take())
    assert (got["t1"].classes, got["t1"].opened, got["t1"].closed) == ({"none": 1}, 1, 1)
    assert (got["t2"].classes, got["t2"].opened, got["t2"].closed) == ({"2xx": 1}, 1, 0)


@pytest.mark.parametrize("seed", range(4))
def test_connection_older_than_the_daemon_is_counted_unattributed_never_decoded(seed) -> None:
    """The kernel took the connection up at a frame boundary (seq 0 is not its start, flag
    midstream): its later requests use HPACK entries it never saw, so none is decoded; each is
    counted once, by its request HEADERS, under __unattributed__ with reason h2_midstream."""
    c = Conversation()
    for _ in range(2):
        c.respond(c.request(request_headers("early")), 200)
    seen_c2s, seen_s2c = len(c.c2s), len(c.s2c)
    for _ in range(3):
        c.respond(c.request(request_headers("late")), 200)
    rng = random.Random(seed)
    evs = [e._replace(midstream=True) for e in
           events(CONN, Side.SERVER, True, strip_data(c.c2s[seen_c2s:]), rng, 64)
           + events(CONN, Side.SERVER, False, strip_data(c.s2c[seen_s2c:]), rng, 64)]
    evs.sort(key=lambda e: (e.ts_ns, not e.is_request, e.seq))
    t = run(evs + [closed(CONN)], seed)
    got = fold(t.take())
    assert {k: (v.classes, v.heads) for k, v in got.items()} == {
        "__unattributed__": ({"none": 3}, 3)}
    assert t.lost_streams == {"h2_midstream": 3} and t.connections == 0


def test_connection_whose_first_events_never_came_is_counted_once() -> None:
    c = Conversation()
    for _ in range(3):
        c.respond(c.request(request_headers("t1")), 200)
    evs = [e for e in c.kernel_events(CONN, random.Random(0)) if e.seq > 2]
    t = tracker()
    for e in evs:
        t.feed([e])
    t.feed([closed(CONN)])
    assert t.take() == () and t.lost_streams == {"h2_gap": 1} and t.connections == 0


def test_client_side_connections() -> None:
    c = Conversation()
    c.grpc(c.request(request_headers("t1", method="POST",
                                     extra=[("content-type", "application/grpc")]),
                     body=b"\x00" * 5), 7)
    evs = c.kernel_events(CONN, random.Random(0), side=Side.CLIENT)
    got = fold(run(evs, 0).take(), side=Side.CLIENT)
    assert got["t1"].classes == {"4xx": 1}


def test_identity_values_and_flags_reach_the_resolver() -> None:
    c = Conversation(validate=False)
    c.respond(c.request(request_headers("t1", extra=[("x-tenant-id", "t9")])), 200)
    c.respond(c.request(request_headers("bad\x01value")), 200)
    c.respond(c.request(request_headers("x" * 200)), 200)
    c.respond(c.request(request_headers(authority="nobody.example.org")), 200)
    t = run(c.kernel_events(CONN, random.Random(0)), 0)
    counts = t.take()
    flags = {c.raw_value: c.flags for c in counts}
    assert flags == {b"t1": ValueFlag.DUPLICATE, b"bad\x01value": ValueFlag.BAD_BYTE,
                     b"x" * 128: ValueFlag.TOO_LONG, b"nobody.example.org": ValueFlag.NONE}
    assert {k: v.classes for k, v in fold(counts).items()} == {"__invalid__": {"2xx": 4}}


def test_no_identity_entry_and_unattributed_key() -> None:
    from tenantwatch.config import Source
    t = H2Tracker((Source("header", "x-tenant-id", None, False),), BOUNDS)
    c = Conversation()
    c.respond(c.request(request_headers()), 200)
    for e in c.kernel_events(CONN, random.Random(0)):
        t.feed([e])
    (entry,) = t.take()
    assert (entry.raw_value, entry.source_index, entry.flags) == (b"", -1,
                                                                  ValueFlag.NO_IDENTITY)
    assert entry.key != H2_UNATTRIBUTED_KEY and entry.requests_by_class[1] == 1


def _expected_bytes(c: Conversation, tenant_of: dict[int, str]) -> dict[str, list[int]]:
    """What Session charges, worked out from the raw frames: each frame's wire size (9 + its
    length) to its stream's tenant while the stream is open (from its request HEADERS to the
    response's END_STREAM or an RST_STREAM), else to the connection's first tenant once there
    is one.  Server side: client -> server frames are received [0], the others sent [1]."""
    chunks = [(ts, 0, d) for ts, d in strip_preface(c.c2s)] + [(ts, 1, d) for ts, d in c.s2c]
    chunks.sort(key=lambda x: (x[0], x[1]))
    out: dict[str, list[int]] = {}
    open_streams: set[int] = set()
    conn = None
    for _, direction, data in chunks:
        pos = 0
        while pos < len(data):
            length = int.from_bytes(data[pos:pos + 3], "big")
            ftype, flags, sid = data[pos + 3], data[pos + 4], int.from_bytes(
                data[pos + 5:pos + 9], "big") & 0x7FFFFFFF
            pos += 9 + length
            if direction == 0 and ftype == 1 and sid not in open_streams and sid in tenant_of:
                open_streams.add(sid)
                conn = conn or tenant_of[sid]
            owner = tenant_of[sid] if sid in open_streams else conn
            if owner is not None:
                out.setdefault(owner, [0, 0])[direction] += 9 + length
            ends = (direction == 1 and flags & 0x1 and ftype in (0, 1)) or ftype == 3
            if ends:
                open_streams.discard(sid)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_frame_bytes_go_to_each_streams_tenant(seed: int) -> None:
    """rx/tx bytes: every frame's wire size, DATA payloads included though the kernel never sent
    them, under the tenant of its stream; connection frames under the connection's first
    tenant; nothing before the first request."""
    c = Conversation()
    tenant_of = {}
    for _ in range(2):
        a = c.request(request_headers("t1"))
        b = c.request(request_headers("t2", path="/up", method="POST"), body=b"x" * 3000)
        tenant_of[a], tenant_of[b] = "t1", "t2"
        c.respond(b, 200, body=b"y" * 5000)
        c.respond(a, 404, body=b"nope")
    evs = c.kernel_events(CONN, random.Random(seed))
    evs.append(closed(CONN))
    got = fold(run(evs, seed).take())
    want = _expected_bytes(c, tenant_of)
    assert {t: [v.rx_bytes, v.tx_bytes] for t, v in got.items()} == want
    assert want["t2"][0] > 2 * 3000 and want["t2"][1] > 2 * 5000  # the bodies are in


def test_stream_cpu_goes_to_the_stream_tenant_summed_per_process_cpu_and_side() -> None:
    """merge(): the kernel's CPU rows of HTTP/2 streams (one per stream, process, CPU and side)
    go to each stream's identity, summed per (identity, process, CPU, side); a stream the
    decoder never saw goes to __unattributed__; the other rows pass as they are."""
    from tenantwatch.h2.counts import h2_stream_key
    from tenantwatch.h2.tracker import KEY_UNATTRIBUTED
    from tenantwatch.kernel.records import CpuCounts, KernelTick

    c = mixed_conversation(rounds=2)  # streams 1..15: t1, t2, acme, beta, then again
    evs = c.kernel_events(CONN, random.Random(0))
    t = tracker()
    kernel_row = CpuCounts(1234, 50, 0, Side.SERVER, 999)
    rows = [kernel_row]
    for sid in range(1, 17, 2):
        for cpu in (0, 1):
            rows.append(CpuCounts(h2_stream_key(CONN, sid), 50, cpu, Side.SERVER,
                                  1000 * sid + cpu, h2_stream=True))
    rows.append(CpuCounts(h2_stream_key(CONN, 99), 50, 0, Side.SERVER, 7, h2_stream=True))
    tick = KernelTick(identities=(), lost={}, targets=1, probes={}, monotonic_ns=0,
                      cpu=tuple(rows), h2=tuple(evs))
    merged = t.merge(tick)
    keys = {ic.raw_value: ic.key for ic in merged.identities if ic.request_heads}
    assert merged.cpu[0] == kernel_row
    got = {(r.key, r.cpu): r.ns for r in merged.cpu[1:]}
    assert all(not r.h2_stream and r.tgid == 50 and r.side is Side.SERVER
               for r in merged.cpu[1:])
    by_tenant = {"t1": (1, 9), "t2": (3, 11), "acme.api.example.com": (5, 13)}
    for value, sids in by_tenant.items():
        for cpu in (0, 1):
            assert got.pop((keys[value.encode()], cpu)) == sum(1000 * s + cpu for s in sids)
    beta = [k for v, k in keys.items() if v.startswith(b"Bearer")]
    assert len(beta) == 1
    for cpu in (0, 1):
        assert got.pop((beta[0], cpu)) == sum(1000 * s + cpu for s in (7, 15))
    assert got == {(KEY_UNATTRIBUTED, 0): 7}
