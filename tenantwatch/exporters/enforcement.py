"""Enforcement state as Prometheus families, built from Enforcer.payload() at each scrape.

Gives: the catalog's CPU_CAP_CORES{tenant} (caps in force, enforce mode),
ENFORCEMENT_ACTIONS{tenant,action,mode} and ENFORCEMENT_REFUSALS{reason} (one series per reason,
zeros included) families (catalog.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from tenantwatch.enforcement import REFUSAL_REASONS
from tenantwatch.exporters import catalog
from tenantwatch.exporters.state import StateCollector

log = logging.getLogger(__name__)


class EnforcementCollector(StateCollector):
    """Builds the enforcement families from Enforcer.payload() at each scrape."""

    @staticmethod
    def _families(doc: Mapping[str, Any] | None) -> list:
        caps = catalog.family(catalog.CPU_CAP_CORES)
        actions = catalog.family(catalog.ENFORCEMENT_ACTIONS)
        refusals = catalog.family(catalog.ENFORCEMENT_REFUSALS)
        if doc is not None:
            for cap in doc.get("caps", []):
                caps.add_metric([cap["tenant"]], cap["cores"])
            for a in doc.get("actions", []):
                actions.add_metric([a["tenant"], a["action"], a["mode"]], a["count"])
            counts = doc.get("refusals", {})
            for reason in sorted(set(REFUSAL_REASONS) | set(counts)):
                refusals.add_metric([reason], counts.get(reason, 0))
        return [caps, actions, refusals]
