"""Records the aggregation stage gives to detection and the exporters."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tenantwatch.kernel.records import Side


@dataclass(frozen=True)
class TenantSideStats:
    """Cumulative counters of one tenant on one side of the gateway since the daemon started."""

    tenant: str
    side: Side
    trusted: bool  # at least one request of this tenant on this side came from a trusted source
    requests_by_class: Mapping[str, int]  # status class -> count (STATUS_CLASSES)
    rx_bytes: int
    tx_bytes: int
    latency_buckets: tuple[int, ...]  # cumulative counts per upper bound, last is +Inf
    latency_sum_seconds: float
    connections_opened: int
    connections_active: int

    @property
    def requests(self) -> int:
        return sum(self.requests_by_class.values())


@dataclass(frozen=True)
class Snapshot:
    """Everything the exporters need, built once per tick; immutable."""

    tenants: tuple[TenantSideStats, ...]
    latency_bounds_seconds: tuple[float, ...]
    identity_rejected: Mapping[str, int]  # cumulative, by reason
    events_lost: Mapping[str, int]  # cumulative, by reason
    probes: Mapping[str, bool]
    targets: int
    ticks: int
    ready: bool
    taken_at_unix: float
