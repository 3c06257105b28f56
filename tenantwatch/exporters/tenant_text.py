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

from collections.abc import Iterator, Sequence

from prometheus_client.utils import floatToGoString

from tenantwatch.aggregation.records import TenantSideStats
from tenantwatch.exporters import catalog
from tenantwatch.exporters.catalog import MetricSpec
from tenantwatch.kernel.records import STATUS_CLASSES, Side

# The families written here, by full family name (the catalog's, as TenantCollector describes
# them), and the part of a row they come from.
REQUESTS = {Side.SERVER: catalog.HTTP_SERVER_REQUESTS.name,
            Side.CLIENT: catalog.HTTP_CLIENT_REQUESTS.name}
DURATIONS = {Side.SERVER: catalog.HTTP_SERVER_REQUEST_DURATION.name,
             Side.CLIENT: catalog.HTTP_CLIENT_REQUEST_DURATION.name}
RECEIVED = catalog.HTTP_SERVER_RECEIVED_BYTES.name
SENT = catalog.HTTP_SERVER_SENT_BYTES.name
ACTIVE = catalog.CONNECTIONS_ACTIVE.name
OPENED = catalog.CONNECTIONS_OPENED.name
CONN_DURATION = catalog.CONNECTION_DURATION.name
CPU = catalog.CPU_SECONDS.name
# Rows written per piece of a family (family_pieces): a piece of the latency histogram of 512
# tenants is ~0.9 MB of text.  Written whole, that family (10k tenants on two sides) was a
# list of ~340,000 line strings, joined, then encoded: ~100 MB held for a 50 MB body.
ROWS_PER_PIECE = 512
FAMILIES = frozenset((REQUESTS[Side.SERVER], DURATIONS[Side.SERVER], REQUESTS[Side.CLIENT],
                      DURATIONS[Side.CLIENT], RECEIVED, SENT, ACTIVE, OPENED, CONN_DURATION, CPU))


def _line(spec: MetricSpec, suffix: str, first: str | None = None) -> tuple[str, ...]:
    """The fixed text of one sample line of ``spec``: its name with ``suffix`` and its label
    names (the catalog's, plus ``first``, e.g. le) in the library's order, sorted by name.  A
    line is then ``parts[0] + value + parts[1] + value ... + parts[-1] + sample value``, the
    label values in that order; the writer below gives the tenant last, which holds as long as
    the other label sorts before it (checked here, at import)."""
    names = sorted(spec.labels if first is None else (first, *spec.labels))
    if names[-1] != catalog.TENANT or len(names) > 2:
        raise ValueError(f"{spec.name}: the text writer expects at most one label before "
                         f"{catalog.TENANT!r}, not {names}")
    parts = [f'{spec.name}{suffix}{{{names[0]}="']
    parts += [f'",{n}="' for n in names[1:]]
    return (*parts, '"} ')


# Per family: the text around the label values of a sample line (_line).
_REQUESTS_LINE = {Side.SERVER: _line(catalog.HTTP_SERVER_REQUESTS, "_total"),
                  Side.CLIENT: _line(catalog.HTTP_CLIENT_REQUESTS, "_total")}
_BUCKET_LINE = {Side.SERVER: _line(catalog.HTTP_SERVER_REQUEST_DURATION, "_bucket", "le"),
                Side.CLIENT: _line(catalog.HTTP_CLIENT_REQUEST_DURATION, "_bucket", "le")}
_COUNT_LINE = {Side.SERVER: _line(catalog.HTTP_SERVER_REQUEST_DURATION, "_count"),
               Side.CLIENT: _line(catalog.HTTP_CLIENT_REQUEST_DURATION, "_count")}
_SUM_LINE = {Side.SERVER: _line(catalog.HTTP_SERVER_REQUEST_DURATION, "_sum"),
             Side.CLIENT: _line(catalog.HTTP_CLIENT_REQUEST_DURATION, "_sum")}
_RECEIVED_LINE = _line(catalog.HTTP_SERVER_RECEIVED_BYTES, "_total")
_SENT_LINE = _line(catalog.HTTP_SERVER_SENT_BYTES, "_total")
_ACTIVE_LINE = _line(catalog.CONNECTIONS_ACTIVE, "")
_OPENED_LINE = _line(catalog.CONNECTIONS_OPENED, "_total")
_CONN_COUNT_LINE = _line(catalog.CONNECTION_DURATION, "_count")
_CONN_SUM_LINE = _line(catalog.CONNECTION_DURATION, "_sum")
_CPU_LINE = _line(catalog.CPU_SECONDS, "_total")


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


def _requests(side: Side, row: TenantSideStats, t: str) -> str:
    a, b, c = _REQUESTS_LINE[side]
    by_class = row.requests_by_class
    return "".join([f"{a}{cls}{b}{t}{c}{floatToGoString(by_class.get(cls, 0))}\n"
                    for cls in STATUS_CLASSES])


def _durations(side: Side, row: TenantSideStats, t: str, bounds: Sequence[str]) -> str:
    g = floatToGoString
    a, b, c = _BUCKET_LINE[side]
    lines = [f"{a}{le}{b}{t}{c}{g(v)}\n" for le, v in zip(bounds, row.latency_buckets)]
    if float(bounds[0]) >= 0:  # as the library: no count and sum with a negative bound
        n0, n1 = _COUNT_LINE[side]
        s0, s1 = _SUM_LINE[side]
        lines.append(f"{n0}{t}{n1}{g(row.latency_buckets[-1])}\n")
        lines.append(f"{s0}{t}{s1}{g(row.latency_sum_seconds)}\n")
    return "".join(lines)


def family(name: str, rows: Sequence[TenantSideStats], bounds: Sequence[str],
           histogram_sides: frozenset[Side] = frozenset(Side)) -> str:
    """The samples (no header) of family ``name`` (one of FAMILIES), in the library's order.
    The library sorts each sample's labels by name: le, side and status_class come before
    tenant."""
    return "".join(family_pieces(name, rows, bounds, histogram_sides))


def family_pieces(name: str, rows: Sequence[TenantSideStats], bounds: Sequence[str],
                  histogram_sides: frozenset[Side] = frozenset(Side),
                  rows_per_piece: int | None = None) -> Iterator[str]:
    """family() in pieces of ``rows_per_piece`` rows (ROWS_PER_PIECE by default; the CPU
    family: tenants), for a caller that encodes and drops each piece: a scrape then holds its
    body once, as bytes."""
    if rows_per_piece is None:
        rows_per_piece = ROWS_PER_PIECE
    if rows_per_piece < 1:
        raise ValueError(f"rows_per_piece must be at least 1, got {rows_per_piece}")
    if name not in FAMILIES:
        raise KeyError(name)
    if name == CPU:
        cpu: dict[str, float] = {}
        for row in rows:
            cpu[row.tenant] = cpu.get(row.tenant, 0.0) + row.cpu_seconds
        items = sorted(cpu.items())
        for i in range(0, len(items), rows_per_piece):
            yield _cpu(items[i:i + rows_per_piece])
        return
    for i in range(0, len(rows), rows_per_piece):
        yield _rows(name, rows[i:i + rows_per_piece], bounds, histogram_sides)


def _cpu(items: Sequence[tuple[str, float]]) -> str:
    g = floatToGoString
    a, b = _CPU_LINE
    return "".join([f"{a}{label_value(t)}{b}{g(v)}\n" for t, v in items])


def _rows(name: str, rows: Sequence[TenantSideStats], bounds: Sequence[str],
          histogram_sides: frozenset[Side]) -> str:
    """The lines of family ``name`` (not CPU) for ``rows``."""
    g = floatToGoString
    for side in Side:
        if name == REQUESTS[side]:
            return "".join([_requests(side, r, label_value(r.tenant))
                            for r in rows if r.side is side])
        if name == DURATIONS[side]:
            if side not in histogram_sides:
                return ""
            n = len(bounds)
            return "".join([_durations(side, r, label_value(r.tenant), bounds)
                            for r in rows if r.side is side and len(r.latency_buckets) == n])
    server = [r for r in rows if r.side is Side.SERVER]
    if name == RECEIVED:
        a, b = _RECEIVED_LINE
        return "".join([f"{a}{label_value(r.tenant)}{b}{g(r.rx_bytes)}\n" for r in server])
    if name == SENT:
        a, b = _SENT_LINE
        return "".join([f"{a}{label_value(r.tenant)}{b}{g(r.tx_bytes)}\n" for r in server])
    if name == ACTIVE:
        a, b, c = _ACTIVE_LINE
        return "".join([f"{a}{r.side.value}{b}{label_value(r.tenant)}{c}"
                        f"{g(r.connections_active)}\n" for r in rows])
    if name == OPENED:
        a, b, c = _OPENED_LINE
        return "".join([f"{a}{r.side.value}{b}{label_value(r.tenant)}{c}"
                        f"{g(r.connections_opened)}\n" for r in rows])
    if name == CONN_DURATION:
        n0, n1, n2 = _CONN_COUNT_LINE
        s0, s1, s2 = _CONN_SUM_LINE
        return "".join([f"{n0}{r.side.value}{n1}{t}{n2}{g(r.connections_closed)}\n"
                        f"{s0}{r.side.value}{s1}{t}{s2}{g(r.connection_seconds)}\n"
                        for r in rows for t in (label_value(r.tenant),)])
    raise KeyError(name)
