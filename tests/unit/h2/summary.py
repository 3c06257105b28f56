"""Folding IdentityCounts into per-tenant totals, through the real IdentityResolver."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tenantwatch.config import DEFAULT_PATTERN, JwtSettings, Source, Tenancy
from tenantwatch.identity import IdentityResolver
from tenantwatch.kernel.records import STATUS_CLASSES, IdentityCounts, Side

SOURCES = (
    Source("header", "x-tenant-id", None, False),
    Source("jwt", "authorization", None, False, jwt=JwtSettings(claim="tenant_id")),
    Source("host", "host", None, False, host_template="{tenant}.api.example.com"),
)
BOUNDS = (0.001, 0.01, 0.1)


@dataclass
class Totals:
    classes: dict[str, int] = field(default_factory=dict)
    heads: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BOUNDS) + 1))
    latency_sum_ns: int = 0
    opened: int = 0
    closed: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0


def fold(counts: Iterable[IdentityCounts], resolver: IdentityResolver | None = None,
         side: Side | None = Side.SERVER) -> dict[str, Totals]:
    """Per tenant label (the resolver's), summed."""
    if resolver is None:
        resolver = IdentityResolver(Tenancy(SOURCES, DEFAULT_PATTERN, (), 100, None))
    out: dict[str, Totals] = {}
    for c in counts:
        if side is not None:
            assert c.side is side
        label = resolver.resolve(c.key, c.raw_value, c.source_index, c.flags, c.side).tenant
        t = out.setdefault(label, Totals())
        for cls, n in zip(STATUS_CLASSES, c.requests_by_class):
            if n:
                t.classes[cls] = t.classes.get(cls, 0) + n
        t.heads += c.request_heads
        for i, n in enumerate(c.latency_buckets):
            t.buckets[i] += n
        t.latency_sum_ns += c.latency_sum_ns
        t.rx_bytes += c.rx_bytes
        t.tx_bytes += c.tx_bytes
        t.opened += c.connections_opened
        t.closed += c.connections_closed
    return out
