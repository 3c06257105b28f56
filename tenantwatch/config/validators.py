"""Small validators shared by the sections: each raises ConfigError(field, message)."""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import ipaddress
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any, Callable

from tenantwatch.config.constants import _HOST_LITERAL, _HOSTNAME, _PORT, ENV_VARS, MAX_SELECTORS
from tenantwatch.errors import ConfigError

log = logging.getLogger("tenantwatch.config")

# --- small validators ------------------------------------------------------------------------


def _default(cls: type, name: str) -> Any:
    """The default of the dataclass ``cls``'s field ``name``, the one copy of it, in the shape a
    parser reads from YAML: an enum as its value, in a tuple too (``Side.SERVER`` -> "server")."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return _yaml_shape(f.default)
            if f.default_factory is not dataclasses.MISSING:
                return _yaml_shape(f.default_factory())
            raise TypeError(f"{cls.__name__}.{name} has no default")
    raise TypeError(f"{cls.__name__} has no field {name!r}")


def _getter(m: Mapping[str, Any], field: str, cls: type) -> Callable[[str], tuple[Any, str]]:
    """``get(key)``: ``m``'s value of key (else the default of ``cls``'s field key) and the key's
    dotted field, the first two arguments of a validator: ``_int(*get("max_entries"), 1, 10)``."""
    def get(key: str) -> tuple[Any, str]:
        return m.get(key, _default(cls, key)), _join(field, key)
    return get


def _yaml_shape(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return tuple(_yaml_shape(v) for v in value)
    return value


def _template_dir(template: str) -> str:
    """The directory of a cgroup path template before its {tenant}: enforcement.root's default."""
    return os.path.dirname(template.split("{tenant}", 1)[0]) or "/"


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


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


def _int(value: Any, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(field, f"expected an integer, got {_type_name(value)}")
    if not lo <= value <= hi:
        raise ConfigError(field, f"must be in {lo}..{hi}, got {value}")
    return value


def _number(value: Any, field: str, lo: float, hi: float, lo_open: bool = False) -> float:
    """A finite int or float in lo..hi (both included), or in (lo, hi] with ``lo_open``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(field, f"expected a number, got {_type_name(value)}")
    low_ok = value > lo if lo_open else value >= lo
    if not (math.isfinite(value) and low_ok and value <= hi):
        if lo_open:
            span = f"({lo:g}, {hi:g}]" if math.isfinite(hi) else f"({lo:g}, inf)"
        else:
            span = f"{lo:g}" if math.isinf(hi) else f"{lo:g}..{hi:g}"
        raise ConfigError(field, f"must be a finite number in {span}, got {value}")
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


@functools.lru_cache(maxsize=MAX_SELECTORS)
def _selector_regex(pattern: str) -> re.Pattern[str]:
    """An enforcement.placement selector's cmdline regex, compiled once (raises re.error)."""
    return re.compile(pattern)


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
