"""The `capture` section: kernel-side settings and the identity-map size."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from tenantwatch.config.constants import (
    ENV_TICK_SECONDS,
    MAX_IDENTITIES_LIMIT,
    MAX_LATENCY_BUCKETS,
    RESERVED_IDENTITIES,
    default_max_identities,
)
from tenantwatch.config.records import Capture
from tenantwatch.config.validators import (
    _bool,
    _check_keys,
    _choice,
    _default,
    _getter,
    _int,
    _list,
    _lower,
    _mapping,
    _number,
    _pick,
)
from tenantwatch.errors import ConfigError
from tenantwatch.kernel.records import Side


def _parse_capture(value: Any, field: str, env: Mapping[str, str], max_tenants: int) -> Capture:
    m = _mapping(value, field)
    _check_keys(m, ("latency_buckets", "tick_seconds", "max_connections", "rescan_seconds",
                    "slow_request_seconds", "slow_requests_per_second", "tls",
                    "tokens_per_second", "h2_budget_ms_per_tick", "max_identities", "sides"),
                field)
    f = f"{field}.latency_buckets"
    items = _list(m.get("latency_buckets", _default(Capture, "latency_buckets")), f)
    if not 1 <= len(items) <= MAX_LATENCY_BUCKETS:
        raise ConfigError(f, f"needs 1..{MAX_LATENCY_BUCKETS} bounds (the kernel's histogram "
                          f"slots), got {len(items)}")
    buckets: list[float] = []
    for i, b in enumerate(items):
        bound = _number(b, f"{f}[{i}]", 1e-9, math.inf)
        if buckets and bound <= buckets[-1]:
            raise ConfigError(f"{f}[{i}]", f"{b} is not greater than the previous bound")
        buckets.append(bound)
    tick, tick_field = _pick(m, "tick_seconds", field, _default(Capture, "tick_seconds"), env,
                             ENV_TICK_SECONDS, float)
    get = _getter(m, field, Capture)
    return Capture(
        latency_buckets=tuple(buckets),
        tick_seconds=_number(tick, tick_field, 0.1, 60.0),
        max_connections=_int(*get("max_connections"), 1024, 1048576),
        rescan_seconds=_number(*get("rescan_seconds"), 0.1, 3600.0),
        slow_request_seconds=_number(*get("slow_request_seconds"), 0.0, 3600.0),
        slow_requests_per_second=_int(*get("slow_requests_per_second"), 1, 100000),
        tls=_bool(*get("tls")),
        tokens_per_second=_int(*get("tokens_per_second"), 1, 100000),
        h2_budget_ms_per_tick=_number(*get("h2_budget_ms_per_tick"), 1.0, 60000.0),
        max_identities=_max_identities(m, field, max_tenants),
        sides=_sides(*get("sides")),
    )


def _sides(value: Any, field: str) -> tuple[Side, ...]:
    """capture.sides: the legs the kernel follows, each once, at least one."""
    items = _list(value, field)
    if not 1 <= len(items) <= 2:
        raise ConfigError(field, f"needs 1 or 2 of server, client; got {len(items)} entries")
    sides: list[Side] = []
    for i, item in enumerate(items):
        side = Side(_choice(_lower(item), tuple(s.value for s in Side), f"{field}[{i}]"))
        if side in sides:
            raise ConfigError(f"{field}[{i}]", f"{side.value} is named twice")
        sides.append(side)
    return tuple(sorted(sides, key=lambda s: s is Side.CLIENT))


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
