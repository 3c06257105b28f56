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

# The package, one module per concern: constants.py (defaults, limits, environment variables),
# records.py (the frozen dataclasses), validators.py (small shared checks), one module per section
# (tenancy.py with targets, enforcement.py, capture.py, detection.py, exporting.py for metrics,
# power and otel), and load.py (YAML, conf.d, environment, parse_config, advisories).  What other
# modules import is re-exported here; the stages import their settings types from here, never
# the other way round.

from __future__ import annotations

from tenantwatch.config.constants import (
    DEFAULT_CGROUP,
    DEFAULT_CONFIG_PATH,
    DEFAULT_LATENCY_BUCKETS,
    DEFAULT_LISTEN,
    DEFAULT_PATTERN,
    DEFAULT_TENANT,
    ENFORCEMENT_MODES,
    ENV_CONFIG,
    ENV_ENFORCEMENT_MODE,
    ENV_LISTEN,
    ENV_LOG_FORMAT,
    ENV_LOG_LEVEL,
    ENV_MAX_TENANTS,
    ENV_TICK_SECONDS,
    ENV_VARS,
    JUNK_IDENTITIES,
    JWT_ALGORITHMS,
    LOG_LEVELS,
    MAX_COMM,
    MAX_HEADER_NAME,
    MAX_IDENTITIES_LIMIT,
    MAX_LATENCY_BUCKETS,
    MAX_SOURCES,
    MAX_TARGETS,
    MAX_TENANTS_LIMIT,
    MIN_DEFAULT_IDENTITIES,
    RESERVED_IDENTITIES,
    default_max_identities,
)
from tenantwatch.config.detection import DetectionSettings
from tenantwatch.config.load import CONF_D, advisories, load_config, parse_config
from tenantwatch.config.records import (
    Capture,
    Config,
    Enforcement,
    Metrics,
    Otel,
    Power,
    Registry,
    ResponseCheck,
    Source,
    Target,
    Tenancy,
)
from tenantwatch.identity.records import RESERVED_LABELS
from tenantwatch.logs import LOG_FORMATS  # one list, shared with the CLI

__all__ = [
    "CONF_D", "DEFAULT_CGROUP", "DEFAULT_CONFIG_PATH", "DEFAULT_LATENCY_BUCKETS", "DEFAULT_LISTEN",
    "DEFAULT_PATTERN", "DEFAULT_TENANT", "ENFORCEMENT_MODES", "ENV_CONFIG", "ENV_ENFORCEMENT_MODE",
    "ENV_LISTEN", "ENV_LOG_FORMAT", "ENV_LOG_LEVEL", "ENV_MAX_TENANTS", "ENV_TICK_SECONDS",
    "ENV_VARS", "JUNK_IDENTITIES", "JWT_ALGORITHMS", "LOG_FORMATS", "LOG_LEVELS", "MAX_COMM",
    "MAX_HEADER_NAME", "MAX_IDENTITIES_LIMIT", "MAX_LATENCY_BUCKETS", "MAX_SOURCES",
    "MAX_TARGETS", "MAX_TENANTS_LIMIT", "MIN_DEFAULT_IDENTITIES", "RESERVED_IDENTITIES",
    "RESERVED_LABELS", "Capture", "Config", "DetectionSettings", "Enforcement", "Metrics", "Otel",
    "Power", "Registry", "ResponseCheck", "Source", "Target", "Tenancy", "advisories",
    "default_max_identities", "load_config", "parse_config",
]
