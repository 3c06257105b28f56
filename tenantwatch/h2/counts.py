"""Per-tick counts of the HTTP/2 decoder, per (identity key, side), as kernel IdentityCounts.

Takes, from the sessions, request heads, finished streams (class and latency), frame bytes,
connection opens/closes and lost streams; gives at take() one IdentityCounts per (key, side) touched since
the previous take(), plus lost-stream counts by reason.  At most ``max_keys`` keys per tick:
beyond, requests fold into one OVERFLOW entry, as the kernel's full identity map does.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Final

from tenantwatch.h2.identity import H2_UNATTRIBUTED_KEY, Identity
from tenantwatch.h2.status import CLASS_NONE
from tenantwatch.kernel.records import STATUS_CLASSES, IdentityCounts, Side, ValueFlag

# Streams begun per tick whose CPU key is remembered (~100 B each); the CPU of more streams
# goes to __unattributed__.
MAX_STREAM_KEYS: Final = 65536
MASK64: Final = (1 << 64) - 1


def h2_stream_key(conn: int, sid: int) -> int:
    """bpf/cpu.c tw_h2_stream_key: the CPU key of stream `sid` of connection id `conn`."""
    return (conn * 0x9E3779B97F4A7C15 + sid) & MASK64


# The kernel's TW_KEY_OVERFLOW (bpf/include/tw_abi.h): the resolver folds it into __other__.
OVERFLOW_KEY: Final = 2
# Streams of a connection that cannot be decoded: the resolver gives __unattributed__ with
# reason "h2_lost" for the UNATTRIBUTED flag (never the default tenant, never a guess).
UNATTRIBUTED: Final = Identity(H2_UNATTRIBUTED_KEY, None, -1, ValueFlag.UNATTRIBUTED)
_OVERFLOW: Final = Identity(OVERFLOW_KEY, b"", -1, ValueFlag.OVERFLOW)

# Why a stream was counted without its tenant (the keys of H2Tracker.lost_streams).
LOST_REASONS: Final = (
    "h2_gap",  # a seq gap or lost event: the connection's HPACK state is gone (per stream;
    #            per connection when its first events never arrived)
    "h2_decode",  # HPACK or framing error: same (per stream)
    "h2_header_limit",  # a header block over MAX_HEADER_BLOCK bytes: same (per stream)
    "h2_stream_limit",  # a stream beyond MAX_STREAMS open on its connection: class none
    "h2_conn_limit",  # a connection beyond max_connections: not decoded (per connection)
    "h2_midstream",  # a connection older than the daemon: never decoded (per stream, by its
    #                  request HEADERS frame, under __unattributed__)
    "h2_budget",  # the tick's decoding budget ran out: the costliest connections are shed (its
    #               open streams under __unattributed__, then per connection: not decoded)
)


class Acc:
    """One (key, side)'s counts in the tick (what take() turns into an IdentityCounts)."""

    __slots__ = ("buckets", "by_class", "closed", "heads", "ident", "lat_sum", "opened", "rx",
                 "tx")

    def __init__(self, ident: Identity, nbuckets: int) -> None:
        self.ident = ident
        self.by_class = [0] * len(STATUS_CLASSES)
        self.heads = 0
        self.buckets = [0] * nbuckets
        self.lat_sum = 0
        self.opened = 0
        self.closed = 0
        self.rx = 0
        self.tx = 0


class TickCounts:
    """The accumulator the sessions write into (see the module docstring)."""

    def __init__(self, latency_bounds_seconds: Sequence[float], max_keys: int) -> None:
        bounds = [round(b * 1e9) for b in latency_bounds_seconds]
        if bounds != sorted(set(bounds)):
            raise ValueError("latency bounds must be strictly increasing")
        self._bounds_ns = bounds
        self._max_keys = max_keys
        self._accs: dict[tuple[int, Side], Acc] = {}
        # take() starts a new generation: an accumulator a session holds on to (acc()) is
        # good for the generation it was had in only
        self.gen = 0
        # CPU keys of the streams begun in this tick and the last (h2_stream_key -> identity):
        # the kernel charges a stream's CPU under such a key (bpf/cpu.c tw_thread_set_h2)
        self.stream_keys: dict[int, Identity] = {}
        self.prev_stream_keys: dict[int, Identity] = {}
        self.lost: dict[str, int] = {}  # since the last take_lost()
        self.lost_total: dict[str, int] = {}  # since start

    def acc(self, ident: Identity, side: Side) -> Acc:
        """The accumulator of (ident, side) in this generation, for a caller that adds to it
        directly (head, rx, tx ...) and keeps it while ``gen`` is unchanged."""
        return self._acc(ident, side)

    def end_in(self, acc: Acc, cls: int, latency_ns: int | None) -> None:
        """end() into an accumulator had from acc() in this generation."""
        acc.by_class[cls] += 1
        if latency_ns is not None:
            acc.buckets[bisect_left(self._bounds_ns, latency_ns)] += 1
            acc.lat_sum += latency_ns

    def _acc(self, ident: Identity, side: Side) -> Acc:
        acc = self._accs.get((ident.key, side))
        if acc is None:
            if len(self._accs) >= self._max_keys:
                ident = _OVERFLOW
                acc = self._accs.get((ident.key, side))
            if acc is None:
                acc = Acc(ident, len(self._bounds_ns) + 1)
                self._accs[(ident.key, side)] = acc
        return acc

    def head(self, ident: Identity, side: Side) -> None:
        self._acc(ident, side).heads += 1

    def end(self, ident: Identity, side: Side, cls: int, latency_ns: int | None) -> None:
        acc = self._acc(ident, side)
        acc.by_class[cls] += 1
        if latency_ns is not None:
            acc.buckets[bisect_left(self._bounds_ns, latency_ns)] += 1
            acc.lat_sum += latency_ns

    def bytes(self, ident: Identity, side: Side, n: int, received: bool) -> None:
        """n bytes of frames the gateway received (or sent) on this side, for this identity."""
        acc = self._acc(ident, side)
        if received:
            acc.rx += n
        else:
            acc.tx += n

    def opened(self, ident: Identity, side: Side) -> None:
        self._acc(ident, side).opened += 1

    def closed(self, ident: Identity, side: Side) -> None:
        self._acc(ident, side).closed += 1

    def lose(self, reason: str, side: Side | None, n: int = 1, heads: int = 0) -> None:
        """``n`` streams counted without a tenant (``side`` None: not counted as requests)."""
        if n <= 0:
            return
        self.lost[reason] = self.lost.get(reason, 0) + n
        self.lost_total[reason] = self.lost_total.get(reason, 0) + n
        if side is not None:
            acc = self._acc(UNATTRIBUTED, side)
            acc.by_class[CLASS_NONE] += n
            acc.heads += heads

    def take(self) -> tuple[IdentityCounts, ...]:
        out = tuple(
            IdentityCounts(
                key=a.ident.key, side=side, raw_value=a.ident.raw_value if a.ident.key !=
                OVERFLOW_KEY else None, source_index=a.ident.source_index, flags=a.ident.flags,
                requests_by_class=tuple(a.by_class), request_heads=a.heads, rx_bytes=a.rx,
                tx_bytes=a.tx, latency_buckets=tuple(a.buckets), latency_sum_ns=a.lat_sum,
                connections_opened=a.opened, connections_closed=a.closed)
            for (_, side), a in self._accs.items())
        self._accs = {}
        self.gen += 1
        self.prev_stream_keys, self.stream_keys = self.stream_keys, {}
        return out

    def add_stream(self, key: int, ident: Identity) -> None:
        """A stream begun: its CPU key maps to its identity for this tick and the next."""
        if len(self.stream_keys) < MAX_STREAM_KEYS:
            self.stream_keys[key] = ident

    def stream_identity(self, key: int) -> Identity | None:
        return self.stream_keys.get(key) or self.prev_stream_keys.get(key)

    def take_lost(self) -> dict[str, int]:
        lost, self.lost = self.lost, {}
        return lost
