"""Detection verdicts as Prometheus families and as the /api/v1/hotspots document.

Takes: the latest detection.DetectionResult (or None before the first tick).
Gives: tenantwatch_tenant_cpu_share, tenantwatch_noisy_neighbour, tenantwatch_hotspot,
built fresh at each scrape so tenants and hotspots that went away disappear.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client.core import GaugeMetricFamily

from tenantwatch.detection import DetectionResult
from tenantwatch.exporters.state import StateCollector

log = logging.getLogger(__name__)


class DetectionCollector(StateCollector):
    """Builds the detection families from the latest DetectionResult at each scrape."""

    @staticmethod
    def _families(result: DetectionResult | None) -> list:
        share = GaugeMetricFamily(
            "tenantwatch_tenant_cpu_share",
            "Tenant's share of the gateway CPU over the detection window (0..1)",
            labels=["tenant"])
        noisy = GaugeMetricFamily(
            "tenantwatch_noisy_neighbour",
            "1 while the tenant is flagged as a noisy neighbour", labels=["tenant"])
        hotspot = GaugeMetricFamily(
            "tenantwatch_hotspot",
            "1 while a CPU or gateway worker is saturated mostly by one tenant",
            labels=["kind", "id", "tenant"])
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
