"""Power and heat as Prometheus families (aggregation/power.py computes them).

Gives: the catalog's TENANT_ENERGY{tenant} (the node's energy shared by the tenants' CPU time),
NODE_POWER{source} (over the last tick; source "rapl" or "model"; absent when the node has
neither) and NODE_TEMPERATURE{sensor} (thermal zones and hwmon inputs; absent on machines
without) families (catalog.py).  docs/fleet.md, "Power and heat".
"""

from __future__ import annotations

from tenantwatch.aggregation.power import PowerTotals
from tenantwatch.exporters import catalog
from tenantwatch.exporters.state import StateCollector


class PowerCollector(StateCollector):
    """Builds the power families from PowerMeter.totals() at each scrape."""

    @staticmethod
    def _families(totals: PowerTotals | None) -> list:
        energy = catalog.family(catalog.TENANT_ENERGY)
        power = catalog.family(catalog.NODE_POWER)
        temperature = catalog.family(catalog.NODE_TEMPERATURE)
        if totals is not None:
            for tenant, joules in sorted(totals.energy_joules.items()):
                energy.add_metric([tenant], joules)
            if totals.node_watts is not None and totals.source is not None:
                power.add_metric([totals.source], totals.node_watts)
            for sensor, celsius in sorted(totals.temperatures_celsius.items()):
                temperature.add_metric([sensor], celsius)
        return [energy, power, temperature]
