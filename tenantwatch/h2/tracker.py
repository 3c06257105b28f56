"""HTTP/2 request attribution in user space: H2Events of many connections -> IdentityCounts.

Takes, per poll, the H2Events the kernel sent (tenantwatch/h2/records.py); gives at take() the
tick's counts per (identity key, side) in the kernel's own record (IdentityCounts, raw value
always set), ready for the identity resolver, and lost-stream counts by reason (LOST_REASONS).
Each connection is a Session (session.py); this module routes events to them and bounds their
number: at most ``max_connections`` are decoded at once, a closed one is freed at once.

Cost: one HPACK decode per header block, in Python (docs/http2.md has the measured figure).
With a budget (``budget_ns_per_tick``), the time spent on each connection in the tick is
measured; when the tick's total goes over the budget, the costliest connections of the tick are
shed until what is left fits: their open streams are counted under __unattributed__
("h2_budget"), their connection is closed in the counts, and their later events are dropped
unread (one "h2_budget" per connection).  So a client with huge header blocks, CONTINUATION
floods or table churn costs at most the budget, and the cheap connections of other tenants are
the last to go.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from tenantwatch.h2.counts import TickCounts
from tenantwatch.h2.identity import IdentityPicker
from tenantwatch.h2.records import H2Event
from tenantwatch.h2.session import MAX_STREAMS, Session
from tenantwatch.kernel.records import CpuCounts, IdentityCounts, KernelTick, Side

# bpf/include/tw_abi.h TW_KEY_UNATTRIBUTED: CPU of no known request
KEY_UNATTRIBUTED: Final = 3

if TYPE_CHECKING:
    from tenantwatch.config import Source

# Connections decoded at once: capture.max_connections' default, the kernel's own bound on the
# connections it follows.  Each costs two HPACK tables (<= 2 x MAX_HPACK_TABLE, ~4 KiB each in
# practice) plus its open streams: ~20 KiB typical, so ~1.3 GiB if all 65536 are h2 and full.
MAX_CONNECTIONS: Final = 65536
# Connection ids remembered as not decoded (over the limit, or first seen mid-stream), so that
# each is counted once in lost_streams: 8 bytes of id + dict slot, ~100 B each.
MAX_IGNORED: Final = 65536
# Distinct (key, side) entries per tick; more fold into the OVERFLOW entry (-> __other__), as
# in the kernel.  The resolver's key cache holds 65536 by default: more keys would be evicted.
MAX_TICK_KEYS: Final = 65536


class H2Tracker:
    """Decodes HTTP/2 connections and counts their streams per tenant key."""

    def __init__(self, sources: Sequence[Source], latency_bounds_seconds: Sequence[float],
                 secret: bytes | None = None, max_connections: int = MAX_CONNECTIONS,
                 max_streams: int = MAX_STREAMS, max_keys: int = MAX_TICK_KEYS,
                 budget_ns_per_tick: int | None = None,
                 clock: Callable[[], int] = time.thread_time_ns) -> None:
        """``secret``: key of the identity hash (default: random per process).
        ``budget_ns_per_tick``: CPU time the tick's feed() calls may take (None: no budget);
        ``clock`` measures it (the thread's CPU time: time the daemon was not scheduled does
        not count)."""
        if max_connections < 1 or max_streams < 1 or max_keys < 1:
            raise ValueError("limits must be positive")
        if budget_ns_per_tick is not None and budget_ns_per_tick < 1:
            raise ValueError("the budget must be positive")
        self._budget = budget_ns_per_tick
        self._clock = clock
        self._spent = 0  # this tick, ns
        self._cost: dict[int, int] = {}  # connection -> ns spent on it this tick
        self._picker = IdentityPicker(sources, secret)
        self._counts = TickCounts(latency_bounds_seconds, max_keys)
        self._max_connections = max_connections
        self._max_streams = max_streams
        self._conns: dict[int, Session] = {}
        self._waiting: set[int] = set()  # connections holding events behind a missing seq
        self._ignored: OrderedDict[int, None] = OrderedDict()  # not decoded; LRU

    @property
    def connections(self) -> int:
        """Connections being decoded."""
        return len(self._conns)

    @property
    def lost_streams(self) -> Mapping[str, int]:
        """Streams counted without a tenant since start, by reason (LOST_REASONS; for
        h2_conn_limit, connections: their streams cannot be seen)."""
        return MappingProxyType(dict(self._counts.lost_total))

    def feed(self, events: Iterable[H2Event]) -> None:
        """Process the events of one poll (any order; each direction is put in seq order)."""
        by_conn: dict[int, list[H2Event]] = {}
        for ev in events:
            evs = by_conn.get(ev.conn)
            if evs is None:
                by_conn[ev.conn] = [ev]
            else:
                evs.append(ev)
        clock, cost = self._clock, self._cost
        for conn, evs in by_conn.items():
            if conn in self._ignored and not any(e.seq == 0 for e in evs):
                if any(e.closed for e in evs):
                    self._ignored.pop(conn, None)
                continue  # not decoded (shed, over the limit, mid-stream): no work at all
            t0 = clock()
            self._feed_conn(conn, evs)
            spent = clock() - t0
            self._spent += spent
            cost[conn] = cost.get(conn, 0) + spent
        for conn in list(self._waiting):
            sess = self._conns.get(conn)
            if sess is None or not sess.settle():
                self._waiting.discard(conn)
        if self._budget is not None and self._spent > self._budget:
            self._shed()

    def take(self) -> tuple[IdentityCounts, ...]:
        """This tick's counts per (key, side), since the previous take(); a new tick's budget."""
        self._spent = 0
        self._cost.clear()
        return self._counts.take()

    @property
    def spent_ns(self) -> int:
        """Time feed() took in this tick so far."""
        return self._spent

    def take_lost(self) -> dict[str, int]:
        """Lost streams by reason since the previous take_lost() (deltas, for KernelTick.lost)."""
        return self._counts.take_lost()

    # --- internals ---------------------------------------------------------------------------

    def _feed_conn(self, conn: int, evs: list[H2Event]) -> None:
        data = [e for e in evs if not e.closed]
        closed = len(data) != len(evs)
        sess = self._conns.get(conn)
        if sess is not None and sess.restarted(data):
            self._end(conn, sess)  # the id was reused: the old connection's close was missed
            sess = None
        if sess is None:
            if not any(e.seq == 0 for e in data):
                # Its first events never arrived: where its frames start is unknown.
                if data and conn not in self._ignored:
                    self._ignore(conn, "h2_gap")
                if closed:
                    self._ignored.pop(conn, None)
                return
            self._ignored.pop(conn, None)
            if len(self._conns) >= self._max_connections:
                self._ignore(conn, "h2_conn_limit")
                if closed:
                    self._ignored.pop(conn, None)
                return
            sess = Session(data[0].side, self._picker, self._counts, self._max_streams, conn)
            if any(e.midstream for e in data):
                sess.start_undecoded("h2_midstream")
            self._conns[conn] = sess
        for ev in data:
            sess.add(ev)
        sess.run()
        if closed:
            self._end(conn, sess)
        elif sess.waiting:
            self._waiting.add(conn)

    def _shed(self) -> None:
        """Over the budget: shed the tick's costliest connections until the rest fits."""
        assert self._budget is not None
        excess = self._spent - self._budget
        for conn, spent in sorted(self._cost.items(), key=lambda kv: kv[1], reverse=True):
            if excess <= 0:
                break
            sess = self._conns.get(conn)
            if sess is None:
                continue
            sess.shed("h2_budget")
            self._end(conn, sess)
            self._ignore(conn, "h2_budget")
            excess -= spent
            self._spent -= spent
            del self._cost[conn]

    def _end(self, conn: int, sess: Session) -> None:
        sess.close()
        del self._conns[conn]
        self._waiting.discard(conn)

    def _ignore(self, conn: int, reason: str) -> None:
        self._counts.lose(reason, None)
        self._ignored[conn] = None
        self._ignored.move_to_end(conn)
        if len(self._ignored) > MAX_IGNORED:
            self._ignored.popitem(last=False)

    def merge(self, tick: KernelTick) -> KernelTick:
        """The tick with its HTTP/2 bytes decoded: their counts join the kernel's identities,
        their lost streams the kernel's losses."""
        self.feed(tick.h2)
        lost = dict(tick.lost)
        for reason, n in self.take_lost().items():
            lost[reason] = lost.get(reason, 0) + n
        return dataclasses.replace(tick, identities=tick.identities + self.take(), lost=lost,
                                   h2=(), cpu=self._stream_cpu(tick.cpu))

    def _stream_cpu(self, rows: tuple[CpuCounts, ...]) -> tuple[CpuCounts, ...]:
        """The kernel charged a stream's CPU under its stream key: put it under the stream's
        identity (begun this tick or the last), else __unattributed__.  The stream rows (one
        per stream, process, CPU and side: thousands a tick on a busy gateway) are summed per
        (identity key, process, CPU, side), what the aggregator keeps apart, into one row each."""
        out: list[CpuCounts] = []
        summed: dict[tuple[int, int, int, Side], int] = {}
        for c in rows:
            if not c.h2_stream:
                out.append(c)
                continue
            ident = self._counts.stream_identity(c.key)
            k = (ident.key if ident is not None else KEY_UNATTRIBUTED, c.tgid, c.cpu, c.side)
            summed[k] = summed.get(k, 0) + c.ns
        for (key, tgid, cpu, side), ns in summed.items():
            out.append(CpuCounts(key, tgid, cpu, side, ns, False))
        return tuple(out)
