"""Detection verdicts as Prometheus families and as the /api/v1/hotspots document.

Takes: the latest detection.DetectionResult (or None before the first tick).
Gives: the catalog's TENANT_CPU_SHARE, NOISY_NEIGHBOUR and HOTSPOT families (catalog.py), built
fresh at each scrape so tenants and hotspots that went away disappear.
"""

from __future__ import annotations

import logging
from typing import Any

from tenantwatch.detection import DetectionResult
from tenantwatch.exporters import catalog
from tenantwatch.exporters.state import StateCollector

log = logging.getLogger(__name__)


class DetectionCollector(StateCollector):
    """Builds the detection families from the latest DetectionResult at each scrape."""

    @staticmethod
    def _families(result: DetectionResult | None) -> list:
        share = catalog.family(catalog.TENANT_CPU_SHARE)
        noisy = catalog.family(catalog.NOISY_NEIGHBOUR)
        hotspot = catalog.family(catalog.HOTSPOT)
        if result is not None:
            for tenant, value in sorted(result.shares.items()):
                share.add_metric([tenant], value)
            for v in result.noisy:
                noisy.add_metric([v.tenant], 1)
            for h in result.hotspots:
                hotspot.add_metric([h.kind, h.id, h.tenant], 1)
        return [share, noisy, hotspot]


def hotspots_payload(result: DetectionResult | None) -> tuple[int, dict[str, Any]]:
    """/api/v1/hotspots: flagged tenants and hotspots with their evidence."""
    if result is None:
        return 503, {"error": "no detection result yet"}
    return 200, {
        "at": result.at,
        "window_seconds": result.window_seconds,
        "window_complete": result.window_complete,
        "shares": dict(result.shares),
        "noisy_neighbours": [v.as_dict() for v in result.noisy],
        "hotspots": [h.as_dict() for h in result.hotspots],
        "contention": _plain(result.contention),
    }


def _plain(value: Any) -> Any:
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    return value
