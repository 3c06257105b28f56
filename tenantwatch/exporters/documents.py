"""The JSON documents of /healthz and /api/v1/tenants, built from the daemon's state.

Takes: the latest Snapshot, the latest DetectionResult (or None) and, for health, the tick
loop's age and limits.  Gives: plain dicts for http_api.py to serialise.  No I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tenantwatch.aggregation.records import Snapshot
from tenantwatch.detection import DetectionResult
from tenantwatch.exporters.http_api import tenants_payload

# /healthz names a kernel table this full (alert TenantwatchKernelTableFull fires at the same)
TABLE_FULL_RATIO = 0.9


def health_document(snap: Snapshot, *, ready: bool, last_tick_age: float, stall_after: float,
                    drain_path: str, stage_errors: Mapping[str, int] | None = None,
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
    if registry is not None:
        doc["registry"] = dict(registry)
    return doc


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
