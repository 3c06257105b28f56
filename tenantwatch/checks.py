"""Small config validators shared by tenantwatch/config/ and the stages' own settings parsers
(detection/settings.py): every error is a ConfigError naming the field."""

from __future__ import annotations

from typing import Any

from tenantwatch.errors import ConfigError


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def int_in_range(value: Any, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(field, f"expected an integer, got {type_name(value)}")
    if not lo <= value <= hi:
        raise ConfigError(field, f"must be in {lo}..{hi}, got {value}")
    return value
