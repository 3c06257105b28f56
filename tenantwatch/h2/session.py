"""One HTTP/2 connection: both directions' frames and HPACK state, and its streams.

Takes the connection's H2Events (either direction, possibly out of order within a poll) and
writes into a TickCounts: a request head when a request's header block is decoded, a finished
stream (status class, latency) at the response's END_STREAM or an RST_STREAM, each frame's wire
bytes (9 + its length field: a DATA payload counts though the kernel never sent it) under its
stream's tenant, or the connection's for connection frames (SETTINGS, PING, ...), the
connection's open (at its first request) and close.  Header blocks are decoded in order, every one of them
(requests, responses, trailers, pushes), because HPACK's dynamic table makes each block depend on
all earlier ones of its direction.  A seq gap, a lost event, an HPACK or framing error or an
oversized header block breaks the connection: its streams in flight, and the later ones still
visible (by their request HEADERS frame while the request direction's frame boundaries are
known, else by their end in the response direction), are counted without a tenant
(TickCounts.lose), never guessed.
"""

from __future__ import annotations

from typing import Final

from tenantwatch.h2.counts import Acc, TickCounts, h2_stream_key
from tenantwatch.h2.frames import (
    CONTINUATION,
    DATA,
    FLAG_END_HEADERS,
    FLAG_END_STREAM,
    FRAME_HEADER_LEN,
    HEADERS,
    PUSH_PROMISE,
    RST_STREAM,
    Frame,
    FrameSplitter,
)
from tenantwatch.h2.hpack_lazy import HpackError, LazyDecoder
from tenantwatch.h2.identity import Identity, IdentityPicker
from tenantwatch.h2.records import H2Event
from tenantwatch.h2.status import CLASS_NONE, grpc_class, http_class, parse_int
from tenantwatch.kernel.records import Side

# Streams open at once per connection.  Servers advertise SETTINGS_MAX_CONCURRENT_STREAMS of
# 100-128 (nginx http2_max_concurrent_streams 128, grpc-go 100 .. unlimited): 1000 leaves room
# and bounds a connection's stream table to ~200 KiB.  Beyond: counted at once, class "none".
MAX_STREAMS: Final = 1000
# Encoded bytes of one header block (HEADERS/PUSH_PROMISE + CONTINUATIONs).  nginx refuses
# request headers beyond large_client_header_buffers (4 x 8 KiB by default); 64 KiB is twice
# that and the hpack library's default SETTINGS_MAX_HEADER_LIST_SIZE.  Beyond: broken.
MAX_HEADER_BLOCK: Final = 64 * 1024
# Decoded size of one header list (RFC 7541 sizes: name + value + 32 per field).  Indexed
# fields make a decoded list far larger than its block; this bounds that, as hpack does.
MAX_HEADER_LIST: Final = 256 * 1024
# Dynamic table size an encoder may switch to.  nginx's decoder accepts 4096 (it advertises
# no larger SETTINGS_HEADER_TABLE_SIZE), as do grpc-go, Envoy and nghttp2 by default; 4x that
# leaves room and bounds each direction's table (RFC 7541 accounting) to 16 KiB.
MAX_HPACK_TABLE: Final = 16 * 1024
# Events held per direction while an earlier seq is missing (perf buffers are per CPU, so one
# poll may bring seq n+1 before seq n).  A gap still open after GAP_PATIENCE more polls, or
# with more events than this waiting behind it, is a loss.
MAX_PENDING_EVENTS: Final = 64
GAP_PATIENCE: Final = 1

_STATUS: Final = b":status"
_CONTENT_TYPE: Final = b"content-type"
_GRPC_STATUS: Final = b"grpc-status"
_GRPC: Final = b"application/grpc"
_RESPONSE_NAMES: Final = frozenset((_STATUS, _CONTENT_TYPE, _GRPC_STATUS))


class _Stream:
    __slots__ = ("acc", "gen", "grpc", "grpc_status", "ident", "resp_ns", "start_ns", "status")

    def __init__(self, ident: Identity, start_ns: int, grpc: bool, acc: Acc, gen: int) -> None:
        self.ident = ident
        self.acc = acc  # its TickCounts accumulator, good while the counts' gen is `gen`
        self.gen = gen
        self.start_ns = start_ns  # ts of the event that completed the request's header block
        self.grpc = grpc  # content-type application/grpc* (the response's when it has one)
        self.status: int | None = None  # final :status; -1 when missing or unreadable
        self.resp_ns = 0  # ts of the final response header block
        self.grpc_status: bytes | None = None


class _Direction:
    __slots__ = ("block", "block_end_stream", "block_len", "block_sid", "block_type",
                 "block_wire", "decoder", "is_request", "next_seq", "pending", "received",
                 "splitter", "synced", "waited")

    def __init__(self, is_request: bool, received: bool) -> None:
        self.is_request = is_request
        self.received = received  # the gateway receives these bytes (rx), else sends them
        self.splitter = FrameSplitter(MAX_HEADER_BLOCK)
        self.decoder: LazyDecoder | None = LazyDecoder(max_header_list_size=MAX_HEADER_LIST,
                                                       max_allowed_table_size=MAX_HPACK_TABLE)
        self.next_seq = 0
        self.pending: dict[int, H2Event] = {}
        self.waited = 0  # polls a gap before next_seq has stayed open
        self.synced = True  # frame boundaries known (False after lost bytes)
        self.block: list[bytes] = []  # fragments of the header block being read
        self.block_len = 0
        self.block_type: int | None = None  # HEADERS or PUSH_PROMISE while a block is open
        self.block_sid = 0
        self.block_wire = 0  # wire bytes of the open block's frames (its stream is known after)
        self.block_end_stream = False


class Session:
    """State of one connection (see the module docstring)."""

    __slots__ = ("_conn_ident", "_counts", "_last_sid", "_max_streams", "_names", "_picker",
                 "_req", "_resp", "_streams", "broken", "conn", "side")

    def __init__(self, side: Side, picker: IdentityPicker, counts: TickCounts,
                 max_streams: int = MAX_STREAMS, conn: int = 0) -> None:
        self.side = side
        self.conn = conn  # the kernel's id of the connection (H2Event.conn)
        self._picker = picker
        self._names = picker.names | {_CONTENT_TYPE}
        self._counts = counts
        self._max_streams = max_streams
        # server side: requests are received; client side: requests are sent
        self._req = _Direction(True, side is Side.SERVER)
        self._resp = _Direction(False, side is not Side.SERVER)
        self._streams: dict[int, _Stream] = {}
        self._last_sid = 0  # highest client stream id opened
        self._conn_ident: Identity | None = None  # identity of the first request
        self.broken: str | None = None  # the LOST_REASONS entry that broke it

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    @property
    def waiting(self) -> bool:
        """Events are held behind a missing seq."""
        return bool(self._req.pending or self._resp.pending)

    def restarted(self, events: list[H2Event]) -> bool:
        """A seq 0 on a direction already past it: the id was reused (its close was missed)."""
        return any(e.seq == 0 and (self._req if e.is_request else self._resp).next_seq > 0
                   for e in events)

    def shed(self, reason: str) -> None:
        """Stop decoding (the tracker's budget): open streams are lost for ``reason``; close()
        then counts the connection closed."""
        self._break(reason)
        for d in (self._req, self._resp):
            d.pending.clear()

    def start_undecoded(self, reason: str) -> None:
        """A connection older than the daemon: its frames are followed from here on (the
        kernel took it up at a frame boundary), its header blocks never decoded; each stream is
        counted by its request HEADERS under __unattributed__ with this reason."""
        self._break(reason)

    def add(self, ev: H2Event) -> None:
        """Queue one data event; run() processes what is in order."""
        d = self._req if ev.is_request else self._resp
        if ev.seq < d.next_seq:
            return  # already passed (a duplicate, or older than a gap given up on)
        d.pending[ev.seq] = ev

    def run(self) -> None:
        """Process the queued events that are in order, both directions merged by time."""
        req, resp = self._req, self._resp
        while True:
            a = req.pending.get(req.next_seq)
            b = resp.pending.get(resp.next_seq)
            if (a is None and req.pending) or (b is None and resp.pending):
                # a seq is missing: neither direction may run ahead of it, for a while
                d = req if a is None and req.pending else resp
                if len(d.pending) <= MAX_PENDING_EVENTS:
                    return
                self._lose_sync(d, "h2_gap")
                d.next_seq = min(d.pending)
                continue
            if a is None and b is None:
                return
            if b is None or (a is not None and a.ts_ns <= b.ts_ns):
                d, ev = req, a
            else:
                d, ev = resp, b
            assert ev is not None
            del d.pending[d.next_seq]
            d.next_seq += 1
            d.waited = 0
            self._event(d, ev)

    def settle(self) -> bool:
        """End of a poll: a gap open for more than GAP_PATIENCE polls is a loss.  Returns
        whether events are still held."""
        for d in (self._req, self._resp):
            if d.pending:
                d.waited += 1
                if d.waited > GAP_PATIENCE:
                    self._skip_gap(d)
        return self.waiting

    def close(self) -> None:
        """The connection closed: streams still open end without a response."""
        for d in (self._req, self._resp):
            if d.pending:  # bytes before these never came
                self._skip_gap(d)
        for st in self._streams.values():
            self._counts.end(st.ident, self.side, CLASS_NONE, None)
        self._streams.clear()
        if self._conn_ident is not None:
            self._counts.closed(self._conn_ident, self.side)

    # --- internals ---------------------------------------------------------------------------

    def _skip_gap(self, d: _Direction) -> None:
        self._lose_sync(d, "h2_gap")
        d.next_seq = min(d.pending)
        self.run()

    def _lose_sync(self, d: _Direction, reason: str) -> None:
        self._break(reason)
        d.synced = False

    def _break(self, reason: str) -> None:
        if self.broken is not None:
            return
        self.broken = reason
        self._counts.lose(reason, self.side, len(self._streams))
        self._streams.clear()
        for d in (self._req, self._resp):
            d.decoder = None
            d.splitter.keep_headers = False
            d.block.clear()

    def _later_stream(self, sid: int, from_request: bool) -> None:
        """A stream of a broken connection, seen by its request HEADERS while the request
        direction's frames are still known, else by its end in the response direction."""
        if not sid & 1 or sid <= self._last_sid or from_request != self._req.synced:
            return
        if from_request:
            self._last_sid = sid
        assert self.broken is not None
        self._counts.lose(self.broken, self.side, 1, heads=int(from_request))

    def _event(self, d: _Direction, ev: H2Event) -> None:
        if ev.lost:
            self._lose_sync(d, "h2_gap")
        if not d.synced or not ev.data:
            return
        for f in d.splitter.feed(ev.data):
            self._frame(d, f, ev.ts_ns)
            if not d.synced:
                return

    def _charge(self, d: _Direction, sid: int, n: int) -> None:
        """Wire bytes to the stream's tenant, else (connection frames, a stream not followed)
        to the connection's; nothing before its first request or once it is broken."""
        if self.broken is not None:
            return
        st = self._streams.get(sid)
        if st is not None:
            acc = self._acc_of(st)
        elif self._conn_ident is not None:
            acc = self._counts.acc(self._conn_ident, self.side)
        else:
            return
        if d.received:
            acc.rx += n
        else:
            acc.tx += n

    def _acc_of(self, st: _Stream) -> Acc:
        counts = self._counts
        if st.gen != counts.gen:
            st.acc, st.gen = counts.acc(st.ident, self.side), counts.gen
        return st.acc

    def _frame(self, d: _Direction, f: Frame, ts_ns: int) -> None:
        t = f.type
        wire = FRAME_HEADER_LEN + f.length
        if d.block_type is not None:  # only this block's CONTINUATIONs may come now
            if t != CONTINUATION or f.stream_id != d.block_sid:
                self._break("h2_decode")
                d.block_type = None
                return
            d.block_wire += wire
            self._fragment(d, f, ts_ns)
        elif t == HEADERS or t == PUSH_PROMISE:
            d.block_type = t
            d.block_sid = f.stream_id
            d.block_end_stream = bool(f.flags & FLAG_END_STREAM)
            d.block_len = 0
            d.block_wire = wire
            self._fragment(d, f, ts_ns)
        elif t == DATA:
            self._charge(d, f.stream_id, wire)
            if f.flags & FLAG_END_STREAM and not d.is_request:
                self._complete(f.stream_id, False)
        elif t == RST_STREAM:
            self._charge(d, f.stream_id, wire)
            self._complete(f.stream_id, True)
            if self.broken is not None and not d.is_request:
                self._later_stream(f.stream_id, False)
        elif t == CONTINUATION:
            self._break("h2_decode")  # no block open
        else:  # SETTINGS, PING, WINDOW_UPDATE, PRIORITY, GOAWAY, unknown types
            self._charge(d, f.stream_id, wire)

    def _fragment(self, d: _Direction, f: Frame, ts_ns: int) -> None:
        fragment = f.fragment
        if fragment is None:
            self._break("h2_header_limit" if f.length > MAX_HEADER_BLOCK else "h2_decode")
        elif fragment and self.broken is None:
            d.block_len += len(fragment)
            if d.block_len > MAX_HEADER_BLOCK:
                self._break("h2_header_limit")
            else:
                d.block.append(fragment)
        if f.flags & FLAG_END_HEADERS:
            self._block_done(d, ts_ns)

    def _block_done(self, d: _Direction, ts_ns: int) -> None:
        btype, sid, end_stream = d.block_type, d.block_sid, d.block_end_stream
        d.block_type = None
        data = b"".join(d.block)
        d.block.clear()
        if self.broken is None and d.decoder is not None:
            try:  # only the fields a stream needs are built (hpack_lazy)
                headers = d.decoder.decode(data, self._names if d.is_request
                                           else _RESPONSE_NAMES)
            except HpackError:
                self._break("h2_decode")
            else:
                if btype == PUSH_PROMISE:
                    self._charge(d, sid, d.block_wire)
                    return
                if d.is_request:
                    self._request(sid, headers, ts_ns)
                    self._charge(d, sid, d.block_wire)
                else:
                    self._charge(d, sid, d.block_wire)  # before its end frees the stream
                    self._response(sid, headers, end_stream, ts_ns)
                return
        # Broken: a new stream is still seen, and counted without a tenant.
        if btype == HEADERS and (d.is_request or end_stream):
            self._later_stream(sid, d.is_request)

    def _request(self, sid: int, headers: list[tuple[bytes, bytes]], ts_ns: int) -> None:
        if sid in self._streams or not sid & 1 or sid <= self._last_sid:
            return  # request trailers, or not a new client stream
        self._last_sid = sid
        names = self._names
        found: dict[bytes, list[bytes]] = {}
        for name, value in headers:
            if name in names:
                if name in found:
                    found[name].append(value)
                else:
                    found[name] = [value]
        ident = self._picker.pick(found, self.side)
        counts = self._counts
        counts.add_stream(h2_stream_key(self.conn, sid), ident)
        acc = counts.acc(ident, self.side)
        acc.heads += 1
        if self._conn_ident is None:
            self._conn_ident = ident
            counts.opened(ident, self.side)
        if len(self._streams) >= self._max_streams:
            counts.end(ident, self.side, CLASS_NONE, None)
            counts.lose("h2_stream_limit", None)
            return
        ctype = found.get(_CONTENT_TYPE)
        self._streams[sid] = _Stream(ident, ts_ns,
                                     ctype is not None and ctype[0].startswith(_GRPC),
                                     acc, counts.gen)

    def _response(self, sid: int, headers: list[tuple[bytes, bytes]], end_stream: bool,
                  ts_ns: int) -> None:
        st = self._streams.get(sid)
        if st is None:
            return  # a stream not followed (over the limit, or seen before the request)
        status = ctype = grpc_status = None
        for name, value in headers:
            if name == _STATUS:
                status = value
            elif name == _CONTENT_TYPE:
                ctype = value
            elif name == _GRPC_STATUS:
                grpc_status = value
        if st.status is None:
            code = parse_int(status) if status is not None else None
            if code is not None and 100 <= code < 200 and not end_stream:
                return  # informational: the final response is still to come
            st.status = code if code is not None else -1
            st.resp_ns = ts_ns
            if ctype is not None:
                st.grpc = ctype.startswith(_GRPC)
        if grpc_status is not None:
            st.grpc_status = grpc_status
        if end_stream:
            self._complete(sid, False)

    def _complete(self, sid: int, reset: bool) -> None:
        st = self._streams.pop(sid, None)
        if st is None:
            if self.broken is not None and not reset:
                self._later_stream(sid, False)
            return
        if reset or st.status is None:
            cls = CLASS_NONE
        elif st.grpc and st.grpc_status is not None:
            cls = grpc_class(st.grpc_status)
        else:
            cls = http_class(st.status)
        latency = None if cls == CLASS_NONE else max(0, st.resp_ns - st.start_ns)
        self._counts.end_in(self._acc_of(st), cls, latency)
