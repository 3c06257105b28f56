"""The validated configuration: frozen dataclasses, one per section."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from tenantwatch.config.constants import (
    DEFAULT_CGROUP,
    DEFAULT_LATENCY_BUCKETS,
    DEFAULT_PATTERN,
    DEFAULT_TENANT,
    default_max_identities,
)
from tenantwatch.config.detection import DetectionSettings
from tenantwatch.config.validators import (
    _default,
    _host_regex,
    _selector_regex,
    _split_listen,
    _template_dir,
)
from tenantwatch.kernel.records import Side


@dataclass(frozen=True)
class Target:
    """A process name to trace; every process with that comm, including ones started later."""

    name: str
    process: str


@dataclass(frozen=True)
class JwtSettings:
    """A jwt source's settings (docs/config.md#jwt-sources).  With a key source (jwks_file,
    jwks_url or pem_file, at most one) the token is verified and its claim trusted; without one
    the claim is read unverified (claimed) and the checks below are unused."""

    claim: str = "tenant_id"  # the claim naming the tenant
    jwks_file: str | None = None  # absolute path of a JWKS document, read at start
    jwks_url: str | None = None  # http(s) URL of a JWKS document, fetched in the background
    jwks_refresh_seconds: float = 300.0  # with jwks_url: how often it is fetched
    pem_file: str | None = None  # absolute path of PEM public keys or certificates
    algorithms: tuple[str, ...] = ("RS256",)  # allowed alg values, all of one family
    audience: str | tuple[str, ...] | None = None  # aud must name one of these; None: unchecked
    issuer: str | None = None  # iss must equal this; None: unchecked
    leeway_seconds: float = 0.0  # clock skew allowed on exp and nbf

    @property
    def has_key_source(self) -> bool:
        """Whether the token is verified (jwks_file, jwks_url or pem_file is set)."""
        return any(k is not None for k in (self.jwks_file, self.jwks_url, self.pem_file))


@dataclass(frozen=True)
class Source:
    """One identity source; ``header`` is the lowercase header name the kernel matches."""

    kind: str  # "header" | "host" | "jwt"
    header: str  # the header for kind=header, "host" for host, "authorization" for jwt
    side: Side | None = None  # None = both sides
    trusted: bool = False  # only header sources can be trusted by configuration
    host_template: str | None = None  # kind=host: e.g. "{tenant}.api.example.com"
    jwt: JwtSettings | None = None  # kind=jwt: its settings (never None for a jwt source)

    def __post_init__(self) -> None:
        if self.kind == "jwt" and self.jwt is None:
            object.__setattr__(self, "jwt", JwtSettings())

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

    sources: tuple[Source, ...] = (Source(kind="header", header="x-tenant-id", side=Side.SERVER),)
    pattern: str = DEFAULT_PATTERN
    tenants: tuple[str, ...] = ()  # empty: any value that matches the pattern
    max_tenants: int = 1000
    default: str | None = DEFAULT_TENANT  # None: __unattributed__
    idle_seconds: float = 300.0
    registry: Registry | None = None
    response_check: ResponseCheck | None = None


@dataclass(frozen=True)
class Selector:
    """Processes to place: by name (comm, exact) and/or a regex searched in the command line
    (arguments joined by spaces).  The tenant is fixed, or the regex's named group ``tenant``."""

    process: str | None = None
    cmdline: str | None = None
    tenant: str | None = None

    @property
    def regex(self) -> re.Pattern[str] | None:
        return None if self.cmdline is None else _selector_regex(self.cmdline)


@dataclass(frozen=True)
class Placement:
    """Per-tenant cgroups created under ``delegated_root``, with selected processes moved in."""

    delegated_root: str
    selectors: tuple[Selector, ...]


@dataclass(frozen=True)
class Enforcement:
    """Whether, where and how CPU caps are applied (docs/enforcement.md).

    ``root`` is the directory every mapped cgroup must resolve strictly below; empty means the
    template's directory before {tenant}.  Amounts are in cores.  ``placement`` is a Placement
    or None.
    """

    mode: str = "dry-run"  # off | dry-run | enforce
    cgroup: str = DEFAULT_CGROUP  # path template containing {tenant}
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
    placement: Placement | None = None

    def __post_init__(self) -> None:
        if not self.root:
            object.__setattr__(self, "root", _template_dir(self.cgroup))


@dataclass(frozen=True)
class Capture:
    """Kernel-side capture settings."""

    latency_buckets: tuple[float, ...] = DEFAULT_LATENCY_BUCKETS
    tick_seconds: float = 1.0
    max_connections: int = 65536
    rescan_seconds: float = 1.0
    slow_request_seconds: float = 0.5  # requests at least this slow become trace spans; 0: off
    slow_requests_per_second: int = 20  # per CPU; the rest is counted (slow_rate_limited)
    tls: bool = True  # uprobes on the targets' libssl
    tokens_per_second: int = 100  # per CPU; the rest is counted (token_rate_limited)
    h2_budget_ms_per_tick: float = 250.0  # HTTP/2 decoding per tick; beyond: connections shed
    # distinct identities per tick in the kernel (both sides); derived from max_tenants: the
    # parser computes it from the file's, this is what the default max_tenants gives
    max_identities: int = default_max_identities(_default(Tenancy, "max_tenants"))
    # the legs whose connections the kernel follows: server (client -> gateway), client
    # (gateway -> upstream); an untraced leg costs its syscalls one failed lookup
    sides: tuple[Side, ...] = (Side.SERVER, Side.CLIENT)


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
