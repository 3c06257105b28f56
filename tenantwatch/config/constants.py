"""Constants of the configuration: defaults, limits the kernel sets, environment variables."""

from __future__ import annotations

import re
from collections.abc import Mapping

from tenantwatch.identity.records import RESERVED_LABELS

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


def default_max_identities(max_tenants: int) -> int:
    """capture.max_identities when the file gives none: every admitted tenant on both sides,
    plus room for a tick's claimed junk values, at least MIN_DEFAULT_IDENTITIES."""
    return max(MIN_DEFAULT_IDENTITIES, 2 * max_tenants + JUNK_IDENTITIES)


DEFAULT_LISTEN = "127.0.0.1:9477"
DEFAULT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"
DEFAULT_CGROUP = "/sys/fs/cgroup/tenants.slice/tenant-{tenant}.slice"
DEFAULT_TENANT = "common"
ENFORCEMENT_MODES = ("off", "dry-run", "enforce")
# The kernel refuses a CFS quota below 1 ms (v1 EINVAL, v2 clamps): at the default 100 ms period
# that is 0.01 cores, the smallest cap that means what it says.
MIN_CORES = 0.01
# CONFIG_NR_CPUS of the distribution kernels (Debian, Ubuntu, RHEL on x86-64): no host has more.
MAX_CORES = 8192.0
# enforcement.placement: selectors are matched against every process at each placement scan; a
# handful is the use case.
MAX_SELECTORS = 64
# enforcement.quotas: static quotas are per tenant; bounded like tenancy.max_tenants' default.
MAX_QUOTAS = 1000

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# JWT algorithm families: the JWK key type (kty) each family verifies with.  A jwt source's
# algorithms are all of one family; identity/jwks.py loads only keys of that family.
FAMILIES: Mapping[str, tuple[str, ...]] = {
    "RSA": ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    "EC": ("ES256", "ES384", "ES512"),
    "OKP": ("EdDSA",),
    "oct": ("HS256", "HS384", "HS512"),
}
FAMILY_OF: Mapping[str, str] = {alg: fam for fam, algs in FAMILIES.items() for alg in algs}
JWT_ALGORITHMS = tuple(FAMILY_OF)  # RS256 ... HS512, in the families' order; never "none"
# jwt.jwks_refresh_seconds' lower bound: an IdP is not polled more than 6 times/min
MIN_REFRESH_SECONDS = 10.0

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
