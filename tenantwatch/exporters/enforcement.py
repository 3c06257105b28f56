"""Enforcement state as Prometheus families, built from Enforcer.payload() at each scrape.

Gives: tenantwatch_cpu_cap_cores{tenant} (caps in force, enforce mode), 
tenantwatch_enforcement_actions_total{tenant,action,mode}, and
tenantwatch_enforcement_refusals_total{reason} (one series per reason, zeros included).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any, Callable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from tenantwatch.enforcement import REFUSAL_REASONS

log = logging.getLogger(__name__)


class EnforcementCollector(Collector):
    def __init__(self, get_payload: Callable[[], Mapping[str, Any]]) -> None:
        self._get_payload = get_payload

    def describe(self) -> list:
        return self._families(None)

    def collect(self) -> Iterator:
        try:
            doc = self._get_payload()
        except Exception:  # a scrape must not fail because enforcement did
            log.exception("cannot read the enforcement state")
            doc = None
        yield from self._families(doc)

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
