"""The `metrics`, `power` and `otel` sections."""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Any

from tenantwatch.config.records import Metrics, Otel, Power
from tenantwatch.config.validators import (
    _check_keys,
    _choice,
    _default,
    _list,
    _mapping,
    _number,
    _str,
)
from tenantwatch.errors import ConfigError


def _parse_metrics(value: Any, field: str) -> Metrics:
    if value is None:
        return Metrics()
    m = _mapping(value, field)
    _check_keys(m, ("histograms",), field)
    f = f"{field}.histograms"
    given = m.get("histograms", _default(Metrics, "histogram_sides"))
    sides = tuple(_choice(v, ("server", "client"), f"{f}[{i}]")
                  for i, v in enumerate(_list(given, f)))
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
    attrs = _mapping(m.get("resource_attributes", _default(Otel, "resource_attributes")),
                     f"{field}.resource_attributes")
    return Otel(
        endpoint=endpoint,
        interval_seconds=_number(m.get("interval_seconds", _default(Otel, "interval_seconds")),
                                 f"{field}.interval_seconds", 0.1, 3600.0),
        resource_attributes=MappingProxyType(
            {str(k): _str(v, f"{field}.resource_attributes.{k}") for k, v in attrs.items()}),
    )
