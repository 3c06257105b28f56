"""A /metrics scrape, parsed.

- `parse_metrics`: {sample name: [(labels, value)]} (prometheus_client's parser), the one parser
  of the harness; `Metrics` (the end-to-end tests' view: {(sample name, labels): value} and the
  sums they compare) and `Counts` (the daemon's counters a benchmark reads) are built on it.
- `parse_selected`: the same shape for only the lines starting with given prefixes, without
  prometheus_client, for the scrapes of tens of thousands of tenants (`SCALE_FAMILIES`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

SERVER_REQUESTS = "tenantwatch_http_server_requests_total"
CLIENT_REQUESTS = "tenantwatch_http_client_requests_total"
EVENTS_LOST = "tenantwatch_events_lost_total"
TICKS = "tenantwatch_ticks_total"
CHECKED = "tenantwatch_isolation_responses_checked_total"
BREACHES = "tenantwatch_isolation_breaches_total"

SIDES = ("server", "client")
RESERVED = ("__other__", "__invalid__", "__unattributed__")
DEFAULT_TENANT = "common"
SHARED = (DEFAULT_TENANT,) + RESERVED  # labels every test may touch: compared as deltas


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


# The families the scale test (tests/e2e/test_scale.py) and benchmark (bench/scale.py) read.
# "name{" takes a family's labelled samples only; a histogram's prefix ending in "_" takes its
# _bucket, _count, _sum (and _created).
SCALE_FAMILIES = (
    "tenantwatch_http_server_requests_total{", "tenantwatch_http_client_requests_total{",
    "tenantwatch_connections_active{", "tenantwatch_connections_opened_total{",
    "tenantwatch_connection_duration_seconds_count{", "tenantwatch_events_lost_total{",
    "tenantwatch_tick_duration_seconds_",
)

_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_ESCAPE_RE = re.compile(r"\\(.)")


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    return _ESCAPE_RE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse_selected(text: str, prefixes: tuple[str, ...]) -> dict[str, list[tuple[dict[str, str],
                                                                                 float]]]:
    """parse_metrics() of only the sample lines starting with one of `prefixes`.

    A line filter and a regular expression instead of prometheus_client's parser: a scrape of
    10,000 tenants is ~50 MB (200 MB at 4x), which prometheus_client takes ~10 s (a minute) to
    parse, longer than the daemon takes to write it; this reads the few families wanted in well
    under a second.  It takes what the daemon writes: `name{labels} value` or `name value`, no
    timestamps; label values unescaped as prometheus_client does (tests/unit/harness)."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line.startswith(prefixes):
            continue
        name, brace, rest = line.partition("{")
        if brace:
            labels, _, value = rest.rpartition("} ")
        else:
            name, _, value = line.partition(" ")
            labels = ""
        out.setdefault(name, []).append(
            ({k: _unescape(v) for k, v in _LABEL_RE.findall(labels)}, float(value)))
    return out


class Metrics(dict):
    """One /metrics scrape: {(sample name, frozenset(labels.items())): value}, and the sums the
    end-to-end tests compare (per side, tenant, status class; events lost; ticks)."""

    @classmethod
    def parse(cls, text: str) -> Metrics:
        out = cls()
        for name, samples in parse_metrics(text).items():
            for labels, value in samples:
                out[(name, frozenset(labels.items()))] = value
        return out

    def samples(self, name: str) -> Iterator[tuple[dict, float]]:
        for (n, labels), v in self.items():
            if n == name:
                yield dict(labels), v

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        return sum(v for lab, v in self.samples(name)
                   if all(lab.get(k) == w for k, w in labels.items()))

    def requests(self, side: str, tenant: str | None = None,
                 status_class: str | None = None) -> int:
        labels = {}
        if tenant is not None:
            labels["tenant"] = tenant
        if status_class is not None:
            labels["status_class"] = status_class
        return int(self.value(f"tenantwatch_http_{side}_requests_total", **labels))

    def by_tenant(self, side: str, prefix: str = "") -> Counter:
        """{tenant: requests} for tenants starting with `prefix` (zero rows left out)."""
        out: Counter = Counter()
        for lab, v in self.samples(f"tenantwatch_http_{side}_requests_total"):
            if lab["tenant"].startswith(prefix) and v:
                out[lab["tenant"]] += int(v)
        return out

    def by_class(self, side: str, tenant: str) -> Counter:
        """{status_class: requests} of one tenant (zero rows left out)."""
        out: Counter = Counter()
        for lab, v in self.samples(f"tenantwatch_http_{side}_requests_total"):
            if lab["tenant"] == tenant and v:
                out[lab["status_class"]] += int(v)
        return out

    def tenant_labels(self, side: str) -> set[str]:
        return {lab["tenant"] for lab, _ in self.samples(f"tenantwatch_http_{side}_requests_total")}

    def rejected(self) -> Counter:
        return Counter({lab["reason"]: int(v)
                        for lab, v in self.samples("tenantwatch_identity_rejected_total")})

    def lost(self) -> Counter:
        return Counter({lab["reason"]: int(v)
                        for lab, v in self.samples("tenantwatch_events_lost_total")})

    def table(self, prefix: str, shared: tuple[str, ...] = SHARED) -> Counter:
        """{(side, tenant, status_class): requests} of the tenants starting with `prefix` and of
        the `shared` labels (zero rows left out)."""
        out: Counter = Counter()
        for side in SIDES:
            for lab, v in self.samples(f"tenantwatch_http_{side}_requests_total"):
                t = lab["tenant"]
                if v and (t.startswith(prefix) or t in shared):
                    out[(side, t, lab["status_class"])] += int(v)
        return out

    @property
    def ticks(self) -> int:
        return int(self.value("tenantwatch_ticks_total"))


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
