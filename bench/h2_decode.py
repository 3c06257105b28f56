#!/usr/bin/env python3
"""What the HTTP/2 decoding path (tenantwatch/h2) costs per request, in user space.

Builds N requests on C connections (HPACK-encoded like a browser or gRPC client: pseudo-headers,
user-agent, accept, a tenant header, a bearer JWT on some), their responses (:status, a few
headers, a DATA frame header with END_STREAM, as the kernel sends it), cuts each connection's
bytes into kernel-like events, then times H2Tracker.feed() + take() over all of them.  Prints
microseconds per request (best of --rounds), and the share that is HPACK decoding alone.

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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpack import Decoder, Encoder

from tenantwatch.config import DEFAULT_LATENCY_BUCKETS, Source
from tenantwatch.h2 import H2Event, H2Tracker
from tenantwatch.kernel.records import Side

SOURCES = (
    Source("header", "x-tenant-id", None, False),
    Source("jwt", "authorization", None, False, jwt={"claim": "tenant_id"}),
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
    print(f"{n} requests on {args.connections} connections, {len(events)} events, "
          f"1 in {args.jwt_every or 'no'} with a JWT, best of {args.rounds}")
    print(f"H2Tracker feed+take: {full / n * 1e6:.1f} us/request "
          f"({n / full:,.0f} requests/s on one core)")
    print(f"  of which HPACK decode (hpack {__import__('hpack').__version__}): "
          f"{hpack / n * 1e6:.1f} us/request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
