"""The JSON documents of /healthz and /api/v1/tenants, built from the daemon's state.

Takes: the latest Snapshot, the latest DetectionResult (or None) and, for health, the tick
loop's age and limits.  Gives: plain dicts for http_api.py to serialise.  No I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tenantwatch.aggregation.aggregator import estimate_quantile
from tenantwatch.aggregation.records import Snapshot, TenantSideStats
from tenantwatch.detection import DetectionResult

# /healthz names a kernel table this full (alert TenantwatchKernelTableFull fires at the same)
TABLE_FULL_RATIO = 0.9


def health_document(snap: Snapshot, *, ready: bool, last_tick_age: float, stall_after: float,
                    drain_path: str, h2_decoder: str | None = None,
                    stage_errors: Mapping[str, int] | None = None,
                    registry: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """/healthz: ok while ready and the tick loop has run within `stall_after` seconds."""
    stalled = last_tick_age > stall_after
    lost = dict(snap.events_lost)
    doc: dict[str, Any] = {
        "ok": ready and not stalled,
        "ready": ready,
        "last_tick_age_seconds": round(last_tick_age, 3),
        "targets": snap.targets,
        "probes_detached": [p for p, ok in snap.probes.items() if not ok],
        "events_lost": lost,
        "events_lost_total": sum(lost.values()),
        "identity_rejected": dict(snap.identity_rejected),
        "drain_path": drain_path,
        # each kernel table's fill; "tables_full" names those at TABLE_FULL_RATIO or more
        "tables": {name: {"entries": n, "capacity": cap}
                   for name, (n, cap) in sorted(snap.tables.items())},
        "tables_full": sorted(name for name, (n, cap) in snap.tables.items()
                              if cap and n >= TABLE_FULL_RATIO * cap),
        # tick stages that raised since start (tenantwatch_stage_errors_total), when any did
        "stage_errors": {k: v for k, v in sorted((stage_errors or {}).items()) if v},
    }
    if h2_decoder is not None:  # "compiled (mypyc)" or "python (<why>)" (h2/compiled.py)
        doc["h2_decoder"] = h2_decoder
    if registry is not None:
        doc["registry"] = dict(registry)
    return doc


def tenants_payload(snapshot: Snapshot) -> dict[str, Any]:
    """The /api/v1/tenants document for one snapshot."""
    bounds = snapshot.latency_bounds_seconds
    return {
        "taken_at": snapshot.taken_at_unix,
        "tenants": [_tenant_entry(s, bounds) for s in snapshot.tenants],
        "identity_rejected": dict(snapshot.identity_rejected),
        "events_lost": dict(snapshot.events_lost),
    }


def _tenant_entry(stats: TenantSideStats, bounds: tuple[float, ...]) -> dict[str, Any]:
    buckets = stats.latency_buckets
    shaped = len(buckets) == len(bounds) + 1
    return {
        "tenant": stats.tenant,
        "side": stats.side.value,
        "trusted": stats.trusted,
        "requests": stats.requests,
        "requests_by_class": dict(stats.requests_by_class),
        "rx_bytes": stats.rx_bytes,
        "tx_bytes": stats.tx_bytes,
        "latency_p50_seconds": estimate_quantile(bounds, buckets, 0.5) if shaped else None,
        "latency_p99_seconds": estimate_quantile(bounds, buckets, 0.99) if shaped else None,
        "latency_sum_seconds": stats.latency_sum_seconds,
        "connections_active": stats.connections_active,
        "connections_opened": stats.connections_opened,
        "connections_closed": stats.connections_closed,
        "connection_seconds": stats.connection_seconds,
        "cpu_seconds": stats.cpu_seconds,
    }


def tenants_document(snap: Snapshot, detection: DetectionResult | None) -> dict[str, Any]:
    """/api/v1/tenants: the snapshot's tenants, plus CPU shares and flags once detection ran."""
    doc = tenants_payload(snap)
    flags: dict[str, list[str]] = {}
    if detection is not None:
        doc["cpu_share"] = dict(detection.shares)
        for v in detection.noisy:
            flags.setdefault(v.tenant, []).append("NOISY")
        for h in detection.hotspots:
            flags.setdefault(h.tenant, []).append(f"HOT:{h.kind}{h.id}")
    doc["flags"] = flags
    return doc
