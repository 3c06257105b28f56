"""The per-tenant families of /metrics written as text directly, byte for byte what
prometheus_client's encoders write for the same families (tests/unit/exporters/test_tenant_text.py
compares both on the same snapshots, plain text and OpenMetrics).

Why: with 10,000 tenants the per-tenant families are ~330,000 samples (~50 MB).  Built as
prometheus_client Metric objects and encoded by the library, one scrape took ~3 s of the daemon's
CPU (bench/scale.py), holding the GIL against the tick; written here, ~0.3 s.

Takes: the snapshot's rows and the latency bounds.  Gives: the samples of one family (the same
in the plain 0.0.4 and the OpenMetrics format) and its header in either; the caller takes the
headers' names, types and help from the families TenantCollector describes.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client.utils import floatToGoString

from tenantwatch.aggregation.records import TenantSideStats
from tenantwatch.kernel.records import STATUS_CLASSES, Side

# The families written here, by full family name (as TenantCollector describes them), and the
# part of a row they come from.
REQUESTS = {Side.SERVER: "tenantwatch_http_server_requests",
            Side.CLIENT: "tenantwatch_http_client_requests"}
DURATIONS = {Side.SERVER: "tenantwatch_http_server_request_duration_seconds",
             Side.CLIENT: "tenantwatch_http_client_request_duration_seconds"}
RECEIVED = "tenantwatch_http_server_received_bytes"
SENT = "tenantwatch_http_server_sent_bytes"
ACTIVE = "tenantwatch_connections_active"
OPENED = "tenantwatch_connections_opened"
CONN_DURATION = "tenantwatch_connection_duration_seconds"
CPU = "tenantwatch_cpu_seconds"
FAMILIES = frozenset((REQUESTS[Side.SERVER], DURATIONS[Side.SERVER], REQUESTS[Side.CLIENT],
                      DURATIONS[Side.CLIENT], RECEIVED, SENT, ACTIVE, OPENED, CONN_DURATION, CPU))


def label_value(v: str) -> str:
    """A label value escaped as both formats escape it (backslash, newline, double quote)."""
    if "\\" in v or "\n" in v or '"' in v:
        return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return v


def header(name: str, mtype: str, doc: str, openmetrics: bool) -> str:
    """The HELP and TYPE lines of a family as the library writes them."""
    if openmetrics:
        doc = doc.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
        return f"# HELP {name} {doc}\n# TYPE {name} {mtype}\n"
    shown = name + "_total" if mtype == "counter" else name
    doc = doc.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {shown} {doc}\n# TYPE {shown} {mtype}\n"


def _requests(name: str, row: TenantSideStats, t: str) -> str:
    by_class = row.requests_by_class
    return "".join([f'{name}_total{{status_class="{c}",tenant="{t}"}} '
                    f"{floatToGoString(by_class.get(c, 0))}\n" for c in STATUS_CLASSES])


def _durations(name: str, row: TenantSideStats, t: str, bounds: Sequence[str]) -> str:
    g = floatToGoString
    lines = [f'{name}_bucket{{le="{le}",tenant="{t}"}} {g(v)}\n'
             for le, v in zip(bounds, row.latency_buckets)]
    if float(bounds[0]) >= 0:  # as the library: no count and sum with a negative bound
        lines.append(f'{name}_count{{tenant="{t}"}} {g(row.latency_buckets[-1])}\n')
        lines.append(f'{name}_sum{{tenant="{t}"}} {g(row.latency_sum_seconds)}\n')
    return "".join(lines)


def family(name: str, rows: Sequence[TenantSideStats], bounds: Sequence[str],
           histogram_sides: frozenset[Side] = frozenset(Side)) -> str:
    """The samples (no header) of family ``name`` (one of FAMILIES), in the library's order.
    One family at a time: a scrape of 10k tenants holds ~50 MB of text, not twice that.  The
    library sorts each sample's labels by name: le, side and status_class come before tenant."""
    g = floatToGoString
    if name == CPU:
        cpu: dict[str, float] = {}
        for row in rows:
            cpu[row.tenant] = cpu.get(row.tenant, 0.0) + row.cpu_seconds
        return "".join([f'{CPU}_total{{tenant="{label_value(t)}"}} {g(v)}\n'
                        for t, v in sorted(cpu.items())])
    for side in Side:
        if name == REQUESTS[side]:
            return "".join([_requests(name, r, label_value(r.tenant))
                            for r in rows if r.side is side])
        if name == DURATIONS[side]:
            if side not in histogram_sides:
                return ""
            n = len(bounds)
            return "".join([_durations(name, r, label_value(r.tenant), bounds)
                            for r in rows if r.side is side and len(r.latency_buckets) == n])
    server = [r for r in rows if r.side is Side.SERVER]
    if name == RECEIVED:
        return "".join([f'{RECEIVED}_total{{tenant="{label_value(r.tenant)}"}} {g(r.rx_bytes)}\n'
                        for r in server])
    if name == SENT:
        return "".join([f'{SENT}_total{{tenant="{label_value(r.tenant)}"}} {g(r.tx_bytes)}\n'
                        for r in server])
    labels = [f'{{side="{r.side.value}",tenant="{label_value(r.tenant)}"}}' for r in rows]
    if name == ACTIVE:
        return "".join([f"{ACTIVE}{lb} {g(r.connections_active)}\n"
                        for lb, r in zip(labels, rows)])
    if name == OPENED:
        return "".join([f"{OPENED}_total{lb} {g(r.connections_opened)}\n"
                        for lb, r in zip(labels, rows)])
    if name == CONN_DURATION:
        return "".join([f"{CONN_DURATION}_count{lb} {g(r.connections_closed)}\n"
                        f"{CONN_DURATION}_sum{lb} {g(r.connection_seconds)}\n"
                        for lb, r in zip(labels, rows)])
    raise KeyError(name)
