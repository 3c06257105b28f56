"""The `enforcement` section, with the parsers of its values that need more than a type check:
CPU amounts in human form (``parse_cores``), static quotas (``parse_quotas``) and the optional
placement section (``parse_placement``).

Each raises ``ConfigError(field, message)`` naming the offending key (``enforcement.floor``,
``enforcement.quotas.acme``, ``enforcement.placement.selectors[0].cmdline``).  Nothing here
touches the file system.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from tenantwatch.config.constants import (
    _RESERVED,
    ENFORCEMENT_MODES,
    ENV_ENFORCEMENT_MODE,
    MAX_CORES,
    MAX_QUOTAS,
    MAX_SELECTORS,
    MIN_CORES,
)
from tenantwatch.config.records import Enforcement, Placement, Selector
from tenantwatch.config.validators import (
    _bool,
    _check_keys,
    _choice,
    _default,
    _getter,
    _lower,
    _mapping,
    _number,
    _pick,
    _selector_regex,
    _str,
    _template_dir,
    _type_name,
)
from tenantwatch.errors import ConfigError

_CORES = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(%|m|cores?|cpus?)?\s*",
                    re.IGNORECASE)


def _parse_enforcement(value: Any, field: str, env: Mapping[str, str]) -> Enforcement:
    m = _mapping(value, field)
    _check_keys(m, ("mode", "cgroup", "root", "floor", "max_step", "cooldown_seconds",
                    "calm_seconds", "lease_ttl_seconds", "keep_on_exit", "state_file",
                    "audit_log", "kill_switch", "quotas", "placement"), field)
    get = _getter(m, field, Enforcement)

    mode, mode_field = _pick(m, "mode", field, _default(Enforcement, "mode"), env,
                             ENV_ENFORCEMENT_MODE)
    if mode is False:  # YAML 1.1 reads an unquoted `off` as false
        mode = "off"
    placement = parse_placement(m.get("placement"), f"{field}.placement")
    # with placement, the tenants' cgroups are made under its delegated root
    default_cgroup = _default(Enforcement, "cgroup") if placement is None else \
        f"{placement.delegated_root}/tenant-{{tenant}}"
    cgroup = _str(m.get("cgroup", default_cgroup), f"{field}.cgroup")
    if "{tenant}" not in cgroup:
        raise ConfigError(f"{field}.cgroup", "must contain {tenant}")
    if not cgroup.startswith("/"):
        raise ConfigError(f"{field}.cgroup", "must be an absolute path")
    prefix = _template_dir(cgroup)
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
    paths: dict[str, str] = {}
    for key in ("state_file", "audit_log", "kill_switch"):
        paths[key] = _str(*get(key))
        if not paths[key].startswith("/"):
            raise ConfigError(f"{field}.{key}", "must be an absolute path")
    floor = parse_cores(*get("floor"))
    quotas = parse_quotas(m.get("quotas"), f"{field}.quotas")
    for tenant, cores in quotas.items():
        if cores < floor:
            raise ConfigError(f"{field}.quotas.{tenant}", f"{cores:g} cores is below "
                              f"{field}.floor ({floor:g})")
    return Enforcement(
        mode=_choice(_lower(mode), ENFORCEMENT_MODES, mode_field), cgroup=cgroup, root=root,
        floor=floor,
        # "no step larger than half the current quota": 0.5 is the most a step may take.
        max_step=_number(*get("max_step"), 0.01, 0.5),
        cooldown_seconds=_number(*get("cooldown_seconds"), 0.0, 86400.0),
        calm_seconds=_number(*get("calm_seconds"), 1.0, 86400.0),
        # At least 2 s: a lease is renewed once half of it is left, at most once a tick (<= 1 s
        # ticks renew in time; longer ticks want a longer TTL, see docs/enforcement.md).
        lease_ttl_seconds=_number(*get("lease_ttl_seconds"), 2.0, 7 * 86400.0),
        keep_on_exit=_bool(*get("keep_on_exit")),
        state_file=paths["state_file"],
        audit_log=paths["audit_log"],
        kill_switch=paths["kill_switch"],
        quotas=quotas,
        placement=placement,
    )


def parse_cores(value: Any, field: str, lo: float = MIN_CORES, hi: float = MAX_CORES) -> float:
    """CPU in human form -> cores.

    ``0.5``, ``"0.5"``, ``"0.5 cores"``, ``"1 cpu"`` -> 0.5 / 1.0; ``"50%"`` -> 0.5 (percent of
    one CPU, as systemd's CPUQuota=: ``"200%"`` is two cores); ``"500m"`` -> 0.5 (millicores,
    as Kubernetes writes them).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(field, f"expected cores (0.5, \"0.5 cores\", \"50%\", \"500m\"), got "
                          f"{_type_name(value)}")
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
            _only(amount, ("cpu",), f)
            if "cpu" not in amount:
                raise ConfigError(f"{f}.cpu", "required")
            out[tenant] = parse_cores(amount["cpu"], f"{f}.cpu")
        else:
            out[tenant] = parse_cores(amount, f)
    return MappingProxyType(out)


def parse_placement(value: Any, field: str) -> Placement | None:
    if value is None:
        return None
    m = _mapping(value, field)
    _only(m, ("delegated_root", "selectors"), field)
    root = m.get("delegated_root")
    if not isinstance(root, str) or not root.startswith("/"):
        raise ConfigError(f"{field}.delegated_root", "required: an absolute cgroup directory "
                          "delegated to tenantwatch, e.g. /sys/fs/cgroup/cpu/tenantwatch")
    root = os.path.normpath(root)
    if root == "/":
        raise ConfigError(f"{field}.delegated_root", "must not be /")
    items = m.get("selectors")
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{field}.selectors", "required: a non-empty list of "
                          "{process, cmdline, tenant}")
    if len(items) > MAX_SELECTORS:
        raise ConfigError(f"{field}.selectors", f"at most {MAX_SELECTORS}, got {len(items)}")
    return Placement(root, tuple(_selector(s, f"{field}.selectors[{i}]")
                                 for i, s in enumerate(items)))


def _selector(value: Any, field: str) -> Selector:
    if not isinstance(value, Mapping):  # a null item reads "got NoneType", not _mapping's {}
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
            has_group = "tenant" in _selector_regex(cmdline).groupindex
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
    """The first unknown key, in this section's own words ("unknown key; known: ..."): not
    validators._check_keys, whose message names the key and a close match."""
    for k in m:
        if k not in allowed:
            raise ConfigError(f"{field}.{k}", f"unknown key; known: {', '.join(allowed)}")
