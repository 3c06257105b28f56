#!/usr/bin/env python3
"""What the HTTP/2 decoding path (tenantwatch/h2) costs per request, in user space.

Builds N requests on C connections (HPACK-encoded like a browser or gRPC client: pseudo-headers,
user-agent, accept, a tenant header, a bearer JWT on some), their responses (:status, a few
headers, a DATA frame header with END_STREAM, as the kernel sends it), cuts each connection's
bytes into kernel-like events, then times H2Tracker.feed() + take() over all of them.  Prints
microseconds per request (best of --rounds), and, for scale, what parts of it cost alone: the
lazy HPACK decoder the tracker uses (tenantwatch/h2/hpack_lazy.py, asked for the fields the
tracker asks for), the `hpack` package's full decoder (what the tracker used before), and the
floor of any Python decoder here: splitting the events into frames and walking the header
blocks a field at a time without building anything (that floor is measured in the
interpreter; the decoder itself runs compiled with mypyc when a current build exists, and the
first line says which: TW_H2_COMPILED=0 forces Python, docs/http2.md).

    .venv/bin/python bench/h2_decode.py [--requests 20000] [--connections 200] [--rounds 5]
                                        [--jwt-every 3]

No root, no network; numbers vary with the machine (docs/http2.md has one measurement).
"""

from __future__ import annotations

import argparse
import base64
import json
import struct
import sys
import time

from hpack import Decoder, Encoder

from tenantwatch.config import DEFAULT_LATENCY_BUCKETS, JwtSettings, Source
from tenantwatch.h2 import H2Event, H2Tracker, compiled
from tenantwatch.h2.frames import FrameSplitter
from tenantwatch.h2.hpack_lazy import LazyDecoder
from tenantwatch.kernel.records import Side

SOURCES = (
    Source("header", "x-tenant-id", None, False),
    Source("jwt", "authorization", None, False, jwt=JwtSettings(claim="tenant_id")),
    Source("host", "host", None, False, host_template="{tenant}.api.example.com"),
)
POLL_EVENTS = 256
UA = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"  # events per poll, about what one 1 s tick drains at low rates


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"", length: int | None = None
          ) -> bytes:
    n = len(payload) if length is None else length
    return struct.pack(">I", n)[1:] + bytes((ftype, flags)) + struct.pack(">I", sid) + payload


def jwt(tenant: str) -> str:
    def b64(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    claims = {"sub": "user-4711", "tenant_id": tenant, "iss": "https://idp.example.com",
              "aud": "api", "exp": 1900000000, "iat": 1700000000, "scope": "read write"}
    return "Bearer " + b64({"alg": "RS256", "kid": "k1", "typ": "JWT"}) + "." + b64(claims) \
        + "." + "s" * 342  # an RS256 signature's length


def build(n_requests: int, n_conns: int, jwt_every: int = 3
          ) -> tuple[list[H2Event], list[tuple[bytes, bytes]]]:
    events: list[H2Event] = []
    blocks: list[tuple[bytes, bytes]] = []  # (request block, response block), for the baseline
    per_conn = n_requests // n_conns
    ts = 0
    for conn in range(n_conns):
        creq, cresp = Encoder(), Encoder()
        seq = [0, 0]  # per direction: response, request

        def emit(is_request: bool, ts_ns: int, data: bytes, conn: int = conn,
                 seq: list = seq) -> None:
            events.append(H2Event(conn, Side.SERVER, is_request, seq[is_request], ts_ns, data))
            seq[is_request] += 1

        emit(True, ts, frame(0x4, 0, 0, b"\x00\x03\x00\x00\x00\x64"))
        emit(False, ts, frame(0x4, 0, 0, b"\x00\x03\x00\x00\x00\x80") + frame(0x4, 1, 0))
        for i in range(per_conn):
            sid = 2 * i + 1
            tenant = f"tenant-{(conn * 7 + i) % 40}"
            headers = [(":method", "POST" if i % 4 == 0 else "GET"), (":scheme", "https"),
                       (":authority", "api.example.com"), (":path", f"/v1/orders/{i}?expand=1"),
                       ("user-agent", UA),
                       ("accept", "application/json, text/plain, */*"),
                       ("accept-language", "en-US,en;q=0.5"), ("accept-encoding", "gzip, br")]
            if jwt_every and i % jwt_every == 0:
                headers.append(("authorization", jwt(tenant)))
            else:
                headers.append(("x-tenant-id", tenant))
            rblock = creq.encode(headers)
            req = frame(0x1, 0x4 | (0 if i % 4 == 0 else 0x1), sid, rblock)
            if i % 4 == 0:
                req += frame(0x0, 0x1, sid, length=512)  # body: header only
            ts += 200_000
            emit(True, ts, req)
            sblock = cresp.encode([(":status", "200" if i % 10 else "503"),
                                   ("content-type", "application/json"),
                                   ("date", "Tue, 01 Oct 2024 10:00:00 GMT"),
                                   ("server", "nginx"), ("x-request-id", f"{conn:04x}{i:08x}")])
            ts += 1_500_000
            emit(False, ts, frame(0x1, 0x4, sid, sblock) + frame(0x0, 0x1, sid, length=2048))
            blocks.append((rblock, sblock))
        events.append(H2Event(conn, Side.SERVER, True, 0, ts, b"", closed=True))
    events.sort(key=lambda e: e.ts_ns)
    return events, blocks


def time_tracker(events: list[H2Event]) -> float:
    t = H2Tracker(SOURCES, DEFAULT_LATENCY_BUCKETS)
    start = time.perf_counter()
    for i in range(0, len(events), POLL_EVENTS):
        t.feed(events[i:i + POLL_EVENTS])
        t.take()
    elapsed = time.perf_counter() - start
    assert not t.lost_streams, t.lost_streams
    return elapsed


def time_hpack(blocks: list[tuple[bytes, bytes]], per_conn: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(blocks), per_conn):
        dreq, dresp = Decoder(), Decoder()
        for rblock, sblock in blocks[i:i + per_conn]:
            dreq.decode(rblock, raw=True)
            dresp.decode(sblock, raw=True)
    return time.perf_counter() - start


def time_lazy(blocks: list[tuple[bytes, bytes]], per_conn: int) -> float:
    req_names = H2Tracker(SOURCES, DEFAULT_LATENCY_BUCKETS)._picker.names | {b"content-type"}
    resp_names = frozenset((b":status", b"content-type", b"grpc-status"))
    start = time.perf_counter()
    for i in range(0, len(blocks), per_conn):
        dreq, dresp = LazyDecoder(), LazyDecoder()
        for rblock, sblock in blocks[i:i + per_conn]:
            dreq.decode(rblock, req_names)
            dresp.decode(sblock, resp_names)
    return time.perf_counter() - start


def time_floor(events: list[H2Event], blocks: list[tuple[bytes, bytes]]) -> float:
    """Frames split per connection and direction, and each header block walked a field at a
    time (one branch and one index per field, nothing built): a floor for Python."""
    start = time.perf_counter()
    splitters: dict[tuple[int, bool], FrameSplitter] = {}
    for e in events:
        if e.data:
            s = splitters.get((e.conn, e.is_request))
            if s is None:
                s = splitters[(e.conn, e.is_request)] = FrameSplitter(1 << 16)
            s.feed(e.data)
    for pair in blocks:
        for block in pair:
            i, n = 0, len(block)
            while i < n:
                b = block[i]
                if b & 0x80:  # indexed
                    i = _skip_int(block, i, 0x7F)
                    continue
                if b & 0x40:
                    literal_name = not b & 0x3F
                    i = _skip_int(block, i, 0x3F)
                elif b & 0x20:  # size update
                    i = _skip_int(block, i, 0x1F)
                    continue
                else:
                    literal_name = not b & 0x0F
                    i = _skip_int(block, i, 0x0F)
                if literal_name:
                    j = _skip_int(block, i, 0x7F)
                    i = j + _int_at(block, i, 0x7F)
                j = _skip_int(block, i, 0x7F)
                i = j + _int_at(block, i, 0x7F)
    return time.perf_counter() - start


def _skip_int(b: bytes, i: int, mask: int) -> int:
    if b[i] & mask != mask:
        return i + 1
    i += 1
    while b[i] & 0x80:
        i += 1
    return i + 1


def _int_at(b: bytes, i: int, mask: int) -> int:
    n = b[i] & mask
    if n != mask:
        return n
    shift, i = 0, i + 1
    while True:
        n += (b[i] & 0x7F) << shift
        if not b[i] & 0x80:
            return n
        shift, i = shift + 7, i + 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--connections", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--jwt-every", type=int, default=3,
                    help="one request in this many carries a bearer JWT (0: none) [3]")
    args = ap.parse_args(argv)
    events, blocks = build(args.requests, args.connections, args.jwt_every)
    n = len(blocks)
    full = min(time_tracker(events) for _ in range(args.rounds))
    hpack = min(time_hpack(blocks, n // args.connections) for _ in range(args.rounds))
    lazy = min(time_lazy(blocks, n // args.connections) for _ in range(args.rounds))
    floor = min(time_floor(events, blocks) for _ in range(args.rounds))
    print(f"decoder: {compiled.STATUS}")
    print(f"{n} requests on {args.connections} connections, {len(events)} events, "
          f"1 in {args.jwt_every or 'no'} with a JWT, best of {args.rounds}")
    print(f"H2Tracker feed+take: {full / n * 1e6:.1f} us/request "
          f"({n / full:,.0f} requests/s on one core)")
    print(f"  alone: lazy HPACK decode {lazy / n * 1e6:.1f} us/request; hpack "
          f"{__import__('hpack').__version__}'s Decoder {hpack / n * 1e6:.1f} us/request; floor "
          f"(frames split, fields walked, nothing built) {floor / n * 1e6:.1f} us/request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
