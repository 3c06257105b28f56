"""The ``detection:`` section -> a frozen ``DetectionSettings`` (the detection stage's settings).

``parse_detection(value, field)`` takes the parsed YAML value of the section (None when the section
is absent) and the section's dotted name; it gives ``DetectionSettings`` or raises
``ConfigError(field, message)`` naming the offending key (``detection.share_factor``,
``detection.quotas.acme``).  The reasoning behind every default is in docs/detection.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from tenantwatch.config.validators import (
    _check_keys,
    _getter,
    _int,
    _mapping,
    _number,
    _type_name,
)
from tenantwatch.errors import ConfigError
from tenantwatch.identity.records import RESERVED_LABELS

# Bounds of the knobs.  They reject values that cannot mean what the operator wants, nothing more.
MAX_WINDOW_SECONDS = 600.0  # beyond 10 min a "window" is a trend, and detection is too slow to page
MIN_WINDOW_SECONDS = 0.1  # the shortest capture.tick_seconds: a window holds at least one tick
MIN_RELEASE_FACTOR = 0.5  # lower, and a flag raised at 2x fair share would hold at 1x: for ever
MAX_WINDOWS = 1000  # onset/clear counts: 1000 evaluations at 1 s ticks is over 16 min
MAX_BASELINE_SECONDS = 86_400.0  # the ring holds one bucket vector per tick; a day at most
MAX_SHARE_FACTOR = 100.0  # 100 x fair share already needs >= 100 tenants to be reachable
MAX_P99_FACTOR = 1000.0
MAX_LATENCY_SECONDS = 60.0  # no gateway histogram goes beyond this (capture buckets end at 10 s)
MAX_VICTIM_MIN_REQUESTS = 1_000_000_000
_RESERVED = RESERVED_LABELS


@dataclass(frozen=True)
class DetectionSettings:
    """Thresholds of the noisy-neighbour and hotspot rules; see docs/detection.md for each."""

    window_seconds: float = 5.0
    onset_windows: int = 3
    clear_windows: int = 5
    release_factor: float = 0.9
    min_share: float = 0.35
    share_factor: float = 2.0
    quotas: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    psi_threshold_percent: float = 10.0
    runq_p99_threshold_seconds: float = 0.005
    victim_p99_factor: float = 2.0
    victim_min_p99_seconds: float = 0.002
    victim_min_requests: int = 20
    baseline_seconds: float = 60.0
    hotspot_busy: float = 0.9
    hotspot_share: float = 0.6


def parse_detection(value: Any, field: str) -> DetectionSettings:
    """Validate the ``detection`` section ``value`` (None -> all defaults) found at ``field``."""
    m = _mapping(value, field)
    _check_keys(m, (f.name for f in fields(DetectionSettings)), field)
    get = _getter(m, field, DetectionSettings)

    def num(key: str, lo: float, hi: float, *, lo_open: bool = False) -> float:
        return _number(*get(key), lo, hi, lo_open)

    def integer(key: str, lo: int, hi: int) -> int:
        return _int(*get(key), lo, hi)

    window = num("window_seconds", MIN_WINDOW_SECONDS, MAX_WINDOW_SECONDS)
    baseline = num("baseline_seconds", 1.0, MAX_BASELINE_SECONDS)
    if baseline < window:
        raise ConfigError(f"{field}.baseline_seconds", f"must be at least window_seconds "
                          f"({window:g}): a baseline shorter than the window it judges is noise")
    return DetectionSettings(
        window_seconds=window,
        onset_windows=integer("onset_windows", 1, MAX_WINDOWS),
        clear_windows=integer("clear_windows", 1, MAX_WINDOWS),
        release_factor=num("release_factor", MIN_RELEASE_FACTOR, 1.0),
        min_share=num("min_share", 0.0, 1.0, lo_open=True),
        share_factor=num("share_factor", 1.0, MAX_SHARE_FACTOR),
        quotas=_quotas(m.get("quotas"), f"{field}.quotas"),
        psi_threshold_percent=num("psi_threshold_percent", 0.0, 100.0, lo_open=True),
        runq_p99_threshold_seconds=num("runq_p99_threshold_seconds", 0.0, MAX_LATENCY_SECONDS,
                                       lo_open=True),
        victim_p99_factor=num("victim_p99_factor", 1.0, MAX_P99_FACTOR, lo_open=True),
        victim_min_p99_seconds=num("victim_min_p99_seconds", 0.0, MAX_LATENCY_SECONDS),
        victim_min_requests=integer("victim_min_requests", 1, MAX_VICTIM_MIN_REQUESTS),
        baseline_seconds=baseline,
        hotspot_busy=num("hotspot_busy", 0.0, 1.0, lo_open=True),
        # above one half, at most one tenant can own a CPU or a worker
        hotspot_share=num("hotspot_share", 0.5, 1.0, lo_open=True),
    )


def _quotas(value: Any, field: str) -> Mapping[str, float]:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, Mapping):
        raise ConfigError(field, f"expected a mapping of tenant: share, got {_type_name(value)}")
    out: dict[str, float] = {}
    for tenant, quota in value.items():
        f = f"{field}.{tenant}"
        if not isinstance(tenant, str) or not tenant:
            raise ConfigError(f, f"tenant names are non-empty strings, got {_type_name(tenant)}")
        if tenant in _RESERVED:
            raise ConfigError(f, f"{tenant} is a reserved label and is never flagged")
        out[tenant] = _number(quota, f, 0.0, 1.0, lo_open=True)
    return MappingProxyType(out)
