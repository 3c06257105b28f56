"""Power and heat as Prometheus families (aggregation/power.py computes them).

Gives: tenantwatch_tenant_energy_joules_total{tenant} (the node's energy shared by the tenants'
CPU time), tenantwatch_node_power_watts{source} (over the last tick; source "rapl" or "model";
absent when the node has neither) and tenantwatch_node_temperature_celsius{sensor} (thermal
zones and hwmon inputs; absent on machines without).  docs/fleet.md, "Power and heat".
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from tenantwatch.aggregation.power import PowerTotals
from tenantwatch.exporters.state import StateCollector


class PowerCollector(StateCollector):
    """Builds the power families from PowerMeter.totals() at each scrape."""

    @staticmethod
    def _families(totals: PowerTotals | None) -> list:
        energy = CounterMetricFamily(
            "tenantwatch_tenant_energy_joules",
            "Node energy charged to the tenant: each tick's node energy (RAPL, or the "
            "configured power model) times the tenant's share of the node's busy CPU time",
            labels=["tenant"])
        power = GaugeMetricFamily(
            "tenantwatch_node_power_watts",
            "The node's power over the last tick, by source: rapl (measured) or model "
            "(power.idle_watts + utilisation x (power.max_watts - idle))", labels=["source"])
        temperature = GaugeMetricFamily(
            "tenantwatch_node_temperature_celsius",
            "Thermal zone and hwmon temperatures of the node, by sensor", labels=["sensor"])
        if totals is not None:
            for tenant, joules in sorted(totals.energy_joules.items()):
                energy.add_metric([tenant], joules)
            if totals.node_watts is not None and totals.source is not None:
                power.add_metric([totals.source], totals.node_watts)
            for sensor, celsius in sorted(totals.temperatures_celsius.items()):
                temperature.add_metric([sensor], celsius)
        return [energy, power, temperature]
