"""The response-side tenant check as Prometheus families, log lines and OTLP spans.

Gives: the catalog's ISOLATION_BREACHES{tenant, served, side} (a response named another tenant
than its request's), ISOLATION_RESPONSES_CHECKED{side} and ISOLATION_RESPONSES_UNCHECKED{side,
reason} families (catalog.py); one error-level log line per sampled breach (report()); one span
per sampled breach (breach_spans(), for OtelSpanExporter).
docs/isolation.md says what each means and what is not caught.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from tenantwatch.aggregation.isolation import UNCHECKED_REASONS, IsolationBreach, IsolationTotals
from tenantwatch.exporters import catalog
from tenantwatch.exporters.state import StateCollector

log = logging.getLogger("tenantwatch.isolation")


class IsolationCollector(StateCollector):
    """Builds the isolation families from IsolationTally.totals() at each scrape."""

    @staticmethod
    def _families(totals: IsolationTotals | None) -> list:
        breaches = catalog.family(catalog.ISOLATION_BREACHES)
        checked = catalog.family(catalog.ISOLATION_RESPONSES_CHECKED)
        unchecked = catalog.family(catalog.ISOLATION_RESPONSES_UNCHECKED)
        if totals is not None:
            for (tenant, served, side), n in sorted(totals.breaches.items(),
                                                    key=lambda kv: (kv[0][0], kv[0][1],
                                                                    kv[0][2].value)):
                breaches.add_metric([tenant, served, side.value], n)
            for side in totals.sides:
                checked.add_metric([side.value], totals.checked.get(side, 0))
                for reason in UNCHECKED_REASONS:
                    unchecked.add_metric([side.value, reason],
                                         totals.unchecked.get((side, reason), 0))
        return [breaches, checked, unchecked]


def report(breaches: Iterable[IsolationBreach]) -> int:
    """One error-level line per sampled breach (structured: JSON after the message)."""
    n = 0
    for b in breaches:
        log.error("isolation breach: tenant %s got a response served for %s %s", b.tenant,
                  b.served, json.dumps(b.as_dict(), sort_keys=True))
        n += 1
    return n
