"""The response-side tenant check, user-space half (docs/isolation.md).

Takes, per tick, what the kernel's check found (KernelTick.isolation, .breaches,
.breach_events) and the identity resolver.  Gives cumulative counters for the exporters
(IsolationTotals: responses checked and not checked by side and reason, breaches by requester,
served tenant and side) and one IsolationBreach record per sampled breach event, for the log
and OTLP.

The kernel compares hashes of the raw values; here the requester's value (from the resolver's
cache) and the served value are compared again as text with trailing blanks removed, so a
difference of whitespace alone is never a breach.  Both tenants become labels through the
resolver's bounds (pattern, allow-list, registry, max_tenants); the breach series are bounded
by MAX_BREACH_SERIES, beyond which new pairs are counted under (__other__, __other__).
Connection 4-tuples come from /proc (the event's process and fd), read once per tick that has
events, and only for those.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tenantwatch.identity.records import OTHER
from tenantwatch.kernel.records import BreachEvent, KernelTick, Side, ValueFlag

# Why a response was not checked (kernel tw_iso; tenantwatch_isolation_responses_unchecked_total)
UNCHECKED_REASONS = ("no_header", "request_identity", "malformed")
# Distinct (tenant, served, side) breach series kept; more pairs fold into (__other__, __other__).
MAX_BREACH_SERIES = 1000
# Bytes of a served value or request line shown in a log line or span (escaped beyond ASCII).
SHOWN_BYTES = 64


@dataclass(frozen=True)
class IsolationBreach:
    """One sampled isolation breach: what an incident responder needs."""

    tenant: str  # the requester (bounded label)
    served: str  # whose data the response says it carries (bounded label)
    served_value: str  # the header's value as sent, escaped and cut to SHOWN_BYTES
    side: Side
    time_unix: float
    pid: int  # the gateway process
    connection: str  # "local -> peer" of the gateway's socket, or "unknown (closed)"
    status: int
    method: str
    request_line: str  # the request line's first bytes (method and target), escaped

    def as_dict(self) -> dict:
        return {"tenant": self.tenant, "served": self.served, "served_value": self.served_value,
                "side": self.side.value, "time_unix": round(self.time_unix, 6), "pid": self.pid,
                "connection": self.connection, "status": self.status, "method": self.method,
                "request_line": self.request_line}


@dataclass(frozen=True)
class IsolationTotals:
    """Cumulative counters since start (the exporters' view)."""

    sides: tuple[Side, ...] = ()  # the checked sides
    checked: Mapping[Side, int] = field(default_factory=dict)
    unchecked: Mapping[tuple[Side, str], int] = field(default_factory=dict)
    breaches: Mapping[tuple[str, str, Side], int] = field(default_factory=dict)


class IsolationTally:
    """Folds each tick's check results into totals; resolves breach events."""

    def __init__(self, resolver, sides: Iterable[Side],
                 proc: str = "/proc", clock=time.time, monotonic=time.monotonic) -> None:
        self._resolver = resolver
        self._sides = tuple(sides)
        self._proc = proc
        self._clock, self._monotonic = clock, monotonic
        self._checked: dict[Side, int] = dict.fromkeys(self._sides, 0)
        self._unchecked: dict[tuple[Side, str], int] = {
            (s, r): 0 for s in self._sides for r in UNCHECKED_REASONS}
        self._breaches: dict[tuple[str, str, Side], int] = {}
        self._latest = self._totals()

    def apply(self, tick: KernelTick) -> tuple[IsolationBreach, ...]:
        """Fold one tick; gives its sampled breaches (after the tick's identities were applied,
        so the resolver knows the requesters)."""
        for iso in tick.isolation:
            self._checked[iso.side] = self._checked.get(iso.side, 0) + iso.checked
            for reason in UNCHECKED_REASONS:
                key = (iso.side, reason)
                self._unchecked[key] = self._unchecked.get(key, 0) + getattr(iso, reason)
        for b in tick.breaches:
            pair = self._pair(b.key, b.served, b.side)
            if pair is None:
                continue  # the same tenant after all (whitespace): checked, not a breach
            if pair not in self._breaches and len(self._breaches) >= MAX_BREACH_SERIES:
                pair = (OTHER, OTHER, b.side)
            self._breaches[pair] = self._breaches.get(pair, 0) + b.count
        out = self._events(tick.breach_events)
        self._latest = self._totals()
        return out

    def totals(self) -> IsolationTotals:
        return self._latest

    # --- internals ---------------------------------------------------------------------------

    def _totals(self) -> IsolationTotals:
        return IsolationTotals(sides=self._sides, checked=dict(self._checked),
                               unchecked=dict(self._unchecked), breaches=dict(self._breaches))

    def _pair(self, key: int, served: bytes, side: Side) -> tuple[str, str, Side] | None:
        """(requester label, served label, side), or None when both name the same value."""
        requester = self._resolver.resolve(key, None, -1, ValueFlag.NONE, side).tenant
        value = self._resolver.value_of(key)
        served_text = _text(served)
        if value is not None and served_text is not None and value == served_text:
            return None
        return requester, self._resolver.served_label(served_text), side

    def _events(self, events: Iterable[BreachEvent]) -> tuple[IsolationBreach, ...]:
        events = tuple(events)
        if not events:
            return ()
        sockets = _socket_table(self._proc, {(e.tgid, e.fd) for e in events})
        # CLOCK_MONOTONIC (kernel) -> wall clock, through one pair of readings
        offset = self._clock() - self._monotonic()
        out = []
        for e in events:
            pair = self._pair(e.key, e.served, e.side)
            if pair is None:
                continue
            out.append(IsolationBreach(
                tenant=pair[0], served=pair[1], served_value=_shown(e.served), side=e.side,
                time_unix=e.monotonic_ns / 1e9 + offset, pid=e.tgid,
                connection=sockets.get((e.tgid, e.fd), "unknown (closed)"), status=e.status,
                method=e.method, request_line=_shown(e.target.split(b"\r", 1)[0])))
        return tuple(out)


def _text(raw: bytes) -> str | None:
    try:
        return raw.rstrip(b" \t").decode("ascii")
    except UnicodeDecodeError:
        return None


def _shown(raw: bytes) -> str:
    """Bytes for a log line: ASCII kept, the rest escaped, cut to SHOWN_BYTES."""
    cut = raw[:SHOWN_BYTES]
    text = cut.decode("ascii", "backslashreplace")
    text = "".join(c if " " <= c <= "~" else repr(c)[1:-1] for c in text)
    return text + ("..." if len(raw) > SHOWN_BYTES else "")


def _socket_table(proc: str, wanted: set[tuple[int, int]]) -> dict[tuple[int, int], str]:
    """(pid, fd) -> "local -> peer" for the TCP sockets asked for, from /proc/PID/fd and
    /proc/PID/net/tcp{,6} (the process's own network namespace)."""
    inodes: dict[int, dict[int, int]] = {}  # pid -> inode -> fd
    for pid, fd in wanted:
        try:
            link = os.readlink(f"{proc}/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link.endswith("]"):
            inodes.setdefault(pid, {})[int(link[8:-1])] = fd
    out: dict[tuple[int, int], str] = {}
    for pid, by_inode in inodes.items():
        for name in ("tcp", "tcp6"):
            try:
                with open(f"{proc}/{pid}/net/{name}") as f:
                    next(f, None)
                    for line in f:
                        parts = line.split()
                        if len(parts) < 10 or not parts[9].isdigit():
                            continue
                        fd = by_inode.get(int(parts[9]))
                        if fd is not None:
                            out[(pid, fd)] = f"{_address(parts[1])} -> {_address(parts[2])}"
                        if len(out) >= len(wanted):
                            return out
            except OSError:
                continue
    return out


def _address(hex_pair: str) -> str:
    """/proc/net/tcp's "0100007F:1F90" (or the IPv6 form) as "127.0.0.1:8080"."""
    host, port = hex_pair.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        return f"{'.'.join(str(b) for b in raw[::-1])}:{int(port, 16)}"
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    import ipaddress

    addr = ipaddress.IPv6Address(words)
    mapped = addr.ipv4_mapped
    return f"{mapped}:{int(port, 16)}" if mapped else f"[{addr}]:{int(port, 16)}"
