"""Enforcement state as Prometheus families, built from Enforcer.payload() at each scrape.

Gives: tenantwatch_cpu_cap_cores{tenant} (caps in force, enforce mode), 
tenantwatch_enforcement_actions_total{tenant,action,mode}, and
tenantwatch_enforcement_refusals_total{reason} (one series per reason, zeros included).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from tenantwatch.enforcement import REFUSAL_REASONS
from tenantwatch.exporters.state import StateCollector

log = logging.getLogger(__name__)


class EnforcementCollector(StateCollector):
    """Builds the enforcement families from Enforcer.payload() at each scrape."""

    @staticmethod
    def _families(doc: Mapping[str, Any] | None) -> list:
        caps = GaugeMetricFamily("tenantwatch_cpu_cap_cores",
                                 "CPU cap in force on the tenant's cgroup, in cores",
                                 labels=["tenant"])
        actions = CounterMetricFamily(
            "tenantwatch_enforcement_actions_total",
            "Enforcement decisions carried out (enforce) or logged as would-do (dry-run)",
            labels=["tenant", "action", "mode"])
        refusals = CounterMetricFamily(
            "tenantwatch_enforcement_refusals_total",
            "Caps refused, by reason (untrusted identity, gateway in the cgroup, ...)",
            labels=["reason"])
        if doc is not None:
            for cap in doc.get("caps", []):
                caps.add_metric([cap["tenant"]], cap["cores"])
            for a in doc.get("actions", []):
                actions.add_metric([a["tenant"], a["action"], a["mode"]], a["count"])
            counts = doc.get("refusals", {})
            for reason in sorted(set(REFUSAL_REASONS) | set(counts)):
                refusals.add_metric([reason], counts.get(reason, 0))
        return [caps, actions, refusals]
