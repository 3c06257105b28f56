"""The metric catalog: every metric family tenantwatch exports, once.

Each family is a ``MetricSpec``: its Prometheus name, kind, help text and label names, and how
it goes out over OTLP (instrument name, UCUM unit, description).  The collectors
(prometheus.py, detection.py, enforcement.py, isolation.py, power.py, registry.py,
self_metrics.py), the fast text writer (tenant_text.py) and the OTLP exporter (otel.py,
otel_points.py) take their names, help, labels and kinds from here; docs/metrics.md's table is
rendered from it (``render_table``), and tests/unit/exporters/test_catalog.py checks that every
family a collector gives is here and that README.md, docs/, dashboards/ and bench/ name only
families that are.

Regenerate docs/metrics.md's table after a change here::

    .venv/bin/python -m tenantwatch.exporters.catalog --write docs/metrics.md
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    SummaryMetricFamily,
)

Kind = Literal["counter", "gauge", "histogram", "summary"]

# The one high-cardinality label (docs/conventions.md).
TENANT = "tenant"


@dataclass(frozen=True)
class MetricSpec:
    """One metric family.

    ``name`` is the family name as prometheus_client takes it: a counter's without ``_total``
    (the library adds it to the sample).  ``kind`` is the Prometheus type on the wire
    (``tenantwatch_build_info`` is a gauge, as it always was).  ``unit`` is the UCUM unit of the
    values, as the OTLP instrument carries it ("" for none).  ``otel_name`` is the OTLP
    instrument's name (None: the family is not exported over OTLP); a counter goes out as a
    monotonic cumulative sum, a gauge as a gauge, a histogram as a histogram, with the
    description ``otel_help`` when it differs from ``help``.  ``scraped`` is False for the
    families only OTLP carries: their ``name`` is what the OTLP -> Prometheus translation makes
    of ``otel_name``.  ``doc`` is the "what it counts" cell of docs/metrics.md's table.
    """

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    unit: str = ""
    otel_name: str | None = None
    otel_help: str | None = None
    scraped: bool = True
    doc: str = ""

    @property
    def exposed(self) -> str:
        """The name a scrape shows on the HELP/TYPE lines of the 0.0.4 text format (a counter's
        with ``_total``) and docs/metrics.md lists."""
        return self.name + "_total" if self.kind == "counter" else self.name

    @property
    def otel_description(self) -> str:
        return self.help if self.otel_help is None else self.otel_help

    def series(self) -> tuple[str, ...]:
        """The sample names a PromQL query reads (no ``_created``)."""
        return {"counter": (self.name + "_total",),
                "gauge": (self.name,),
                "histogram": tuple(self.name + s for s in ("_bucket", "_sum", "_count")),
                "summary": (self.name + "_sum", self.name + "_count")}[self.kind]

    def samples(self) -> tuple[str, ...]:
        """Every name a scrape can show for the family: its series and ``_created`` (OpenMetrics;
        not for gauges)."""
        return self.series() + (() if self.kind == "gauge" else (self.name + "_created",))


_FAMILY_TYPES: Mapping[str, type] = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily,
                                     "histogram": HistogramMetricFamily,
                                     "summary": SummaryMetricFamily}


def family(spec: MetricSpec, labels: Sequence[str] | None = None) -> Any:
    """An empty prometheus_client family of ``spec``: a Counter-, Gauge-, Histogram- or
    SummaryMetricFamily as its kind says, with its name, help and labels (``labels`` instead of
    the catalog's when the caller names them: build_info's come from the caller)."""
    return _FAMILY_TYPES[spec.kind](spec.name, spec.help,
                                    labels=list(spec.labels if labels is None else labels))


# ------------------------------------------------------------------- HTTP, per tenant (Snapshot)

HTTP_SERVER_REQUESTS = MetricSpec(
    "tenantwatch_http_server_requests", "counter",
    "HTTP requests completed on the gateway's server side, by status class",
    (TENANT, "status_class"), "{request}", "tenantwatch.http.server.requests",
    doc="requests clients sent to the gateway. Counted when the response head is written "
        "(`1xx`..`5xx`), or as `none` when the connection closed first")
HTTP_SERVER_REQUEST_DURATION = MetricSpec(
    "tenantwatch_http_server_request_duration_seconds", "histogram",
    "Time from request head to response head on the gateway's server side",
    (TENANT,), "s", "tenantwatch.http.server.request.duration",
    "Request head -> response head time on the gateway's server side",
    doc="request head read → response head written, by the gateway. Buckets = "
        "`capture.latency_buckets`, counted exactly in the kernel")
HTTP_CLIENT_REQUESTS = MetricSpec(
    "tenantwatch_http_client_requests", "counter",
    "HTTP requests completed on the gateway's client side, by status class",
    (TENANT, "status_class"), "{request}", "tenantwatch.http.client.requests",
    doc="requests the gateway sent upstream, same rules")
HTTP_CLIENT_REQUEST_DURATION = MetricSpec(
    "tenantwatch_http_client_request_duration_seconds", "histogram",
    "Time from request head to response head on the gateway's client side",
    (TENANT,), "s", "tenantwatch.http.client.request.duration",
    "Request head -> response head time on the gateway's client side",
    doc="request head written → response head read, by the gateway (upstream latency as the "
        "gateway sees it)")
HTTP_SERVER_RECEIVED_BYTES = MetricSpec(
    "tenantwatch_http_server_received_bytes", "counter",
    "Bytes the gateway received from clients on server-side connections",
    (TENANT,), "By", "tenantwatch.http.server.received",
    doc="bytes the gateway read from clients (server side; heads and bodies)")
HTTP_SERVER_SENT_BYTES = MetricSpec(
    "tenantwatch_http_server_sent_bytes", "counter",
    "Bytes the gateway sent to clients on server-side connections",
    (TENANT,), "By", "tenantwatch.http.server.sent",
    doc="bytes the gateway wrote to clients (server side), `sendfile` included")

# ------------------------------------------------------------------- connections (Snapshot)

CONNECTIONS_ACTIVE = MetricSpec(
    "tenantwatch_connections_active", "gauge",
    "Connections open now, under the tenant of each one's first request",
    (TENANT, "side"), "{connection}", "tenantwatch.connections.active",
    "Connections open now (opened minus closed since start, at least 0)",
    doc="connections open now, under the tenant of each connection's first request: exact, "
        "also when a kernel table was full, and back to 0 when they close")
CONNECTIONS_OPENED = MetricSpec(
    "tenantwatch_connections_opened", "counter",
    "Connections opened (server: accepted by the gateway, client: opened by it)",
    (TENANT, "side"), "{connection}", "tenantwatch.connections.opened",
    doc="connections, counted when their first request head is seen")
CONNECTION_DURATION = MetricSpec(
    "tenantwatch_connection_duration_seconds", "summary",
    "Lifetimes of closed connections (count: connections closed), from accept/connect "
    "(or first sight, for one older than the daemon) to close; a WebSocket session's "
    "from its upgrade, under the upgrade's tenant",
    (TENANT, "side"), "s",  # OTLP: the two counters below
    doc="closed connections: `_count` how many, `_sum` their lifetimes, accept/connect (or first "
        "sight, for one older than the daemon) to close; a WebSocket session's from its upgrade, "
        "under the upgrade's tenant. A connection of an exited process ends at the sweep that "
        "finds it (up to 10 ticks late)")
# The summary over OTLP (the SDK has no observable summary): its _sum and _count as counters,
# under the names the OTLP -> Prometheus translation gives them (docs/opentelemetry.md).
CONNECTION_DURATION_SUM = MetricSpec(
    "tenantwatch_connection_duration_sum_seconds", "counter",
    "Summed lifetimes of closed connections (the Prometheus summary's _sum)",
    (TENANT, "side"), "s", "tenantwatch.connection.duration.sum", scraped=False)
CONNECTION_DURATION_COUNT = MetricSpec(
    "tenantwatch_connection_duration_count", "counter",
    "Connections closed (the Prometheus summary's _count)",
    (TENANT, "side"), "{connection}", "tenantwatch.connection.duration.count", scraped=False)

# ------------------------------------------------------------------- identity, kernel (Snapshot)

JWT_VERIFY = MetricSpec(
    "tenantwatch_jwt_verify", "counter",
    "Bearer tokens verified (each distinct token once per cache lifetime), by result",
    ("result",),
    doc="bearer tokens verified, each distinct token once per cache lifetime (`ok`, `malformed`, "
        "`bad_signature`, `expired`, `audience`, `issuer`, `claim`, ...: "
        "`tenantwatch/identity/jwt_verifier.py`); only with a keyed jwt source")
IDENTITY_REJECTED = MetricSpec(
    "tenantwatch_identity_rejected", "counter",
    "Requests whose identity value was rejected or folded, by reason",
    ("reason",), "{request}", "tenantwatch.identity.rejected",
    doc="request heads whose identity was folded into a reserved label (reasons: "
        "[docs/limits.md](limits.md#identity_rejected-reasons))")
EVENTS_LOST = MetricSpec(
    "tenantwatch_events_lost", "counter",
    "Kernel events or counts lost before reaching user space, by reason",
    ("reason",), "{event}", "tenantwatch.events.lost",
    doc="what the kernel could not track or count (reasons: "
        "[docs/limits.md](limits.md#events_lost-reasons))")
PROBE_ATTACHED = MetricSpec(
    "tenantwatch_probe_attached", "gauge",
    "1 when the probe is attached, 0 when it is not",
    ("probe",), "{probe}", "tenantwatch.probe.attached",
    doc="1 per attached tracepoint (`syscalls:sys_enter_read`, ...), 0 when it failed to attach")

# ------------------------------------------------------------------- CPU

CPU_SECONDS = MetricSpec(
    "tenantwatch_cpu_seconds", "counter",
    "Gateway CPU time charged to the tenant (on-CPU time of target threads while they "
    "worked on the tenant's requests; __unattributed__: no current request)",
    (TENANT,), "s", "tenantwatch.cpu",
    "Gateway CPU time charged to the tenant (__unattributed__: no current request)",
    doc="on-CPU time of gateway threads charged to the tenant whose request they were working "
        "on (the connection of the thread's latest parsed syscall); `__unattributed__` when a "
        "thread had no current request. Attributed + unattributed = the threads' CPU (tested "
        "against `thread_time()`, ±10%)")
BACKEND_CPU_SECONDS = MetricSpec(
    "tenantwatch_backend_cpu_seconds", "counter",
    "CPU time of the tenant's own backend cgroup (enforcement.cgroup), when it exists",
    (TENANT,), "s", "tenantwatch.backend.cpu",
    "CPU time of the tenant's own backend cgroup",
    doc="CPU time of the tenant's own backend cgroup: the `enforcement.cgroup` template with the "
        "tenant filled in, when that directory exists (v2 `cpu.stat usage_usec`; v1 "
        "`cpuacct.usage`). Only admitted tenant labels, not the default tenant or reserved "
        "labels")
BACKEND_CPU_THROTTLED_SECONDS = MetricSpec(
    "tenantwatch_backend_cpu_throttled_seconds", "counter",
    "Time the tenant's own backend cgroup was throttled by its CPU limit",
    (TENANT,), "s", "tenantwatch.backend.cpu.throttled",
    "Time the tenant's backend cgroup was throttled by its CPU limit",
    doc="time that cgroup was throttled by its CPU limit (v2 `cpu.stat throttled_usec`; v1 "
        "`cpu.stat throttled_time`)")

# ------------------------------------------------------------------- detection (detection.py)

TENANT_CPU_SHARE = MetricSpec(
    "tenantwatch_tenant_cpu_share", "gauge",
    "Tenant's share of the gateway CPU over the detection window (0..1)",
    (TENANT,), "", "tenantwatch.tenant.cpu.share",
    doc="the tenant's share of the CPU charged to all labels over the detection window (0..1): "
        "gateway CPU plus backend cgroup CPU. Reserved labels included")
NOISY_NEIGHBOUR = MetricSpec(
    "tenantwatch_noisy_neighbour", "gauge",
    "1 while the tenant is flagged as a noisy neighbour",
    (TENANT,), "", "tenantwatch.noisy.neighbour",
    doc="1 while the tenant is flagged ([docs/detection.md](detection.md))")
HOTSPOT = MetricSpec(
    "tenantwatch_hotspot", "gauge",
    "1 while a CPU or gateway worker is saturated mostly by one tenant",
    ("kind", "id", TENANT), "", "tenantwatch.hotspot",
    doc="1 while a CPU (`kind=\"cpu\"`) or gateway worker (`kind=\"worker\"`, id = pid) is "
        "saturated mostly by one tenant")

# ------------------------------------------------------------------- enforcement (enforcement.py)

CPU_CAP_CORES = MetricSpec(
    "tenantwatch_cpu_cap_cores", "gauge",
    "CPU cap in force on the tenant's cgroup, in cores",
    (TENANT,), "", "tenantwatch.cpu.cap.cores",
    doc="the CPU cap in force on the tenant's cgroup, in cores. Only caps written in `enforce` "
        "mode; dry-run's would-be caps are in `/api/v1/caps`")
ENFORCEMENT_ACTIONS = MetricSpec(
    "tenantwatch_enforcement_actions", "counter",
    "Enforcement decisions carried out (enforce) or logged as would-do (dry-run)",
    (TENANT, "action", "mode"), "", "tenantwatch.enforcement.actions",
    doc="enforcement actions: `cap`, `step_down`, `renew`, `release`, and `adopt`, `restore`, "
        "`keep` at start and stop. In `dry-run` they are decided and audited but not written "
        "(`mode=\"dry-run\"`)")

# ------------------------------------------------------------------- tenant registry (registry.py)

REGISTRY_TENANTS = MetricSpec(
    "tenantwatch_registry_tenants", "gauge",
    "Tenants in the registry in use (all, and active)",
    ("state",), "", "tenantwatch.registry.tenants",
    doc="tenants in the registry in use, `state` `all` or `active` (`tenancy.registry`, "
        "[docs/config.md](config.md#tenancyregistry))")
REGISTRY_STALE = MetricSpec(
    "tenantwatch_registry_stale", "gauge",
    "1 while the registry in use is not from the latest read "
    "(Redis unreachable: the last good one, or its backup)",
    (), "", "tenantwatch.registry.stale",
    doc="1 while the registry in use is not from the latest read (Redis unreachable)")
REGISTRY_AGE_SECONDS = MetricSpec(
    "tenantwatch_registry_age_seconds", "gauge",
    "Seconds since the registry in use was read from Redis",
    (), "s", "tenantwatch.registry.age",
    doc="since the registry in use was read from Redis")
REGISTRY_READ_FAILURES = MetricSpec(
    "tenantwatch_registry_read_failures", "counter",
    "Reads of the registry from Redis that failed",
    (), "", "tenantwatch.registry.read.failures",
    doc="reads of the registry that failed")

# ------------------------------------------------------------------- isolation (isolation.py)

ISOLATION_BREACHES = MetricSpec(
    "tenantwatch_isolation_breaches", "counter",
    "Responses whose served-tenant header named another tenant than the trusted "
    "identity of the request they answered (tenancy.response_check)",
    (TENANT, "served", "side"), "", "tenantwatch.isolation.breaches",
    doc="responses whose served-tenant header named another tenant than their request's "
        "(`tenancy.response_check`, [docs/isolation.md](isolation.md))")
ISOLATION_RESPONSES_CHECKED = MetricSpec(
    "tenantwatch_isolation_responses_checked", "counter",
    "Responses compared with their request's identity (breaches included)",
    ("side",), "", "tenantwatch.isolation.responses.checked",
    doc="responses compared with their request's trusted tenant")
ISOLATION_RESPONSES_UNCHECKED = MetricSpec(
    "tenantwatch_isolation_responses_unchecked", "counter",
    "Responses on a checked side that were not compared, by reason: no_header (no "
    "served-tenant header), request_identity (the request had no clean trusted "
    "identity), malformed (the header was repeated, folded, too long or had a "
    "control byte)",
    ("side", "reason"), "", "tenantwatch.isolation.responses.unchecked",
    doc="responses on a checked side not compared (`no_header`, `request_identity`, "
        "`malformed`)")

# ------------------------------------------------------------------- enforcement refusals

ENFORCEMENT_REFUSALS = MetricSpec(
    "tenantwatch_enforcement_refusals", "counter",
    "Caps refused, by reason (untrusted identity, gateway in the cgroup, ...)",
    ("reason",), "", "tenantwatch.enforcement.refusals",
    doc="caps refused, by reason (`untrusted`, `reserved`, `lost_events`, `gateway_in_cgroup`, "
        "...: [docs/enforcement.md](enforcement.md#refusals)). A refusal repeated on consecutive "
        "ticks counts once")

# ------------------------------------------------------------------- node (Snapshot, power.py)

RUNQUEUE_DELAY = MetricSpec(
    "tenantwatch_runqueue_delay_seconds", "histogram",
    "Time gateway threads waited in the run queue between wakeup and running",
    (), "s", "tenantwatch.runqueue.delay",
    "Wakeup -> running delay of gateway threads",
    doc="wakeup → running delay of gateway threads (bounds: powers of 4 from 1 µs to ~1 s)")
NODE_CPU_PRESSURE = MetricSpec(
    "tenantwatch_node_cpu_pressure_ratio", "gauge",
    "Share of time some task waited for CPU over the last 10 s (PSI some avg10 / 100)",
    (), "1", "tenantwatch.node.cpu.pressure",
    doc="PSI `/proc/pressure/cpu` \"some avg10\" / 100, when the kernel has PSI")
TENANT_ENERGY = MetricSpec(
    "tenantwatch_tenant_energy_joules", "counter",
    "Node energy charged to the tenant: each tick's node energy (RAPL, or the "
    "configured power model) times the tenant's share of the node's busy CPU time",
    (TENANT,), "J", "tenantwatch.tenant.energy",
    doc="the node's energy charged to the tenant: each tick's node energy times the tenant's "
        "share of the node's busy CPU time ([docs/fleet.md](fleet.md#power-and-heat)); only "
        "when the node has RAPL or `power` is configured")
NODE_POWER = MetricSpec(
    "tenantwatch_node_power_watts", "gauge",
    "The node's power over the last tick, by source: rapl (measured) or model "
    "(power.idle_watts + utilisation x (power.max_watts - idle))",
    ("source",), "W", "tenantwatch.node.power",
    doc="the node's power over the last tick: `rapl` (measured) or `model` "
        "(`power.idle_watts`, `power.max_watts`)")
NODE_TEMPERATURE = MetricSpec(
    "tenantwatch_node_temperature_celsius", "gauge",
    "Thermal zone and hwmon temperatures of the node, by sensor",
    ("sensor",), "Cel", "tenantwatch.node.temperature",
    doc="thermal zones and hwmon inputs, when the machine has them; hotspot evidence cites them")

# ------------------------------------------------------------------- the daemon itself

TARGETS = MetricSpec(
    "tenantwatch_targets", "gauge", "Gateway processes traced now",
    (), "{process}", "tenantwatch.targets",
    doc="gateway processes traced now")
TICKS = MetricSpec(
    "tenantwatch_ticks", "counter", "Aggregation ticks completed since start",
    (), "{tick}", "tenantwatch.ticks",
    doc="aggregation ticks completed")
STAGE_ERRORS = MetricSpec(
    "tenantwatch_stage_errors", "counter",
    "Tick stages that raised (logged with the traceback); the tick went on without them",
    ("stage",), "", "tenantwatch.stage.errors",
    doc="tick stages that raised (`drain`, `http2`, `aggregate`, `isolation`, `spans`, `power`, "
        "`detect`, `enforce`), each logged with its traceback; the tick goes on without them and "
        "skips the stages that would act on a missing result "
        "([docs/operations.md](operations.md#a-failing-tick-stage))")
TICK_DURATION = MetricSpec(
    "tenantwatch_tick_duration_seconds", "histogram",
    "Time one tick took: kernel drain, identity resolution, aggregation, detection and "
    "enforcement",
    (), "s",
    doc="time one tick took (drain, resolve, aggregate, detect, enforce); alert "
        "`TenantwatchTickSlow`")
KERNEL_TABLE_ENTRIES = MetricSpec(
    "tenantwatch_kernel_table_entries", "gauge",
    "Entries in a kernel table: connections now; identities, cpu and closes as the last "
    "tick used them (docs/limits.md)",
    ("table",), "{entry}", "tenantwatch.kernel.table.entries",
    "Entries in each kernel table at the last tick",
    doc="entries in a kernel table: `connections` now; `identities`, `cpu`, `closes` as the last "
        "tick used them ([docs/limits.md](limits.md)); alert `TenantwatchKernelTableFull`")
KERNEL_TABLE_CAPACITY = MetricSpec(
    "tenantwatch_kernel_table_capacity", "gauge",
    "Entries a kernel table holds (capture.max_connections, capture.max_identities)",
    ("table",), "{entry}", "tenantwatch.kernel.table.capacity",
    "Capacity of each kernel table",
    doc="what that table holds (`capture.max_connections`, `capture.max_identities`, derived "
        "sizes)")
BUILD_INFO = MetricSpec(
    "tenantwatch_build_info", "gauge", "tenantwatch build; the value is always 1",
    ("version", "kernel"),  # over OTLP: resource attributes (docs/opentelemetry.md)
    doc="always 1")

# Every family, in docs/metrics.md's order.
METRICS: tuple[MetricSpec, ...] = (
    HTTP_SERVER_REQUESTS, HTTP_SERVER_REQUEST_DURATION, HTTP_CLIENT_REQUESTS,
    HTTP_CLIENT_REQUEST_DURATION, HTTP_SERVER_RECEIVED_BYTES, HTTP_SERVER_SENT_BYTES,
    CONNECTIONS_ACTIVE, CONNECTIONS_OPENED, CONNECTION_DURATION, CONNECTION_DURATION_SUM,
    CONNECTION_DURATION_COUNT, JWT_VERIFY, IDENTITY_REJECTED, EVENTS_LOST, PROBE_ATTACHED,
    CPU_SECONDS, BACKEND_CPU_SECONDS, BACKEND_CPU_THROTTLED_SECONDS, TENANT_CPU_SHARE,
    NOISY_NEIGHBOUR, HOTSPOT, CPU_CAP_CORES, ENFORCEMENT_ACTIONS, REGISTRY_TENANTS,
    REGISTRY_STALE, REGISTRY_AGE_SECONDS, REGISTRY_READ_FAILURES, ISOLATION_BREACHES,
    ISOLATION_RESPONSES_CHECKED, ISOLATION_RESPONSES_UNCHECKED, ENFORCEMENT_REFUSALS,
    RUNQUEUE_DELAY, NODE_CPU_PRESSURE, TENANT_ENERGY, NODE_POWER, NODE_TEMPERATURE, TARGETS,
    TICKS, STAGE_ERRORS, TICK_DURATION, KERNEL_TABLE_ENTRIES, KERNEL_TABLE_CAPACITY, BUILD_INFO,
)
BY_NAME: Mapping[str, MetricSpec] = {m.name: m for m in METRICS}
if len(BY_NAME) != len(METRICS):
    raise ValueError("two catalog entries share a name")


# ------------------------------------------------------------------- docs/metrics.md

TABLE_BEGIN = ("<!-- metric table: generated from tenantwatch/exporters/catalog.py; "
               "regenerate with `.venv/bin/python -m tenantwatch.exporters.catalog --write "
               "docs/metrics.md` -->")
TABLE_END = "<!-- end of the generated metric table -->"
# The Prometheus client's own process collector, registered by the daemon: on /metrics, not ours.
PROCESS_ROW = ("| `process_cpu_seconds_total`, `process_resident_memory_bytes`, "
               "`process_open_fds`, ... | | | the daemon's own process (the Prometheus client's "
               "standard process collector) |")
_TYPE_CELL: Mapping[str, str] = {"summary": "summary (`_sum`, `_count`)"}


def render_table(specs: Iterable[MetricSpec] = METRICS) -> str:
    """docs/metrics.md's table of the families on /metrics (the OTLP-only ones are in
    docs/opentelemetry.md), without the markers around it."""
    rows = ["| metric | type | labels | what it counts |", "|---|---|---|---|"]
    for m in specs:
        if not m.scraped:
            continue
        cells = (f"`{m.exposed}`", _TYPE_CELL.get(m.kind, m.kind), ", ".join(m.labels), m.doc)
        rows.append(" ".join(("|", " | ".join(cells), "|")).replace("|  |", "| |"))
    rows.append(PROCESS_ROW)
    return "\n".join(rows) + "\n"


def replace_table(text: str, table: str | None = None) -> str:
    """``text`` (docs/metrics.md) with the part between TABLE_BEGIN and TABLE_END rendered anew."""
    head, sep, rest = text.partition(TABLE_BEGIN)
    _, sep2, tail = rest.partition(TABLE_END)
    if not sep or not sep2:
        raise ValueError(f"no {TABLE_BEGIN!r} ... {TABLE_END!r} section")
    # blank lines around the table: a Markdown table ends at a blank line, not at a comment
    return "".join((head, sep, "\n\n", render_table() if table is None else table, "\n",
                    sep2, tail))


def main(argv: Sequence[str]) -> int:
    """No argument: print the table.  ``--write PATH``: rewrite its section of PATH."""
    if not argv:
        sys.stdout.write(render_table())
        return 0
    if len(argv) == 2 and argv[0] == "--write":
        path = Path(argv[1])
        path.write_text(replace_table(path.read_text()))
        return 0
    sys.stderr.write("usage: python -m tenantwatch.exporters.catalog [--write docs/metrics.md]\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
