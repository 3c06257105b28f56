"""Records the kernel stage hands to the identity stage (no bcc or ctypes object leaves kernel/)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple


class Side(str, enum.Enum):
    """Which side of the gateway a connection is on."""

    SERVER = "server"  # the target accepted it (client -> gateway)
    CLIENT = "client"  # the target opened it (gateway -> upstream)


class ValueFlag(enum.IntFlag):
    """Why the kernel thinks an identity value is unusable (bits match bpf/include/tw_abi.h)."""

    NONE = 0
    DUPLICATE = 1 << 0  # the winning identity header appeared more than once
    FOLDED = 1 << 1  # obs-fold continuation line on an identity header
    BAD_BYTE = 1 << 2  # control byte (NUL, CR alone, DEL ...) inside the value
    TOO_LONG = 1 << 3  # value longer than TW_VALUE_MAX; only a prefix was kept
    COLLISION = 1 << 4  # two different values met on one 64-bit key (second hash differed)
    OVERFLOW = 1 << 5  # the kernel's per-tick identity map was full: request folded here
    NO_IDENTITY = 1 << 6  # no configured source was present in the request
    UNATTRIBUTED = 1 << 7  # CPU of target threads working on no request
    ADOPTED = 1 << 8  # on a connection first seen mid-stream, before any HTTP response on it:
    # its value is never trusted


STATUS_CLASSES: tuple[str, ...] = ("1xx", "2xx", "3xx", "4xx", "5xx", "none")


# The records a busy tick makes by the tens of thousands (IdentityCounts, one per identity;
# CpuCounts, one per identity, process and CPU, or per HTTP/2 stream; H2Event, one per
# HTTP/2 event) are NamedTuples: as immutable as a frozen dataclass, and built in a fifth of
# its time (1.9 -> 0.4 µs for IdentityCounts; bench/drain_cost.py).
class IdentityCounts(NamedTuple):
    """Counts the kernel accumulated for one (identity key, side) during one tick.

    Values are deltas since the previous tick.  ``raw_value`` is None when the key was first
    seen in an earlier tick (user space then resolves it from its own cache).
    """

    key: int
    side: Side
    raw_value: bytes | None
    source_index: int  # index into config tenancy.sources, -1 when none matched
    flags: ValueFlag
    requests_by_class: tuple[int, ...]  # aligned with STATUS_CLASSES
    request_heads: int  # request heads parsed (a request is counted in a class once it ends)
    rx_bytes: int
    tx_bytes: int
    latency_buckets: tuple[int, ...]  # non-cumulative, len(bounds) + 1 (last is +Inf)
    latency_sum_ns: int
    connections_opened: int
    connections_closed: int
    # summed lifetimes of the connections closed (from accept/connect, first sight, or a
    # WebSocket upgrade, to close); the kernel's CLOCK_MONOTONIC
    connections_duration_ns: int = 0
    # kernel losses that may have raised this identity's numbers this tick (struct
    # tw_agg_val.lost: a cut or desynchronised request on one of its connections, a pipeline
    # overflow, a lost token); see aggregation.TENANT_LOSSES
    losses: int = 0


class CpuCounts(NamedTuple):
    """On-CPU time of one target process on one CPU charged to one identity, in one tick."""

    key: int  # identity key (see IdentityCounts.key); abi.KEY_UNATTRIBUTED: no current request
    tgid: int
    cpu: int
    side: Side
    ns: int
    # `key` is an HTTP/2 stream's (tw_h2_stream_key of its connection id and stream id), not an
    # identity: tenantwatch/h2 maps it to the stream's identity before aggregation
    h2_stream: bool = False


@dataclass(frozen=True)
class SlowRequest:
    """One request slower than capture.slow_request_seconds (sampled, rate-limited)."""

    key: int
    side: Side
    start_monotonic_ns: int  # CLOCK_MONOTONIC, as time.monotonic_ns()
    latency_ns: int
    method: str
    status: int
    tgid: int


class H2Event(NamedTuple):
    """Bytes of one direction of an HTTP/2 connection, every DATA payload left out (the 9-byte
    DATA frame header is kept; the client preface is not sent).  tenantwatch/h2 decodes them."""

    conn: int  # the connection's id, unique (not its fd: nginx reuses an fd at once)
    side: Side  # SERVER: a connection the gateway accepted; CLIENT: one it opened
    is_request: bool  # the request direction
    seq: int  # per (conn, direction): 0, 1, 2 ... (a gap: bytes were lost)
    ts_ns: int  # CLOCK_MONOTONIC ns when the bytes moved
    data: bytes
    closed: bool = False  # the connection closed (data is empty)
    lost: bool = False  # bytes of this direction could not be sent
    # The connection is older than the daemon (the kernel took it up at a frame boundary, seq 0
    # is not its start): its HPACK state is unknown, so it is never decoded.
    midstream: bool = False


@dataclass(frozen=True)
class IsolationCounts:
    """The response-side tenant check on one side in one tick (deltas; docs/isolation.md).

    ``checked`` responses were compared with their request's identity (``breaches`` of them
    named another tenant); the others were not checked, for the reason their field names."""

    side: Side
    checked: int = 0
    breaches: int = 0
    no_header: int = 0
    request_identity: int = 0
    malformed: int = 0


@dataclass(frozen=True)
class BreachCount:
    """Responses in one tick that named ``served`` while answering a request of identity key
    ``key`` (a pair of tw_breach)."""

    key: int  # the request's identity key (see IdentityCounts.key)
    side: Side
    served: bytes  # the served-tenant header's value (its first VALUE_MAX bytes)
    count: int


@dataclass(frozen=True)
class BreachEvent:
    """One isolation breach, for the incident responder (sampled within a rate per CPU)."""

    key: int  # the request's identity key
    side: Side
    monotonic_ns: int  # CLOCK_MONOTONIC of the response head's syscall
    tgid: int  # the gateway process
    fd: int  # the connection's fd in tgid
    status: int
    method: str
    target: bytes  # the first bytes after the method (cut; may hold the version and more)
    served: bytes


@dataclass(frozen=True)
class KernelTick:
    """Everything drained from the kernel in one tick."""

    identities: tuple[IdentityCounts, ...]
    lost: Mapping[str, int]  # deltas by reason
    targets: int  # processes traced right now
    probes: Mapping[str, bool]  # probe name -> attached
    monotonic_ns: int
    cpu: tuple[CpuCounts, ...] = ()
    # Run-queue delay of target threads since the daemon started (cumulative totals):
    # counts per bucket (non-cumulative across buckets, last is +Inf) and their sum.
    runq_bounds_seconds: tuple[float, ...] = ()
    runq_buckets: tuple[int, ...] = ()
    runq_sum_ns: int = 0
    slow: tuple[SlowRequest, ...] = ()
    h2: tuple[H2Event, ...] = ()  # HTTP/2 bytes, in the order they were sent
    # the response-side tenant check (empty when tenancy.response_check is not set)
    isolation: tuple[IsolationCounts, ...] = ()
    breaches: tuple[BreachCount, ...] = ()
    breach_events: tuple[BreachEvent, ...] = ()
    # The kernel's tables: name -> (entries, capacity).  "connections" (tw_conns) now; the
    # per-tick ones ("identities" tw_agg, "cpu" tw_cpu, "closes" tw_closes) as this tick used
    # them (docs/limits.md).
    tables: Mapping[str, tuple[int, int]] = field(default_factory=dict)
