"""The `enforcement` section."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from tenantwatch.config.constants import ENFORCEMENT_MODES, ENV_ENFORCEMENT_MODE
from tenantwatch.config.records import Enforcement
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
    _str,
    _template_dir,
)
from tenantwatch.errors import ConfigError


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
