"""A /metrics scrape, parsed: {sample name: [(labels, value)]}, and the daemon's counters a
benchmark reads from it (`Counts`)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

SERVER_REQUESTS = "tenantwatch_http_server_requests_total"
CLIENT_REQUESTS = "tenantwatch_http_client_requests_total"
EVENTS_LOST = "tenantwatch_events_lost_total"
TICKS = "tenantwatch_ticks_total"
CHECKED = "tenantwatch_isolation_responses_checked_total"
BREACHES = "tenantwatch_isolation_breaches_total"


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text format -> {sample name: [(labels, value)]}, in the order of the text.

    Sample names as written: a counter's `_total` (and `_created`), a histogram's `_bucket`,
    `_count` and `_sum`.  Label values unescaped.  Also takes a few lines picked out of a scrape
    without their HELP and TYPE lines (each is then a family of its own)."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


@dataclass
class Counts:
    server: int
    client: int
    by_tenant: dict[str, int]
    lost: int
    ticks: int
    checked: int = 0  # responses the response check compared (--response-check)
    breaches: int = 0

    @classmethod
    def from_metrics(cls, text: str) -> Counts:
        m = parse_metrics(text)
        by_tenant: dict[str, int] = {}
        for labels, v in m.get(SERVER_REQUESTS, []):
            t = labels.get("tenant", "")
            by_tenant[t] = by_tenant.get(t, 0) + int(v)
        return cls(
            server=int(sum(v for _, v in m.get(SERVER_REQUESTS, []))),
            client=int(sum(v for _, v in m.get(CLIENT_REQUESTS, []))),
            by_tenant=by_tenant,
            lost=int(sum(v for _, v in m.get(EVENTS_LOST, []))),
            ticks=int(sum(v for _, v in m.get(TICKS, []))),
            checked=int(sum(v for _, v in m.get(CHECKED, []))),
            breaches=int(sum(v for _, v in m.get(BREACHES, []))),
        )
