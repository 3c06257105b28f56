"""The shared validators' messages: a closed range as lo..hi, a range open at its low end as
(lo, hi]; the field is always the caller's."""

from __future__ import annotations

import math
from typing import Any

import pytest

from tenantwatch.config.validators import _check_keys, _int, _number
from tenantwatch.errors import ConfigError


@pytest.mark.parametrize(("value", "lo", "hi", "lo_open", "message"), [
    (0, 1.0, 100.0, False, "must be a finite number in 1..100, got 0"),
    (0, 1e-9, math.inf, False, "must be a finite number in 1e-09, got 0"),
    (0, 0.0, 1.0, True, "must be a finite number in (0, 1], got 0"),
    (1.5, 0.5, 1.0, True, "must be a finite number in (0.5, 1], got 1.5"),
    (math.nan, 0.0, 1.0, False, "must be a finite number in 0..1, got nan"),
    (math.inf, 0.0, math.inf, False, "must be a finite number in 0, got inf"),
    (True, 0.0, 1.0, False, "expected a number, got bool"),
    (None, 0.0, 1.0, True, "expected a number, got null"),
])
def test_number_messages(value: Any, lo: float, hi: float, lo_open: bool, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        _number(value, "s.k", lo, hi, lo_open)
    assert (e.value.field, e.value.message) == ("s.k", message)


def test_number_bounds() -> None:
    assert _number(1, "k", 1.0, 2.0) == 1.0 and isinstance(_number(1, "k", 1.0, 2.0), float)
    assert _number(2, "k", 1.0, 2.0, lo_open=True) == 2.0
    with pytest.raises(ConfigError):
        _number(1, "k", 1.0, 2.0, lo_open=True)


def test_int_messages() -> None:
    assert _int(5, "k", 1, 10) == 5
    for value, message in ((0, "must be in 1..10, got 0"), (2.0, "expected an integer, got float"),
                           (False, "expected an integer, got bool")):
        with pytest.raises(ConfigError) as e:
            _int(value, "k", 1, 10)
        assert e.value.message == message


def test_check_keys_names_the_first_unknown_key_and_lists_all() -> None:
    with pytest.raises(ConfigError) as e:
        _check_keys({"windw": 1, "zzz": 2, "ok": 3}, ("window", "ok"), "detection")
    assert e.value.field == "detection.windw"
    assert e.value.message == ("unknown keys 'windw' (did you mean 'window'?), 'zzz'; known: "
                               "window, ok")
