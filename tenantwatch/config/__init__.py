"""Configuration: a YAML file plus ``TENANTWATCH_*`` variables -> one frozen, validated Config.

Takes the parsed YAML (``parse_config``) or a path (``load_config``) and the environment; gives a
``Config`` of frozen dataclasses, or raises ``ConfigError(field, message)`` where ``field`` is the
dotted path of the offending key (``tenancy.sources[2].side``), the environment variable, or
``<file>`` for an unreadable, empty or malformed file.  Every key and variable is read here.

The keys, the variables, their defaults and rules: docs/config.md, the reference
(tests/unit/test_config_docs.py holds it to the code).  Each default is written once, in its
dataclass (records.py, detection.py); the parsers read it from there.
"""

# The package, one module per concern: constants.py (defaults, limits, environment variables),
# records.py (the frozen dataclasses), validators.py (small shared checks), one module per section
# (tenancy.py with targets, enforcement.py, capture.py, detection.py, exporting.py for metrics,
# power and otel), and load.py (YAML, conf.d, environment, parse_config, advisories).  What other
# modules import is re-exported here.  The stages import their settings types from config, in
# one direction only: config imports from the stages nothing but two modules of shared records,
# kernel/records.py (Side) and identity/records.py (RESERVED_LABELS)
# (tests/unit/config/test_direction.py).

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
    JwtSettings,
    Metrics,
    Otel,
    Placement,
    Power,
    Registry,
    ResponseCheck,
    Selector,
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
    "RESERVED_LABELS", "Capture", "Config", "DetectionSettings", "Enforcement", "JwtSettings",
    "Metrics", "Otel", "Placement", "Power", "Registry", "ResponseCheck", "Selector", "Source",
    "Target", "Tenancy",
    "advisories", "default_max_identities", "load_config", "parse_config",
]
