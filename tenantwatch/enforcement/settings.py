"""Parsers of the ``enforcement:`` values that need more than a type check: CPU amounts in human
form, static quotas and the optional placement section.

``config/enforcement.py`` ``_parse_enforcement`` calls these; each raises ``ConfigError(field, message)`` naming the
offending key (``enforcement.floor``, ``enforcement.quotas.acme``,
``enforcement.placement.selectors[0].cmdline``).  Nothing here touches the file system.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from tenantwatch.errors import ConfigError
from tenantwatch.identity.records import RESERVED_LABELS

# The kernel refuses a CFS quota below 1 ms (v1 EINVAL, v2 clamps): at the default 100 ms period
# that is 0.01 cores, the smallest cap that means what it says.
MIN_CORES = 0.01
# CONFIG_NR_CPUS of the distribution kernels (Debian, Ubuntu, RHEL on x86-64): no host has more.
MAX_CORES = 8192.0
# Selectors are matched against every process at each placement scan; a handful is the use case.
MAX_SELECTORS = 64
# Static quotas are per tenant; bounded like tenancy.max_tenants' default.
MAX_QUOTAS = 1000

_RESERVED = RESERVED_LABELS
_CORES = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(%|m|cores?|cpus?)?\s*",
                    re.IGNORECASE)


def parse_cores(value: Any, field: str, lo: float = MIN_CORES, hi: float = MAX_CORES) -> float:
    """CPU in human form -> cores.

    ``0.5``, ``"0.5"``, ``"0.5 cores"``, ``"1 cpu"`` -> 0.5 / 1.0; ``"50%"`` -> 0.5 (percent of
    one CPU, as systemd's CPUQuota=: ``"200%"`` is two cores); ``"500m"`` -> 0.5 (millicores,
    as Kubernetes writes them).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(field, f"expected cores (0.5, \"0.5 cores\", \"50%\", \"500m\"), got "
                          f"{'null' if value is None else type(value).__name__}")
    if isinstance(value, str):
        m = _CORES.fullmatch(value)
        if m is None:
            raise ConfigError(field, f"{value!r} is not a CPU amount; write 0.5, \"0.5 cores\", "
                              "\"50%\" (of one CPU) or \"500m\"")
        cores = float(m.group(1))
        unit = (m.group(2) or "").lower()
        if unit == "%":
            cores /= 100.0
        elif unit == "m":
            cores /= 1000.0
    else:
        cores = float(value)
    if not math.isfinite(cores) or cores <= 0:
        raise ConfigError(field, f"must be more than 0 cores, got {value!r}")
    if not lo <= cores <= hi:
        raise ConfigError(field, f"must be {lo:g}..{hi:g} cores, got {value!r} ({cores:g} cores)")
    return cores


def parse_quotas(value: Any, field: str) -> Mapping[str, float]:
    """``{tenant: cores}``; a value is a CPU amount or ``{cpu: amount}``."""
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, Mapping):
        raise ConfigError(field, f"expected a mapping of tenant -> cores, got "
                          f"{type(value).__name__}")
    if len(value) > MAX_QUOTAS:
        raise ConfigError(field, f"at most {MAX_QUOTAS} tenants, got {len(value)}")
    out: dict[str, float] = {}
    for tenant, amount in value.items():
        f = f"{field}.{tenant}"
        if not isinstance(tenant, str) or not tenant:
            raise ConfigError(f, "a tenant name must be a non-empty string")
        if tenant in _RESERVED:
            raise ConfigError(f, f"{tenant} is a reserved bucket shared by many callers; it "
                              "cannot be capped")
        if isinstance(amount, Mapping):
            unknown = [str(k) for k in amount if k != "cpu"]
            if unknown:
                raise ConfigError(f"{f}.{unknown[0]}", "unknown key; known: cpu")
            if "cpu" not in amount:
                raise ConfigError(f"{f}.cpu", "required")
            out[tenant] = parse_cores(amount["cpu"], f"{f}.cpu")
        else:
            out[tenant] = parse_cores(amount, f)
    return MappingProxyType(out)


@dataclass(frozen=True)
class Selector:
    """Processes to place: by name (comm, exact) and/or a regex searched in the command line
    (arguments joined by spaces).  The tenant is fixed, or the regex's named group ``tenant``."""

    process: str | None = None
    cmdline: str | None = None
    tenant: str | None = None

    @property
    def regex(self) -> re.Pattern[str] | None:
        return None if self.cmdline is None else _compile(self.cmdline)


@dataclass(frozen=True)
class Placement:
    """Per-tenant cgroups created under ``delegated_root``, with selected processes moved in."""

    delegated_root: str
    selectors: tuple[Selector, ...]


@functools.lru_cache(maxsize=MAX_SELECTORS)
def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def parse_placement(value: Any, field: str) -> Placement | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError(field, f"expected a mapping, got {type(value).__name__}")
    _only(value, ("delegated_root", "selectors"), field)
    root = value.get("delegated_root")
    if not isinstance(root, str) or not root.startswith("/"):
        raise ConfigError(f"{field}.delegated_root", "required: an absolute cgroup directory "
                          "delegated to tenantwatch, e.g. /sys/fs/cgroup/cpu/tenantwatch")
    root = os.path.normpath(root)
    if root == "/":
        raise ConfigError(f"{field}.delegated_root", "must not be /")
    items = value.get("selectors")
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{field}.selectors", "required: a non-empty list of "
                          "{process, cmdline, tenant}")
    if len(items) > MAX_SELECTORS:
        raise ConfigError(f"{field}.selectors", f"at most {MAX_SELECTORS}, got {len(items)}")
    return Placement(root, tuple(_selector(s, f"{field}.selectors[{i}]")
                                 for i, s in enumerate(items)))


def _selector(value: Any, field: str) -> Selector:
    if not isinstance(value, Mapping):
        raise ConfigError(field, f"expected a mapping, got {type(value).__name__}")
    _only(value, ("process", "cmdline", "tenant"), field)
    process, cmdline, tenant = (value.get(k) for k in ("process", "cmdline", "tenant"))
    for key, v in (("process", process), ("cmdline", cmdline), ("tenant", tenant)):
        if v is not None and (not isinstance(v, str) or not v):
            raise ConfigError(f"{field}.{key}", "expected a non-empty string")
    if process is None and cmdline is None:
        raise ConfigError(field, "needs process or cmdline (or both)")
    if process is not None and len(process.encode()) > 15:
        raise ConfigError(f"{field}.process", "longer than a process name can be (15 bytes)")
    has_group = False
    if cmdline is not None:
        try:
            has_group = "tenant" in _compile(cmdline).groupindex
        except re.error as e:
            raise ConfigError(f"{field}.cmdline", f"not a regex: {e}") from None
    if tenant is None and not has_group:
        raise ConfigError(field, "needs tenant, or a cmdline regex with a (?P<tenant>...) group")
    if tenant is not None and has_group:
        raise ConfigError(f"{field}.tenant", "ambiguous: the cmdline regex names a tenant "
                          "group too; keep one")
    if tenant in _RESERVED:
        raise ConfigError(f"{field}.tenant", f"{tenant} is a reserved bucket")
    return Selector(process, cmdline, tenant)


def _only(m: Mapping[str, Any], allowed: tuple[str, ...], field: str) -> None:
    for k in m:
        if k not in allowed:
            raise ConfigError(f"{field}.{k}", f"unknown key; known: {', '.join(allowed)}")
