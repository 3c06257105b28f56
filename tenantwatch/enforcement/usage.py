"""CPU use of each tenant's cgroup in cores, from cumulative CPU seconds sampled each tick.

Takes: cumulative seconds per tenant (the aggregation snapshot's backend usage, or a reader).
Gives: cores over the interval since the previous sample; nothing for a tenant's first sample,
after a counter reset (the cgroup was recreated) or when it cannot be read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Callable


class UsageMeter:
    def __init__(self, read: Callable[[str], float | None]) -> None:
        self._read = read  # used for tenants the caller gives no figure for
        self._last: dict[str, tuple[float, float]] = {}  # tenant -> (at, cumulative seconds)

    def sample(self, tenants: Iterable[str], now: float,
               given: Mapping[str, float] | None = None) -> dict[str, float]:
        """Cores per tenant; tenants not in ``tenants`` are forgotten."""
        out = {}
        wanted = set(tenants)
        for tenant in sorted(wanted):
            seconds = given.get(tenant) if given is not None else self._read(tenant)
            if seconds is None:
                continue
            before = self._last.get(tenant)
            self._last[tenant] = (now, seconds)
            if before is not None and now > before[0] and seconds >= before[1]:
                out[tenant] = (seconds - before[1]) / (now - before[0])
        for gone in set(self._last) - wanted:
            del self._last[gone]
        return out
