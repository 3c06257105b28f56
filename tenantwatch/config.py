"""Configuration: a YAML file plus ``TENANTWATCH_*`` variables -> one frozen, validated Config.

Takes the parsed YAML (``parse_config``) or a path (``load_config``) and the environment; gives a
``Config`` of frozen dataclasses, or raises ``ConfigError(field, message)`` where ``field`` is the
dotted path of the offending key (``tenancy.sources[2].side``), the environment variable, or
``<file>`` for an unreadable, empty or malformed file.  Every key and variable is read here.

Keys [default]:

  web_config_file   TLS and basic auth of the endpoints: a Prometheus exporter-toolkit web
                    config file (tls_server_config, bcrypt basic_auth_users) [none]
  listen            host:port serving /metrics /healthz /readyz /api/v1/* ["127.0.0.1:9477"];
                    IPv6 in brackets ("[::1]:9477"); 0.0.0.0 or [::] for all interfaces
  log_format        text | json | logfmt ["text"]
  log_level         debug | info | warning | error | critical ["info"]
  targets           required, 1..MAX_TARGETS of:
    - process       process name (comm, 1..15 bytes); all matching processes, new ones too
      name          label of the target [the process name]
  tenancy:
    sources         tried in order, first hit wins; at most MAX_SOURCES
                    [[{header: X-Tenant-ID, side: server}]]; each has exactly one of
      header: NAME      a request header (RFC 7230 token, <= MAX_HEADER_NAME chars, any case)
      host: TEMPLATE    the Host header, e.g. "{tenant}.api.example.com"; an optional :port and a
                        trailing dot are tolerated
      jwt: {...}        claim of the bearer token in Authorization: claim [tenant_id]; keys from
                        at most one of jwks_file, jwks_url (refetched every
                        jwks_refresh_seconds, 10..86400 [300]) or pem_file; algorithms (one
                        family: RS*/PS*, ES*, EdDSA or HS*; HS* only from a JWKS oct key)
                        [[RS256]], audience, issuer (exact match), leeway_seconds 0..3600 [0].
                        With keys the token is verified and its claim is trusted; without any
                        key source the claim is read unverified and stays claimed
      and optionally
      side          server (connections the target accepted) | client (ones it opened) [both]
      trusted       header sources only: the gateway wrote the value after validating the
                    caller [false]; a jwt becomes trusted only once its signature verifies
    pattern         regex a tenant must fully match ["^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"]; it
                    must not match the reserved labels (__other__ ...)
    tenants         allow-list; empty means any value matching the pattern [[]]
    max_tenants     distinct tenant labels, 1..100000 [1000]; more go to __other__
    default         tenant of requests with no identity; null -> __unattributed__ ["common"]
    idle_seconds    a tenant unseen this long frees its slot, 1..604800 [300]
    response_check  optional (docs/isolation.md): compare each response's served-tenant header
                    with the trusted identity of the request it answers
      header            the response header naming the tenant served (a header name)
      side              client | server | both: whose responses are checked [client]
      events_per_second breach events sent per CPU, 1..10000 [20]; counts are exact anyway
  enforcement:
    mode            off | dry-run | enforce ["dry-run"]
    cgroup          cgroup path template containing {tenant}
                    ["/sys/fs/cgroup/tenants.slice/tenant-{tenant}.slice"]
  capture:
    latency_buckets histogram upper bounds in seconds, strictly increasing, <= MAX_LATENCY_BUCKETS
                    [DEFAULT_LATENCY_BUCKETS]
    tick_seconds    how often the kernel aggregates are read, 0.1..60 [1]
    max_connections sockets tracked in the kernel, 1024..1048576 [65536]
    rescan_seconds  how often /proc is scanned for new target processes, 0.1..3600 [1]
    slow_request_seconds  requests at least this slow are sent to user space as events
                    (trace spans), 0 = never, 0..3600 [0.5]
    slow_requests_per_second  rate limit of those events per CPU, 1..100000 [20]
    tls             HTTP inside TLS through uprobes on the targets' libssl (SSL_read,
                    SSL_write and their _ex forms) [true]
    tokens_per_second  new bearer tokens (jwt sources) sent to user space per CPU,
                    1..100000 [100]
    h2_budget_ms_per_tick  CPU time HTTP/2 decoding may take per tick, 1..60000 [250]; beyond
                    it the costliest connections are shed (docs/http2.md)
    max_identities  distinct identities the kernel counts per tick, both sides together,
                    1024..262144 and at least 2 x tenancy.max_tenants + 16
                    [2 x tenancy.max_tenants + 2048, at least 4096]; more fold
                    into __other__ (events_lost{reason="identity_map_full"}).  Kernel memory:
                    two maps of ~530 B an entry (docs/limits.md)
  detection:        noisy-neighbour and hotspot rules: see docs/detection.md
  metrics:          what /metrics carries per tenant
    histograms      sides whose per-tenant latency histograms are exported, a list of server
                    and client [[server, client]]; [] exports none.  Each is 19 series per
                    tenant with the default buckets, ~60 % of a tenant's series
                    (docs/performance.md, "The node at full size")
  power:            energy per tenant (docs/fleet.md, "Power and heat"): RAPL when readable,
                    else this linear model of the node, else no energy is exported
    idle_watts      the node's power at idle, 0..100000 [null]
    max_watts       its power at full CPU load, idle_watts..100000 [null]; both or neither
  otel:             OpenTelemetry export, off unless an endpoint is given here or in
                    OTEL_EXPORTER_OTLP_(METRICS_|TRACES_)ENDPOINT (docs/opentelemetry.md)
    endpoint        base URL of an OTLP/HTTP receiver, e.g. http://collector:4318 [null]
    interval_seconds metrics export interval, 0.1..3600 [10]
    resource_attributes  extra resource attributes {str: str} [{}]

Environment (wins over the file; an empty value counts as unset):

  TENANTWATCH_CONFIG            config path when none is given [DEFAULT_CONFIG_PATH]
  TENANTWATCH_LISTEN            listen
  TENANTWATCH_LOG_FORMAT        log_format
  TENANTWATCH_LOG_LEVEL         log_level
  TENANTWATCH_ENFORCEMENT_MODE  enforcement.mode
  TENANTWATCH_MAX_TENANTS       tenancy.max_tenants
  TENANTWATCH_TICK_SECONDS      capture.tick_seconds
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable

import yaml

from tenantwatch.checks import int_in_range as _int
from tenantwatch.checks import type_name as _type_name
from tenantwatch.detection.settings import DetectionSettings, parse_detection
from tenantwatch.errors import ConfigError
from tenantwatch.identity.records import RESERVED_LABELS
from tenantwatch.kernel.records import Side
from tenantwatch.logs import LOG_FORMATS  # one list, shared with the CLI

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = "/etc/tenantwatch/tenantwatch.yaml"
# Prometheus-style bounds from 100 us to 10 s: gateway latencies span these four decades.
DEFAULT_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
)
MAX_SOURCES = 8  # the kernel keeps one slot per source (TW_MAX_SOURCES in bpf/include/tw_abi.h)
MAX_HEADER_NAME = 32  # header names compared in the kernel (TW_NAME_MAX)
MAX_LATENCY_BUCKETS = 24  # TW_MAX_BUCKETS: the kernel's histogram array has this many slots
MAX_COMM = 15  # TASK_COMM_LEN - 1: the kernel truncates process names to this
MAX_TARGETS = 8  # TW_MAX_COMMS: process names the kernel matches on exec
# Each tenant costs ~50 series (2 sides x (6 status classes + 18 histogram series) + gauges):
# 100k tenants is ~5M series, already more than one Prometheus server holds comfortably.
MAX_TENANTS_LIMIT = 100_000
# capture.max_identities: the kernel's aggregate maps (two, preallocated, ~530 B an entry with
# the default histogram, docs/limits.md).  The default covers every admitted tenant on both
# sides plus a tick's junk values; the limit keeps the maps under ~300 MB of kernel memory.
MIN_DEFAULT_IDENTITIES = 4096
JUNK_IDENTITIES = 2048
# the kernel's own entries beside the tenants: overflow and collision entries, requests with no
# identity, the default tenant, flagged values (per side), with room
RESERVED_IDENTITIES = 16
MAX_IDENTITIES_LIMIT = 262_144

DEFAULT_LISTEN = "127.0.0.1:9477"
DEFAULT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"
DEFAULT_CGROUP = "/sys/fs/cgroup/tenants.slice/tenant-{tenant}.slice"
DEFAULT_TENANT = "common"
ENFORCEMENT_MODES = ("off", "dry-run", "enforce")

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
JWT_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
    "HS256", "HS384", "HS512",
)  # never "none"

ENV_CONFIG = "TENANTWATCH_CONFIG"
ENV_LISTEN = "TENANTWATCH_LISTEN"
ENV_LOG_FORMAT = "TENANTWATCH_LOG_FORMAT"
ENV_LOG_LEVEL = "TENANTWATCH_LOG_LEVEL"
ENV_ENFORCEMENT_MODE = "TENANTWATCH_ENFORCEMENT_MODE"
ENV_MAX_TENANTS = "TENANTWATCH_MAX_TENANTS"
ENV_TICK_SECONDS = "TENANTWATCH_TICK_SECONDS"
ENV_VARS = (
    ENV_CONFIG, ENV_LISTEN, ENV_LOG_FORMAT, ENV_LOG_LEVEL, ENV_ENFORCEMENT_MODE, ENV_MAX_TENANTS,
    ENV_TICK_SECONDS,
    "TENANTWATCH_BPF_DIR",  # read by kernel/loader.py: where bpf/*.c live
)

_RESERVED = RESERVED_LABELS
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 7230 token (a header field name)
_HOST_LITERAL = re.compile(r"[A-Za-z0-9.-]*")
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")
_PORT = re.compile(r"[0-9]{1,5}")
_TARGET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


@dataclass(frozen=True)
class Target:
    """A process name to trace; every process with that comm, including ones started later."""

    name: str
    process: str


@dataclass(frozen=True)
class Source:
    """One identity source; ``header`` is the lowercase header name the kernel matches."""

    kind: str  # "header" | "host" | "jwt"
    header: str  # the header for kind=header, "host" for host, "authorization" for jwt
    side: Side | None  # None = both sides
    trusted: bool  # only header sources can be trusted by configuration
    host_template: str | None = None  # kind=host: e.g. "{tenant}.api.example.com"
    jwt: Mapping[str, Any] | None = None  # kind=jwt: claim, jwks_file, algorithms ...

    def host_regex(self) -> re.Pattern[str]:
        """Compiled Host matcher: case-insensitive, anchored, optional :port; group "tenant"."""
        if self.host_template is None:
            raise ValueError(f"a {self.kind} source has no host template")
        return _host_regex(self.host_template)


@dataclass(frozen=True)
class Registry:
    """Known tenants from Redis (identity/registry.py, docs/config.md#registry)."""

    redis: str  # redis://[:password@]host:port/db, rediss:// or unix://
    key: str = "tenant:config:{tenant}"
    refresh_seconds: float = 10.0
    backup_file: str = "/var/lib/tenantwatch/registry.json"
    max_entries: int = 100_000
    timeout_seconds: float = 2.0


@dataclass(frozen=True)
class ResponseCheck:
    """The response-side tenant check (docs/isolation.md)."""

    header: str  # lowercase response header naming the tenant a response served
    sides: tuple[Side, ...] = (Side.CLIENT,)
    events_per_second: int = 20  # per CPU


@dataclass(frozen=True)
class Tenancy:
    """How identity values become tenant labels, and the bounds on them."""

    sources: tuple[Source, ...]
    pattern: str
    tenants: tuple[str, ...]
    max_tenants: int
    default: str | None
    idle_seconds: float = 300.0
    registry: Registry | None = None
    response_check: ResponseCheck | None = None


@dataclass(frozen=True)
class Enforcement:
    """Whether, where and how CPU caps are applied (docs/enforcement.md).

    ``root`` is the directory every mapped cgroup must resolve strictly below; empty means the
    template's directory before {tenant}.  Amounts are in cores.  ``placement`` is an
    enforcement.settings.Placement or None.
    """

    mode: str  # off | dry-run | enforce
    cgroup: str  # path template containing {tenant}
    root: str = ""
    floor: float = 0.1
    max_step: float = 0.5
    cooldown_seconds: float = 30.0
    calm_seconds: float = 60.0
    lease_ttl_seconds: float = 120.0
    keep_on_exit: bool = False
    state_file: str = "/var/lib/tenantwatch/caps.json"
    audit_log: str = "/var/lib/tenantwatch/audit.jsonl"
    # while this file exists, every cap is released and none is made (docs/enforcement.md)
    kill_switch: str = "/var/lib/tenantwatch/enforcement-off"
    quotas: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    placement: Any = None

    def __post_init__(self) -> None:
        if not self.root:
            prefix = self.cgroup.split("{tenant}", 1)[0]
            object.__setattr__(self, "root", os.path.dirname(prefix) or "/")


@dataclass(frozen=True)
class Capture:
    """Kernel-side capture settings."""

    latency_buckets: tuple[float, ...]
    tick_seconds: float = 1.0
    max_connections: int = 65536
    rescan_seconds: float = 1.0
    slow_request_seconds: float = 0.5  # requests at least this slow become trace spans; 0: off
    slow_requests_per_second: int = 20  # per CPU; the rest is counted (slow_rate_limited)
    tls: bool = True  # uprobes on the targets' libssl
    tokens_per_second: int = 100  # per CPU; the rest is counted (token_rate_limited)
    h2_budget_ms_per_tick: float = 250.0  # HTTP/2 decoding per tick; beyond: connections shed
    # distinct identities per tick in the kernel (both sides); derived from max_tenants
    max_identities: int = 4096


@dataclass(frozen=True)
class Otel:
    """OpenTelemetry export (off unless an endpoint is set here or in OTEL_EXPORTER_OTLP_*)."""

    endpoint: str | None = None
    interval_seconds: float = 10.0
    resource_attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Metrics:
    """What /metrics carries per tenant (the kernel counts the same either way)."""

    # sides whose per-tenant latency histograms are exported; the others keep their request
    # counters (the JSON API, OTLP and detection still have the histograms)
    histogram_sides: tuple[str, ...] = ("server", "client")


@dataclass(frozen=True)
class Power:
    """The node's power model, used when RAPL cannot be read (aggregation/power.py)."""

    idle_watts: float | None = None
    max_watts: float | None = None


@dataclass(frozen=True)
class Config:
    """The whole validated configuration."""

    listen: str
    targets: tuple[Target, ...]
    tenancy: Tenancy
    enforcement: Enforcement
    capture: Capture
    log_format: str = "text"
    log_level: str = "info"
    detection: DetectionSettings = field(default_factory=DetectionSettings)
    otel: Otel = field(default_factory=Otel)
    # TLS and basic auth of the endpoints, exporter-toolkit format (exporters/web_config.py)
    web_config_file: str | None = None
    metrics: Metrics = field(default_factory=lambda: Metrics())
    power: Power = field(default_factory=lambda: Power())

    @property
    def listen_host(self) -> str:
        """Host to bind, IPv6 without brackets."""
        return _split_listen(self.listen, "listen")[0]

    @property
    def listen_port(self) -> int:
        return _split_listen(self.listen, "listen")[1]


# --- loading ---------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys instead of silently keeping the last one."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Any:
    loader.flatten_mapping(node)
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # unhashable key; construct_mapping reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


# Drop-in files beside the config: <its directory>/conf.d/*.yaml (and *.yml), merged over it in
# name order (a mapping merges key by key, anything else replaces), so that a package's conffile
# can stay untouched and each change lives in a file of its own.
CONF_D = "conf.d"


def load_config(path: str | None = None, env: Mapping[str, str] = os.environ) -> Config:
    """Read, parse and validate the file at ``path`` (default: $TENANTWATCH_CONFIG, then
    DEFAULT_CONFIG_PATH) with the drop-ins of its conf.d/ merged over it."""
    if path is None:
        path = env.get(ENV_CONFIG) or DEFAULT_CONFIG_PATH
    data = _read_yaml(path)
    if data is None:
        raise ConfigError("<file>", f"{path} is empty")
    conf_d = os.path.join(os.path.dirname(os.path.abspath(path)), CONF_D)
    if os.path.isdir(conf_d):
        for name in sorted(os.listdir(conf_d)):
            if not name.endswith((".yaml", ".yml")) or name.startswith("."):
                continue
            drop_in = os.path.join(conf_d, name)
            more = _read_yaml(drop_in)
            if more is None:
                continue  # an empty drop-in changes nothing
            if not isinstance(more, dict) or not isinstance(data, dict):
                raise ConfigError("<file>", f"{drop_in}: a drop-in must be a mapping of keys "
                                  "to merge over the config")
            data = _merge(data, more)
    return parse_config(data, env)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError("<file>", f"cannot read {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError("<file>", f"{path} is not UTF-8 text") from e
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        where, problem = path, str(e)
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            where = f"{path}:{mark.line + 1}:{mark.column + 1}"
            problem = getattr(e, "problem", None) or problem
        raise ConfigError("<file>", f"{where}: YAML error: {problem}") from e
    return data


def parse_config(data: Any, env: Mapping[str, str] = os.environ) -> Config:
    """Validate already-parsed YAML ``data`` with the environment overrides applied."""
    _warn_unknown_env(env)
    top = _mapping(data, "<file>")
    _check_keys(top, ("listen", "targets", "tenancy", "enforcement", "capture", "detection",
                      "otel", "log_format", "log_level", "web_config_file", "metrics",
                      "power"), "")
    web = top.get("web_config_file")
    if web is not None:
        web = _str(web, "web_config_file")
        if not web.startswith("/"):
            raise ConfigError("web_config_file", "must be an absolute path")
    listen, field = _pick(top, "listen", "", DEFAULT_LISTEN, env, ENV_LISTEN)
    listen = _str(listen, field)
    _split_listen(listen, field)
    log_format, field = _pick(top, "log_format", "", "text", env, ENV_LOG_FORMAT)
    log_level, level_field = _pick(top, "log_level", "", "info", env, ENV_LOG_LEVEL)
    tenancy = _parse_tenancy(top.get("tenancy"), "tenancy", env)
    return Config(
        listen=listen,
        targets=_parse_targets(top.get("targets"), "targets"),
        tenancy=tenancy,
        enforcement=_parse_enforcement(top.get("enforcement"), "enforcement", env),
        capture=_parse_capture(top.get("capture"), "capture", env, tenancy.max_tenants),
        log_format=_choice(log_format, LOG_FORMATS, field),
        log_level=_choice(_lower(log_level), LOG_LEVELS, level_field),
        detection=parse_detection(top.get("detection"), "detection"),
        otel=_parse_otel(top.get("otel"), "otel"),
        metrics=_parse_metrics(top.get("metrics"), "metrics"),
        power=_parse_power(top.get("power"), "power"),
        web_config_file=web,
    )


def _parse_metrics(value: Any, field: str) -> Metrics:
    if value is None:
        return Metrics()
    m = _mapping(value, field)
    _check_keys(m, ("histograms",), field)
    f = f"{field}.histograms"
    sides = tuple(_choice(v, ("server", "client"), f"{f}[{i}]")
                  for i, v in enumerate(_list(m.get("histograms", ["server", "client"]), f)))
    if len(set(sides)) != len(sides):
        raise ConfigError(f, "names a side twice")
    return Metrics(histogram_sides=sides)


def _parse_power(value: Any, field: str) -> Power:
    if value is None:
        return Power()
    m = _mapping(value, field)
    _check_keys(m, ("idle_watts", "max_watts"), field)
    if ("idle_watts" in m) != ("max_watts" in m):
        raise ConfigError(field, "give both idle_watts and max_watts, or neither")
    if not m:
        return Power()
    idle = _number(m["idle_watts"], f"{field}.idle_watts", 0.0, 100000.0)
    peak = _number(m["max_watts"], f"{field}.max_watts", idle, 100000.0)
    return Power(idle_watts=idle, max_watts=peak)


def _parse_otel(value: Any, field: str) -> Otel:
    if value is None:
        return Otel()
    m = _mapping(value, field)
    _check_keys(m, ("endpoint", "interval_seconds", "resource_attributes"), field)
    endpoint = m.get("endpoint")
    if endpoint is not None:
        endpoint = _str(endpoint, f"{field}.endpoint")
        if not re.match(r"^https?://", endpoint):
            raise ConfigError(f"{field}.endpoint", f"must be an http(s) URL, got {endpoint!r}")
    attrs = _mapping(m.get("resource_attributes", {}), f"{field}.resource_attributes")
    return Otel(
        endpoint=endpoint,
        interval_seconds=_number(m.get("interval_seconds", 10.0), f"{field}.interval_seconds",
                                 0.1, 3600.0),
        resource_attributes=MappingProxyType(
            {str(k): _str(v, f"{field}.resource_attributes.{k}") for k, v in attrs.items()}),
    )


# --- sections --------------------------------------------------------------------------------


def _parse_targets(value: Any, field: str) -> tuple[Target, ...]:
    if value is None:
        raise ConfigError(field, "required: list the gateway processes, e.g. [{process: nginx}]")
    items = _list(value, field)
    if not items:
        raise ConfigError(field, "needs at least one target")
    if len(items) > MAX_TARGETS:
        raise ConfigError(field, f"at most {MAX_TARGETS} targets (process names the kernel "
                          f"matches), got {len(items)}")
    targets: list[Target] = []
    for i, item in enumerate(items):
        f = f"{field}[{i}]"
        m = _mapping(item, f)
        _check_keys(m, ("name", "process"), f)
        if "process" not in m:
            raise ConfigError(f"{f}.process", "required")
        process = _str(m["process"], f"{f}.process")
        size = len(process.encode("utf-8"))
        if not 1 <= size <= MAX_COMM:
            raise ConfigError(f"{f}.process", f"must be 1..{MAX_COMM} bytes (the kernel's comm), "
                              f"got {size}")
        if any(ord(c) < 32 or ord(c) == 127 for c in process):
            raise ConfigError(f"{f}.process", "contains a control character")
        name = _str(m.get("name", process), f"{f}.name")
        if not _TARGET_NAME.fullmatch(name):
            raise ConfigError(f"{f}.name", f"{name!r} must match {_TARGET_NAME.pattern}")
        if any(t.name == name for t in targets):
            raise ConfigError(f"{f}.name", f"duplicate target name {name!r}")
        if any(t.process == process for t in targets):
            raise ConfigError(f"{f}.process", f"process {process!r} is already a target")
        targets.append(Target(name=name, process=process))
    return tuple(targets)


def _parse_tenancy(value: Any, field: str, env: Mapping[str, str]) -> Tenancy:
    m = _mapping(value, field)
    _check_keys(m, ("sources", "pattern", "tenants", "max_tenants", "default", "idle_seconds",
                    "registry", "response_check"), field)
    if "sources" in m:
        items = _list(m["sources"], f"{field}.sources")
        if not items:
            raise ConfigError(f"{field}.sources", "needs at least one source")
        if len(items) > MAX_SOURCES:
            raise ConfigError(f"{field}.sources", f"at most {MAX_SOURCES} sources (the kernel "
                              f"keeps one slot per source), got {len(items)}")
        sources = tuple(_parse_source(s, f"{field}.sources[{i}]") for i, s in enumerate(items))
    else:
        sources = (Source(kind="header", header="x-tenant-id", side=Side.SERVER, trusted=False),)
    # The kernel reads each header name once per side (one tw_names slot per side): two
    # sources on the same header and side would leave the second one never matching.
    seen: dict[tuple[str, Side], int] = {}
    for i, s in enumerate(sources):
        for side in (s.side,) if s.side is not None else (Side.SERVER, Side.CLIENT):
            j = seen.setdefault((s.header, side), i)
            if j != i:
                raise ConfigError(f"{field}.sources[{i}]", (
                    f"duplicate of sources[{j}]" if sources[j] == s else
                    f"sources[{j}] already reads the {s.header!r} header on the {side.value} "
                    "side; only the first would ever match (give each side its own source)"))

    pattern = _str(m.get("pattern", DEFAULT_PATTERN), f"{field}.pattern")
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"{field}.pattern", f"not a valid regex: {e}") from e
    for label in _RESERVED:
        if regex.fullmatch(label):
            raise ConfigError(f"{field}.pattern", f"must not match the reserved label {label}")

    raw, max_field = _pick(m, "max_tenants", field, 1000, env, ENV_MAX_TENANTS, int)
    max_tenants = _int(raw, max_field, 1, MAX_TENANTS_LIMIT)

    tenants = []
    for i, t in enumerate(_list(m.get("tenants", []), f"{field}.tenants")):
        f = f"{field}.tenants[{i}]"
        tenant = _tenant(t, regex, f)
        if tenant in tenants:
            raise ConfigError(f, f"duplicate tenant {tenant!r}")
        tenants.append(tenant)
    if len(tenants) > max_tenants:
        raise ConfigError(f"{field}.tenants", f"{len(tenants)} tenants exceed max_tenants "
                          f"({max_tenants})")

    default = m.get("default", DEFAULT_TENANT)
    if "default" not in m and not regex.fullmatch(DEFAULT_TENANT):
        raise ConfigError(f"{field}.default", f"the built-in default {DEFAULT_TENANT!r} does not "
                          "match tenancy.pattern; set default (or null)")
    if default is not None:
        default = _tenant(default, regex, f"{field}.default")
    idle = _number(m.get("idle_seconds", 300.0), f"{field}.idle_seconds", 1.0, 604800.0)
    registry = None if m.get("registry") is None else \
        _parse_registry(m["registry"], f"{field}.registry")
    check = None if m.get("response_check") is None else \
        _parse_response_check(m["response_check"], f"{field}.response_check", sources)
    return Tenancy(sources=sources, pattern=pattern, tenants=tuple(tenants),
                   max_tenants=max_tenants, default=default, idle_seconds=idle,
                   registry=registry, response_check=check)


def _parse_response_check(value: Any, field: str, sources: tuple[Source, ...]) -> ResponseCheck:
    m = _mapping(value, field)
    _check_keys(m, ("header", "side", "events_per_second"), field)
    if "header" not in m:
        raise ConfigError(f"{field}.header", "required: the response header naming the tenant "
                          "a response served, e.g. X-Served-Tenant")
    name = _header_name(m["header"], f"{field}.header")
    side = _choice(_lower(m.get("side", "client")), ("client", "server", "both"),
                   f"{field}.side")
    sides = (Side.SERVER, Side.CLIENT) if side == "both" else (Side(side),)
    names = {s.header for s in sources} | {name}
    if len(names) > MAX_SOURCES:  # the kernel's name table: MAX_SOURCES names and two more
        raise ConfigError(f"{field}.header", f"the sources' headers and this one make "
                          f"{len(names)} distinct names; the kernel compares at most "
                          f"{MAX_SOURCES}")
    return ResponseCheck(header=name, sides=sides, events_per_second=_int(
        m.get("events_per_second", 20), f"{field}.events_per_second", 1, 10_000))


def _header_name(value: Any, field: str) -> str:
    """A header name as the kernel compares it: an RFC 7230 token, lowercased, bounded."""
    name = _str(value, field)
    if not _TOKEN.fullmatch(name):
        raise ConfigError(field, f"{name!r} is not a valid header name")
    if len(name) > MAX_HEADER_NAME:
        raise ConfigError(field, f"longer than {MAX_HEADER_NAME} characters (the kernel "
                          "compares names up to that length)")
    return name.lower()


def _parse_registry(value: Any, field: str) -> Registry:
    m = _mapping(value, field)
    _check_keys(m, ("redis", "key", "refresh_seconds", "backup_file", "max_entries",
                    "timeout_seconds"), field)
    if "redis" not in m:
        raise ConfigError(f"{field}.redis", "required: the URL of the Redis holding the "
                          "tenants' records, e.g. redis://127.0.0.1:6379/0")
    url = _str(m["redis"], f"{field}.redis")
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"{field}.redis", "a redis://, rediss:// or unix:// URL")
    key = _str(m.get("key", Registry.key), f"{field}.key")
    if key.count("{tenant}") != 1:
        raise ConfigError(f"{field}.key", "must contain {tenant} exactly once")
    backup = _str(m.get("backup_file", Registry.backup_file), f"{field}.backup_file")
    if not backup.startswith("/"):
        raise ConfigError(f"{field}.backup_file", "must be an absolute path")
    return Registry(
        redis=url, key=key, backup_file=backup,
        refresh_seconds=_number(m.get("refresh_seconds", 10.0), f"{field}.refresh_seconds",
                                1.0, 3600.0),
        max_entries=_int(m.get("max_entries", 100_000), f"{field}.max_entries", 1, 10_000_000),
        timeout_seconds=_number(m.get("timeout_seconds", 2.0), f"{field}.timeout_seconds",
                                0.1, 60.0))


def _parse_source(value: Any, field: str) -> Source:
    m = _mapping(value, field)
    _check_keys(m, ("header", "host", "jwt", "side", "trusted"), field)
    kinds = [k for k in ("header", "host", "jwt") if k in m]
    if len(kinds) != 1:
        got = ", ".join(kinds) or "none"
        raise ConfigError(field, f"needs exactly one of header, host, jwt (got {got})")
    kind = kinds[0]
    side = None
    if m.get("side") is not None:
        side = Side(_choice(_lower(m["side"]), tuple(s.value for s in Side), f"{field}.side"))
    trusted = _bool(m.get("trusted", False), f"{field}.trusted")
    if trusted and kind != "header":
        raise ConfigError(f"{field}.trusted", "only header sources can be trusted by "
                          "configuration (a jwt is trusted once its signature verifies)")
    if kind == "header":
        name = _header_name(m["header"], f"{field}.header")
        if trusted and side is not Side.CLIENT:
            log.warning("%s: trusted header %s is also read on connections clients opened; "
                        "a client can forge it there (use side: client)", field, name)
        return Source(kind="header", header=name, side=side, trusted=trusted)
    if kind == "host":
        return Source(kind="host", header="host", side=side, trusted=False,
                      host_template=_host_template(m["host"], f"{field}.host"))
    return Source(kind="jwt", header="authorization", side=side, trusted=False,
                  jwt=_parse_jwt(m["jwt"], f"{field}.jwt"))


def _parse_jwt(value: Any, field: str) -> Mapping[str, Any]:
    """A jwt source's settings; with no key source the claim is read unverified (CLAIMED)."""
    from tenantwatch.identity.jwks import FAMILY_OF, MIN_REFRESH_SECONDS

    m = _mapping(value, field)
    _check_keys(m, ("claim", "jwks_file", "jwks_url", "jwks_refresh_seconds", "pem_file",
                    "algorithms", "audience", "issuer", "leeway_seconds"), field)
    out = {"claim": _str(m.get("claim", "tenant_id"), f"{field}.claim")}
    if not out["claim"]:
        raise ConfigError(f"{field}.claim", "must not be empty")
    for key in ("jwks_file", "jwks_url", "pem_file", "issuer"):
        if key in m:
            out[key] = _str(m[key], f"{field}.{key}")
            if not out[key]:
                raise ConfigError(f"{field}.{key}", "must not be empty")
    given = [k for k in ("jwks_file", "jwks_url", "pem_file") if k in out]
    if len(given) > 1:
        raise ConfigError(f"{field}.{given[1]}", f"at most one of jwks_file, jwks_url, "
                          f"pem_file (got {', '.join(given)})")
    for key in ("jwks_file", "pem_file"):
        if key in out and not out[key].startswith("/"):
            raise ConfigError(f"{field}.{key}", "must be an absolute path")
    if "jwks_url" in out:
        url = out["jwks_url"]
        if not re.match(r"https?://[^/?#\s]+", url):
            raise ConfigError(f"{field}.jwks_url", f"must be an http(s) URL, got {url!r}")
        host = re.sub(r"^https?://([^@/]*@)?", "", url).split("/")[0].rsplit(":", 1)[0]
        if url.startswith("http://") and host not in ("localhost", "127.0.0.1", "[::1]"):
            log.warning("%s.jwks_url: plain http: whoever can alter the response can make any "
                        "token verify (use https)", field)
    if "jwks_refresh_seconds" in m:
        if "jwks_url" not in out:
            raise ConfigError(f"{field}.jwks_refresh_seconds", "only applies with jwks_url")
        out["jwks_refresh_seconds"] = _number(m["jwks_refresh_seconds"],
                                              f"{field}.jwks_refresh_seconds",
                                              MIN_REFRESH_SECONDS, 86400)
    if "audience" in m:
        aud = m["audience"]
        out["audience"] = (tuple(_str(a, f"{field}.audience[{i}]") for i, a in
                                 enumerate(_list(aud, f"{field}.audience")))
                           if isinstance(aud, list) else _str(aud, f"{field}.audience"))
        if not out["audience"]:
            raise ConfigError(f"{field}.audience", "must not be empty")
    if "algorithms" in m:
        algs = _list(m["algorithms"], f"{field}.algorithms")
        if not algs:
            raise ConfigError(f"{field}.algorithms", "must not be empty")
        out["algorithms"] = tuple(_choice(a, JWT_ALGORITHMS, f"{field}.algorithms[{i}]")
                                  for i, a in enumerate(algs))
        families = sorted({FAMILY_OF[a] for a in out["algorithms"]})
        if len(families) > 1:
            raise ConfigError(f"{field}.algorithms", "must all be of one family (RS*/PS*, "
                              f"ES*, EdDSA or HS*), got {', '.join(out['algorithms'])}: "
                              "mixing families lets a key be read the wrong way")
        if families == ["oct"] and "pem_file" in out:
            raise ConfigError(f"{field}.algorithms", "HS* needs a shared secret from a JWKS "
                              "oct key (jwks_file or jwks_url), never pem_file")
    if "leeway_seconds" in m:
        out["leeway_seconds"] = _number(m["leeway_seconds"], f"{field}.leeway_seconds", 0, 3600)
    checks = [k for k in ("algorithms", "audience", "issuer", "leeway_seconds") if k in out]
    if checks and not given:
        log.warning("%s: %s set but no jwks_file, jwks_url or pem_file: the token is NOT "
                    "verified and its claim stays claimed", field, ", ".join(checks))
    return MappingProxyType(out)


def _parse_enforcement(value: Any, field: str, env: Mapping[str, str]) -> Enforcement:
    from tenantwatch.enforcement.settings import (
        parse_cores,
        parse_placement,
        parse_quotas,
    )

    m = _mapping(value, field)
    _check_keys(m, ("mode", "cgroup", "root", "floor", "max_step", "cooldown_seconds",
                    "calm_seconds", "lease_ttl_seconds", "keep_on_exit", "state_file",
                    "audit_log", "kill_switch", "quotas", "placement"), field)
    mode, mode_field = _pick(m, "mode", field, "dry-run", env, ENV_ENFORCEMENT_MODE)
    if mode is False:  # YAML 1.1 reads an unquoted `off` as false
        mode = "off"
    placement = parse_placement(m.get("placement"), f"{field}.placement")
    default_cgroup = DEFAULT_CGROUP if placement is None else \
        f"{placement.delegated_root}/tenant-{{tenant}}"
    cgroup = _str(m.get("cgroup", default_cgroup), f"{field}.cgroup")
    if "{tenant}" not in cgroup:
        raise ConfigError(f"{field}.cgroup", "must contain {tenant}")
    if not cgroup.startswith("/"):
        raise ConfigError(f"{field}.cgroup", "must be an absolute path")
    prefix = os.path.dirname(cgroup.split("{tenant}", 1)[0]) or "/"
    root = os.path.normpath(_str(m.get("root", prefix), f"{field}.root"))
    if not root.startswith("/") or root == "/":
        raise ConfigError(f"{field}.root", f"must be an absolute directory other than /, got "
                          f"{root!r}")
    if os.path.commonpath([os.path.normpath(prefix), root]) != root:
        raise ConfigError(f"{field}.root", f"the cgroup template's directory {prefix} is not "
                          f"under {root}")
    if placement is not None and \
            os.path.commonpath([os.path.normpath(prefix), placement.delegated_root]) \
            != placement.delegated_root:
        raise ConfigError(f"{field}.cgroup", f"with placement, the template must be under "
                          f"placement.delegated_root ({placement.delegated_root})")
    for key in ("state_file", "audit_log", "kill_switch"):
        path = _str(m.get(key, getattr(Enforcement, key)), f"{field}.{key}")
        if not path.startswith("/"):
            raise ConfigError(f"{field}.{key}", "must be an absolute path")
    floor = parse_cores(m.get("floor", 0.1), f"{field}.floor")
    quotas = parse_quotas(m.get("quotas"), f"{field}.quotas")
    for tenant, cores in quotas.items():
        if cores < floor:
            raise ConfigError(f"{field}.quotas.{tenant}", f"{cores:g} cores is below "
                              f"{field}.floor ({floor:g})")
    return Enforcement(
        mode=_choice(_lower(mode), ENFORCEMENT_MODES, mode_field), cgroup=cgroup, root=root,
        floor=floor,
        # "no step larger than half the current quota": 0.5 is the most a step may take.
        max_step=_number(m.get("max_step", 0.5), f"{field}.max_step", 0.01, 0.5),
        cooldown_seconds=_number(m.get("cooldown_seconds", 30.0), f"{field}.cooldown_seconds",
                                 0.0, 86400.0),
        calm_seconds=_number(m.get("calm_seconds", 60.0), f"{field}.calm_seconds", 1.0,
                             86400.0),
        # At least 2 s: a lease is renewed once half of it is left, at most once a tick (<= 1 s
        # ticks renew in time; longer ticks want a longer TTL, see docs/enforcement.md).
        lease_ttl_seconds=_number(m.get("lease_ttl_seconds", 120.0),
                                  f"{field}.lease_ttl_seconds", 2.0, 7 * 86400.0),
        keep_on_exit=_bool(m.get("keep_on_exit", False), f"{field}.keep_on_exit"),
        state_file=m.get("state_file", Enforcement.state_file),
        audit_log=m.get("audit_log", Enforcement.audit_log),
        kill_switch=m.get("kill_switch", Enforcement.kill_switch),
        quotas=quotas,
        placement=placement,
    )


def default_max_identities(max_tenants: int) -> int:
    """capture.max_identities when the file gives none: every admitted tenant on both sides,
    plus room for a tick's claimed junk values, at least MIN_DEFAULT_IDENTITIES."""
    return max(MIN_DEFAULT_IDENTITIES, 2 * max_tenants + JUNK_IDENTITIES)


def _parse_capture(value: Any, field: str, env: Mapping[str, str],
                   max_tenants: int = 1000) -> Capture:
    m = _mapping(value, field)
    _check_keys(m, ("latency_buckets", "tick_seconds", "max_connections", "rescan_seconds",
                    "slow_request_seconds", "slow_requests_per_second", "tls",
                    "tokens_per_second", "h2_budget_ms_per_tick", "max_identities"), field)
    f = f"{field}.latency_buckets"
    items = _list(m.get("latency_buckets", DEFAULT_LATENCY_BUCKETS), f)
    if not 1 <= len(items) <= MAX_LATENCY_BUCKETS:
        raise ConfigError(f, f"needs 1..{MAX_LATENCY_BUCKETS} bounds (the kernel's histogram "
                          f"slots), got {len(items)}")
    buckets: list[float] = []
    for i, b in enumerate(items):
        bound = _number(b, f"{f}[{i}]", 1e-9, math.inf)
        if buckets and bound <= buckets[-1]:
            raise ConfigError(f"{f}[{i}]", f"{b} is not greater than the previous bound")
        buckets.append(bound)
    tick, tick_field = _pick(m, "tick_seconds", field, 1.0, env, ENV_TICK_SECONDS, float)
    return Capture(
        latency_buckets=tuple(buckets),
        tick_seconds=_number(tick, tick_field, 0.1, 60.0),
        max_connections=_int(m.get("max_connections", 65536), f"{field}.max_connections",
                             1024, 1048576),
        rescan_seconds=_number(m.get("rescan_seconds", 1.0), f"{field}.rescan_seconds",
                               0.1, 3600.0),
        slow_request_seconds=_number(m.get("slow_request_seconds", 0.5),
                                     f"{field}.slow_request_seconds", 0.0, 3600.0),
        slow_requests_per_second=_int(m.get("slow_requests_per_second", 20),
                                      f"{field}.slow_requests_per_second", 1, 100000),
        tls=_bool(m.get("tls", True), f"{field}.tls"),
        tokens_per_second=_int(m.get("tokens_per_second", 100), f"{field}.tokens_per_second",
                               1, 100000),
        h2_budget_ms_per_tick=_number(m.get("h2_budget_ms_per_tick", 250.0),
                                      f"{field}.h2_budget_ms_per_tick", 1.0, 60000.0),
        max_identities=_max_identities(m, field, max_tenants),
    )


def _max_identities(m: Mapping[str, Any], field: str, max_tenants: int) -> int:
    """capture.max_identities: never below every admitted tenant on both sides plus the
    reserved entries, so no fixed ceiling smaller than max_tenants folds a tenant into
    __other__."""
    f = f"{field}.max_identities"
    n = _int(m.get("max_identities", default_max_identities(max_tenants)), f, 1024,
             MAX_IDENTITIES_LIMIT)
    need = 2 * max_tenants + RESERVED_IDENTITIES
    if n < need:
        raise ConfigError(f, f"{n} is less than 2 x tenancy.max_tenants + {RESERVED_IDENTITIES} "
                             f"= {need}: a tick with every tenant on both sides would fold some "
                             "into __other__; raise it or lower max_tenants")
    return n


# --- small validators ------------------------------------------------------------------------


def _join(field: str, key: str) -> str:
    return f"{field}.{key}" if field else key


def _pick(m: Mapping[str, Any], key: str, field: str, default: Any, env: Mapping[str, str],
          var: str, convert: Callable[[str], Any] = str) -> tuple[Any, str]:
    """The value of ``key`` and the name to blame for it: the env variable when it is set."""
    raw = env.get(var, "").strip()
    if raw:
        try:
            return convert(raw), var
        except ValueError:
            kind = {int: "an integer", float: "a number"}.get(convert, "valid")  # type: ignore
            raise ConfigError(var, f"{raw!r} is not {kind}") from None
    return m.get(key, default), _join(field, key)


def advisories(config: Config) -> list[str]:
    """What a valid configuration still leaves open, in words an operator can act on (printed by
    `check-config`, logged at start).  Only enforce mode can cap a tenant, so the trust ones are
    given for it alone; a response check that can never check anything is named in any mode."""
    out: list[str] = []
    check = config.tenancy.response_check
    for side in check.sides if check is not None else ():
        if not any(s.trusted and s.side in (None, side) for s in config.tenancy.sources):
            out.append(f"tenancy.response_check covers the {side.value} side, but no trusted "
                       f"header source reads requests there: only a request whose identity a "
                       f"trusted header gave is checked, so nothing will be "
                       f"(docs/isolation.md)")
    if config.enforcement.mode != "enforce":
        return out
    for s in config.tenancy.sources:
        if s.kind == "jwt" and s.jwt is not None:
            missing = [k for k in ("audience", "issuer") if not s.jwt.get(k)]
            if missing:
                out.append(f"the JWT source ({s.jwt.get('claim', 'tenant_id')} claim) has no "
                           f"{' and no '.join(missing)}: any token signed with its keys counts, "
                           "also one issued to another service; set both")
        elif s.trusted:
            out.append(f"'{s.header}' is trusted: that asserts the gateway authenticated the "
                       "tenant before writing it (auth_request, or a verified token), not that "
                       "it checked the value's format; with a format check alone any client "
                       "can name any tenant and get it capped (docs/config.md#what-trusted-asserts)")
    return out


def _warn_unknown_env(env: Mapping[str, str]) -> None:
    for var in sorted(v for v in env if v.startswith("TENANTWATCH_") and v not in ENV_VARS):
        close = difflib.get_close_matches(var, ENV_VARS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        log.warning("ignoring unknown environment variable %s%s", var, hint)


def _check_keys(m: Mapping[str, Any], allowed: Iterable[str], field: str) -> None:
    allowed = tuple(allowed)
    unknown = [str(k) for k in m if k not in allowed]
    if not unknown:
        return
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, allowed, n=1)
        parts.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    noun = "unknown key" if len(parts) == 1 else "unknown keys"
    raise ConfigError(_join(field, unknown[0]),
                      f"{noun} {', '.join(parts)}; known: {', '.join(allowed)}")



def _mapping(value: Any, field: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(field or "<file>", f"expected a mapping, got {_type_name(value)}")
    return value


def _list(value: Any, field: str) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(field, f"expected a list, got {_type_name(value)}")
    return list(value)


def _str(value: Any, field: str) -> str:
    if not isinstance(value, str):
        hint = " (quote it: YAML reads on/off/yes/no and numbers as other types)" \
            if isinstance(value, (bool, int, float)) else ""
        raise ConfigError(field, f"expected a string, got {_type_name(value)}{hint}")
    return value


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(field, f"expected true or false, got {_type_name(value)}")
    return value



def _number(value: Any, field: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(field, f"expected a number, got {_type_name(value)}")
    if not (math.isfinite(value) and lo <= value <= hi):
        upper = "" if math.isinf(hi) else f"..{hi:g}"
        raise ConfigError(field, f"must be a finite number in {lo:g}{upper}, got {value}")
    return float(value)


def _choice(value: Any, choices: tuple[str, ...], field: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(field, f"must be one of {' | '.join(choices)}, got {value!r}")
    return value


def _tenant(value: Any, regex: re.Pattern[str], field: str) -> str:
    tenant = _str(value, field)
    if not regex.fullmatch(tenant):
        raise ConfigError(field, f"{tenant!r} does not match tenancy.pattern {regex.pattern!r}")
    return tenant


def _host_template(value: Any, field: str) -> str:
    template = _str(value, field)
    if template.count("{tenant}") != 1:
        raise ConfigError(field, "must contain {tenant} exactly once, e.g. "
                          "\"{tenant}.api.example.com\"")
    if len(template) > 253:
        raise ConfigError(field, "longer than a host name can be (253)")
    if not all(_HOST_LITERAL.fullmatch(p) for p in template.split("{tenant}")):
        raise ConfigError(field, "besides {tenant}, only letters, digits, '.' and '-' are allowed")
    return template


@functools.lru_cache(maxsize=64)
def _host_regex(template: str) -> re.Pattern[str]:
    before, after = template.split("{tenant}")
    return re.compile(
        rf"\A{re.escape(before)}(?P<tenant>[^.:]+){re.escape(after)}\.?(?::[0-9]{{1,5}})?\Z",
        re.IGNORECASE | re.ASCII,
    )


def _split_listen(value: str, field: str) -> tuple[str, int]:
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(field, f"{value!r}: expected [IPv6]:port, e.g. [::1]:9477") from None
        if not sep:
            raise ConfigError(field, f"{value!r}: expected [IPv6]:port, e.g. [::1]:9477")
    else:
        host, sep, port = value.rpartition(":")
        if not sep or not host:
            raise ConfigError(field, f"{value!r}: expected host:port, e.g. 127.0.0.1:9477 "
                              "(0.0.0.0:9477 for all interfaces)")
        if ":" in host:
            raise ConfigError(field, f"{value!r}: put an IPv6 address in brackets, e.g. "
                              "[::1]:9477")
        if not _HOSTNAME.fullmatch(host):
            raise ConfigError(field, f"{value!r}: {host!r} is not a host name or address")
    if not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise ConfigError(field, f"{value!r}: port must be 1..65535")
    return host, int(port)
