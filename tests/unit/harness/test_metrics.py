"""harness.metrics.parse_metrics (prometheus_client's parser) against the hand-written regex
parser it replaced (bench/nginx_ab.py before the harness moved out), on exposition text written
by prometheus_client's own encoder: the same {sample name: [(labels, value)]}, label values with
commas, braces, spaces and '=' included.  The one difference: escaped label values (a quote, a
backslash, a newline) come back unescaped, where the old parser kept the escapes."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import generate_latest

from harness.metrics import Counts, parse_metrics

# The parser as bench/nginx_ab.py had it, kept here as the reference.
_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def old_parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line)
        if m is None:
            continue
        labels = dict(_LABEL_RE.findall(m.group(2) or ""))
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        out.setdefault(m.group(1), []).append((labels, value))
    return out


def exposition(tenants: list[str]) -> str:
    """A scrape of the daemon's shape: per-tenant counters, a latency histogram, a per-side
    gauge, events lost by reason, the tick counter and build info."""
    reg = CollectorRegistry()
    requests = Counter("tenantwatch_http_server_requests", "requests", ["status_class", "tenant"],
                       registry=reg)
    client = Counter("tenantwatch_http_client_requests", "requests", ["status_class", "tenant"],
                     registry=reg)
    latency = Histogram("tenantwatch_http_server_request_duration_seconds", "latency", ["tenant"],
                        buckets=(0.005, 0.1, 1.0), registry=reg)
    active = Gauge("tenantwatch_connections_active", "open", ["side", "tenant"], registry=reg)
    lost = Counter("tenantwatch_events_lost", "lost", ["reason"], registry=reg)
    ticks = Counter("tenantwatch_ticks", "ticks", registry=reg)
    Info("tenantwatch_build", "build", registry=reg).info({"version": "0.1.0"})
    for i, t in enumerate(tenants):
        requests.labels("2xx", t).inc(10 + i)
        requests.labels("5xx", t).inc(i)
        client.labels("2xx", t).inc(10 + i)
        for v in (0.001, 0.05, 0.5, 2.0):
            latency.labels(t).observe(v * (i + 1))
        active.labels("server", t).set(i)
    for reason in ("ringbuf_full", "scan_budget"):
        lost.labels(reason).inc(3)
    ticks.inc(42)
    return generate_latest(reg).decode()


PLAIN = ["acme", "t00001", "__other__", "comma,separated,tenant", "brace}{tenant",
         "space and = sign"]
ESCAPED = ['quote"d', "back\\slash", "new\nline", 'all,"of}\\them\n']


def unescape(v: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), v)


def test_same_samples_as_the_old_parser():
    text = exposition(PLAIN)
    new = parse_metrics(text)
    assert new == old_parse_metrics(text)
    # the shape the callers read: full sample names, labels, float values
    assert {"tenantwatch_http_server_requests_total", "tenantwatch_http_server_requests_created",
            "tenantwatch_http_server_request_duration_seconds_bucket",
            "tenantwatch_http_server_request_duration_seconds_count",
            "tenantwatch_http_server_request_duration_seconds_sum",
            "tenantwatch_connections_active", "tenantwatch_events_lost_total",
            "tenantwatch_ticks_total", "tenantwatch_build_info"} <= set(new)
    assert ({"status_class": "2xx", "tenant": "comma,separated,tenant"}, 13.0) in \
        new["tenantwatch_http_server_requests_total"]
    assert ({"tenant": "brace}{tenant", "le": "+Inf"}, 4.0) in \
        new["tenantwatch_http_server_request_duration_seconds_bucket"]


def test_lines_picked_out_of_a_scrape_parse_alike():
    """bench/scale.py and bench/soak.py parse only the lines they need (no HELP, no TYPE)."""
    wanted = ("tenantwatch_http_server_requests_total{", "tenantwatch_events_lost_total{",
              "tenantwatch_http_server_request_duration_seconds_")
    text = "\n".join(line for line in exposition(PLAIN).splitlines() if line.startswith(wanted))
    assert parse_metrics(text) == old_parse_metrics(text)
    assert len(parse_metrics(text)["tenantwatch_http_server_requests_total"]) == 2 * len(PLAIN)


def test_escaped_label_values_come_back_unescaped():
    text = exposition(PLAIN + ESCAPED)
    new, old = parse_metrics(text), old_parse_metrics(text)
    assert set(new) == set(old)
    for name in new:
        assert new[name] == [({k: unescape(v) for k, v in labels.items()}, value)
                             for labels, value in old[name]], name
    tenants = {lb["tenant"] for lb, _ in new["tenantwatch_http_server_requests_total"]}
    assert tenants == set(PLAIN + ESCAPED)
    assert 'quote\\"d' in {lb["tenant"] for lb, _ in old["tenantwatch_http_server_requests_total"]}


def test_counts_from_metrics():
    c = Counts.from_metrics(exposition(["t1", "t2"]))
    assert (c.server, c.client, c.lost, c.ticks) == (10 + 11 + 1, 10 + 11, 6, 42)
    assert c.by_tenant == {"t1": 10, "t2": 12}
    assert (c.checked, c.breaches) == (0, 0)
