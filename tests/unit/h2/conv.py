"""Real HTTP/2 byte streams for the decoder tests: an in-memory h2 client and server.

Conversation records what each side writes, with a fake CLOCK_MONOTONIC; kernel_events() turns
that into H2Events the way the kernel would: client preface removed, every DATA payload removed
(its 9-byte header kept), each write cut at random points into events.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterable, Sequence

import h2.config
import h2.connection
import h2.events
import h2.settings
from hpack import Encoder

from tenantwatch.h2 import H2Event
from tenantwatch.kernel.records import Side

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MS = 1_000_000

Headers = Sequence[tuple[str, str]]


def request_headers(tenant: str | None = None, authority: str = "api.example.com",
                    path: str = "/v1/items", method: str = "GET",
                    extra: Headers = ()) -> list[tuple[str, str]]:
    h = [(":method", method), (":scheme", "https"), (":authority", authority), (":path", path)]
    if tenant is not None:
        h.append(("x-tenant-id", tenant))
    h.append(("user-agent", "test/1.0"))
    h.extend(extra)
    return h


class Conversation:
    """A client and a server exchanging frames; each write is kept with the clock's time."""

    def __init__(self, t0_ns: int = 1_000 * MS, max_streams: int = 100,
                 validate: bool = True) -> None:
        self.now = t0_ns
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=validate))
        self.server = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None))
        self.server.local_settings = h2.settings.Settings(
            client=False,
            initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams})
        self.c2s: list[tuple[int, bytes]] = []
        self.s2c: list[tuple[int, bytes]] = []
        self.client.initiate_connection()
        self.server.initiate_connection()
        self.flush()

    def advance(self, ns: int) -> None:
        self.now += ns

    def flush(self) -> None:
        """Deliver everything written so far, both ways, until both are quiet."""
        while True:
            moved = False
            for src, dst, log in ((self.client, self.server, self.c2s),
                                  (self.server, self.client, self.s2c)):
                data = src.data_to_send()
                if data:
                    moved = True
                    log.append((self.now, data))
                    for ev in dst.receive_data(data):
                        if isinstance(ev, h2.events.DataReceived):
                            dst.acknowledge_received_data(ev.flow_controlled_length,
                                                          ev.stream_id)
            if not moved:
                return

    def request(self, headers: Headers, body: bytes = b"", trailers: Headers | None = None) -> int:
        sid = self.client.get_next_available_stream_id()
        self.client.send_headers(sid, headers, end_stream=not body and trailers is None)
        if body:
            self.client.send_data(sid, body, end_stream=trailers is None)
        if trailers is not None:
            self.client.send_headers(sid, trailers, end_stream=True)
        self.flush()
        return sid

    def respond(self, sid: int, status: int, headers: Headers = (), body: bytes = b"",
                trailers: Headers | None = None, informational: Iterable[int] = ()) -> None:
        for code in informational:
            self.server.send_headers(sid, [(":status", str(code))])
        final = [(":status", str(status))] + list(headers)
        self.server.send_headers(sid, final, end_stream=not body and trailers is None)
        if body:
            self.server.send_data(sid, body, end_stream=trailers is None)
        if trailers is not None:
            self.server.send_headers(sid, trailers, end_stream=True)
        self.flush()

    def grpc(self, sid: int, grpc_status: int, trailers_only: bool = False) -> None:
        ct = [("content-type", "application/grpc")]
        if trailers_only:
            self.respond(sid, 200, ct + [("grpc-status", str(grpc_status))])
        else:
            self.respond(sid, 200, ct, body=b"\x00\x00\x00\x00\x02hi",
                         trailers=[("grpc-status", str(grpc_status)), ("grpc-message", "m")])

    def reset(self, sid: int, by_client: bool = True) -> None:
        (self.client if by_client else self.server).reset_stream(sid)
        self.flush()

    def kernel_events(self, conn: int, rng: random.Random, side: Side = Side.SERVER,
                      max_piece: int = 64) -> list[H2Event]:
        """Both directions as kernel events, in time order (requests first at equal times)."""
        c2s = strip_preface(self.c2s)
        out = events(conn, side, True, strip_data(c2s), rng, max_piece)
        out += events(conn, side, False, strip_data(self.s2c), rng, max_piece)
        out.sort(key=lambda e: (e.ts_ns, not e.is_request, e.seq))
        return out


def strip_preface(chunks: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    ts, first = chunks[0]
    assert first.startswith(PREFACE)
    return [(ts, first[len(PREFACE):])] + chunks[1:]


def strip_data(chunks: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """Remove DATA payloads like the kernel, keeping the write boundaries."""
    stream = b"".join(c for _, c in chunks)
    drop: list[tuple[int, int]] = []
    pos = 0
    while pos + 9 <= len(stream):
        length = int.from_bytes(stream[pos:pos + 3], "big")
        if stream[pos + 3] == 0:
            drop.append((pos + 9, pos + 9 + length))
        pos += 9 + length
    assert pos == len(stream), "the test stream ends inside a frame"
    out = []
    start = 0
    for ts, c in chunks:
        end = start + len(c)
        keep = bytearray()
        at = start
        for a, b in drop:
            if b <= at or a >= end:
                continue
            keep += stream[at:max(a, at)]
            at = min(b, end)
        keep += stream[at:end]
        out.append((ts, bytes(keep)))
        start = end
    return out


def events(conn: int, side: Side, is_request: bool, chunks: list[tuple[int, bytes]],
           rng: random.Random, max_piece: int) -> list[H2Event]:
    """Each write cut at random points (never merged with the next: its time stays exact)."""
    out: list[H2Event] = []
    for ts, data in chunks:
        pos = 0
        while pos < len(data):
            n = rng.randint(1, max_piece)
            out.append(H2Event(conn, side, is_request, len(out), ts, data[pos:pos + n]))
            pos += n
    return out


def closed(conn: int, side: Side = Side.SERVER, ts_ns: int = 0) -> H2Event:
    return H2Event(conn, side, True, 0, ts_ns, b"", closed=True)


def polls(evs: list[H2Event], rng: random.Random, max_batch: int = 7) -> list[list[H2Event]]:
    """Cut into polls and shuffle each (perf buffers are per CPU)."""
    out = []
    pos = 0
    while pos < len(evs):
        n = rng.randint(1, max_batch)
        batch = evs[pos:pos + n]
        rng.shuffle(batch)
        out.append(batch)
        pos += n
    return out


# --- hand-made frames (for floods and malformed input) ----------------------------------------

def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((ftype, flags)) + struct.pack(">I", sid) \
        + payload


def headers_frame(enc: Encoder, sid: int, headers: Headers, end_stream: bool = False) -> bytes:
    return frame(0x1, 0x4 | (0x1 if end_stream else 0), sid, enc.encode(headers))
