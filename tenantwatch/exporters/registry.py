"""The tenant registry's state as Prometheus families (identity/registry.py), at each scrape.

Gives: tenantwatch_registry_tenants{state} (known tenants, and how many are active),
tenantwatch_registry_stale (1 while the registry in use is not from the latest read),
tenantwatch_registry_age_seconds (since the registry in use was read from Redis),
tenantwatch_registry_read_failures_total.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from tenantwatch.exporters.state import StateCollector


class RegistryCollector(StateCollector):
    """Builds the registry families from TenantRegistry.status() at each scrape."""

    @staticmethod
    def _families(doc: Mapping[str, Any] | None) -> list:
        tenants = GaugeMetricFamily("tenantwatch_registry_tenants",
                                    "Tenants in the registry in use (all, and active)",
                                    labels=["state"])
        stale = GaugeMetricFamily("tenantwatch_registry_stale",
                                  "1 while the registry in use is not from the latest read "
                                  "(Redis unreachable: the last good one, or its backup)")
        age = GaugeMetricFamily("tenantwatch_registry_age_seconds",
                                "Seconds since the registry in use was read from Redis")
        failures = CounterMetricFamily("tenantwatch_registry_read_failures",
                                       "Reads of the registry from Redis that failed")
        if doc is not None:
            tenants.add_metric(["all"], doc["tenants"])
            tenants.add_metric(["active"], doc["active"])
            stale.add_metric([], 1 if doc["stale"] else 0)
            if doc["age_seconds"] is not None:
                age.add_metric([], doc["age_seconds"])
            failures.add_metric([], doc["failures"])
        return [tenants, stale, age, failures]
