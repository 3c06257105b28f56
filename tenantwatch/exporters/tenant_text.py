"""The per-tenant families of /metrics written as text directly, byte for byte what
prometheus_client's encoders write for the same families (tests/unit/exporters/test_tenant_text.py
compares both on the same snapshots, plain text and OpenMetrics).

Why: with 10,000 tenants the per-tenant families are ~330,000 samples (~50 MB).  Built as
prometheus_client Metric objects and encoded by the library, one scrape took ~3 s of the daemon's
CPU (bench/scale.py), holding the GIL against the tick; written here, ~0.3 s.

Takes: the snapshot's rows and the latency bounds.  Gives: the text of one family (header and
samples) in the plain (0.0.4) or the OpenMetrics format; the caller writes the headers' names,
types and help from the families TenantCollector describes.
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
ROW_FAMILIES = (REQUESTS[Side.SERVER], DURATIONS[Side.SERVER], REQUESTS[Side.CLIENT],
                DURATIONS[Side.CLIENT], RECEIVED, SENT, ACTIVE, OPENED, CONN_DURATION)
FAMILIES = frozenset(ROW_FAMILIES + (CPU,))


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


def _row_lines(row: TenantSideStats, bounds: Sequence[str],
               histogram_sides: frozenset[Side] = frozenset(Side)) -> dict[str, str]:
    """The sample lines of one (tenant, side) row, by family name (families it is not in are
    absent).  The library sorts each sample's labels by name: le, side and status_class all
    come before tenant."""
    g = floatToGoString
    t = label_value(row.tenant)
    side = row.side.value
    out: dict[str, str] = {}
    name = REQUESTS[row.side]
    by_class = row.requests_by_class
    out[name] = "".join(f'{name}_total{{status_class="{c}",tenant="{t}"}} '
                        f"{g(by_class.get(c, 0))}\n" for c in STATUS_CLASSES)
    if len(row.latency_buckets) == len(bounds) and row.side in histogram_sides:
        name = DURATIONS[row.side]
        lines = [f'{name}_bucket{{le="{le}",tenant="{t}"}} {g(v)}\n'
                 for le, v in zip(bounds, row.latency_buckets)]
        if float(bounds[0]) >= 0:  # as the library: no count and sum with a negative bound
            lines.append(f'{name}_count{{tenant="{t}"}} {g(row.latency_buckets[-1])}\n')
            lines.append(f'{name}_sum{{tenant="{t}"}} {g(row.latency_sum_seconds)}\n')
        out[name] = "".join(lines)
    if row.side is Side.SERVER:
        out[RECEIVED] = f'{RECEIVED}_total{{tenant="{t}"}} {g(row.rx_bytes)}\n'
        out[SENT] = f'{SENT}_total{{tenant="{t}"}} {g(row.tx_bytes)}\n'
    labels = f'{{side="{side}",tenant="{t}"}}'
    out[ACTIVE] = f"{ACTIVE}{labels} {g(row.connections_active)}\n"
    out[OPENED] = f"{OPENED}_total{labels} {g(row.connections_opened)}\n"
    out[CONN_DURATION] = (f"{CONN_DURATION}_count{labels} {g(row.connections_closed)}\n"
                          f"{CONN_DURATION}_sum{labels} {g(row.connection_seconds)}\n")
    return out


def families(rows: Sequence[TenantSideStats], bounds: Sequence[str],
             histogram_sides: frozenset[Side] = frozenset(Side)) -> dict[str, str]:
    """The samples (no header) of every family in FAMILIES, in the library's order.  Nothing is
    kept between scrapes: kept, the formatted rows of 10k tenants took ~50 MB (bench/scale.py),
    a scrape formats them again in ~0.3 s."""
    bounds = tuple(bounds)
    per_row = [_row_lines(row, bounds, histogram_sides) for row in rows]
    out = {name: "".join([lines.get(name, "") for lines in per_row]) for name in ROW_FAMILIES}
    del per_row
    cpu: dict[str, float] = {}
    for row in rows:
        cpu[row.tenant] = cpu.get(row.tenant, 0.0) + row.cpu_seconds
    out[CPU] = "".join([f'{CPU}_total{{tenant="{label_value(t)}"}} {floatToGoString(v)}\n'
                        for t, v in sorted(cpu.items())])
    return out
