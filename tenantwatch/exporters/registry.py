"""The tenant registry's state as Prometheus families (identity/registry.py), at each scrape.

Gives: the catalog's REGISTRY_TENANTS{state} (known tenants, and how many are active),
REGISTRY_STALE (1 while the registry in use is not from the latest read), REGISTRY_AGE_SECONDS
(since the registry in use was read from Redis) and REGISTRY_READ_FAILURES families
(catalog.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tenantwatch.exporters import catalog
from tenantwatch.exporters.state import StateCollector


class RegistryCollector(StateCollector):
    """Builds the registry families from TenantRegistry.status() at each scrape."""

    @staticmethod
    def _families(doc: Mapping[str, Any] | None) -> list:
        tenants = catalog.family(catalog.REGISTRY_TENANTS)
        stale = catalog.family(catalog.REGISTRY_STALE)
        age = catalog.family(catalog.REGISTRY_AGE_SECONDS)
        failures = catalog.family(catalog.REGISTRY_READ_FAILURES)
        if doc is not None:
            tenants.add_metric(["all"], doc["tenants"])
            tenants.add_metric(["active"], doc["active"])
            stale.add_metric([], 1 if doc["stale"] else 0)
            if doc["age_seconds"] is not None:
                age.add_metric([], doc["age_seconds"])
            failures.add_metric([], doc["failures"])
        return [tenants, stale, age, failures]
