"""The sliding window, the latency baseline and the hysteresis latches the rules share.

``Window`` keeps the ``NodeTick``s of the last ``window_seconds`` and sums them into a
``WindowStats``; ``Baseline`` keeps per-tenant latency histograms of the last ``baseline_seconds``
of calm ticks; ``Hysteresis`` turns a per-evaluation condition into raise/clear transitions.
All three are plain in-memory state driven by the ticks' own clock (``NodeTick.at``).
"""

from __future__ import annotations

import dataclasses
import operator
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from types import MappingProxyType
from typing import Generic, NamedTuple, TypeVar

from tenantwatch.aggregation import estimate_quantile
from tenantwatch.detection.records import NodeTick

K = TypeVar("K", bound=Hashable)

_EPSILON = 1e-9  # seconds; absorbs float error when comparing sums of tick intervals


def p99(bounds: Sequence[float], buckets: Sequence[int]) -> float | None:
    """p99 of non-cumulative ``buckets`` (one per bound + a last +Inf slot): the upper bound of
    the bucket holding it (the highest finite bound when it is in +Inf), None when empty.

    estimate_quantile's answer, found by bisection: counts are never negative, so the
    cumulative counts never go down (detection asks this twice per tenant and tick)."""
    cumulative = list(accumulate(buckets))
    if len(cumulative) != len(bounds) + 1:
        return estimate_quantile(bounds, cumulative, 0.99)  # raises its error
    count = cumulative[-1]
    if count <= 0:
        return None
    i = bisect_left(cumulative, 0.99 * count, 0, len(bounds))
    return float(bounds[i] if i < len(bounds) else bounds[-1])


class TenantWindow(NamedTuple):
    """One tenant's totals over the window (a NamedTuple: the window builds one per tenant per
    tick, 10,000 a tick on a big node)."""

    cpu_seconds: float
    requests: int
    trusted: bool  # at least one tick of the window said so
    buckets: tuple[int, ...]  # non-cumulative, summed over the window
    trusted_cpu_seconds: float = 0.0  # the part of cpu_seconds under trusted identities
    losses: int = 0  # kernel losses charged to the tenant (TenantTick.losses), summed


class Usage:
    """Time of one worker or CPU over the window and the part charged to each tenant.

    ``by_tenant`` is summed from the window's ticks when first read: the hotspot rule reads it
    only for a busy worker or CPU, and each tick of a node with 10,000 tenants has 10,000
    entries per worker and CPU.  Read-only once built, like the frozen record it replaces.
    """

    __slots__ = ("_by_tenant", "_parts", "seconds")

    def __init__(self, seconds: float, by_tenant: Mapping[str, float] | None = None,
                 parts: Sequence[Mapping[str, float]] = ()) -> None:
        self.seconds = seconds  # the worker's CPU time, or the CPU's busy time
        self._by_tenant = by_tenant
        self._parts = parts  # the ticks' by_tenant, oldest first, summed on first read

    @property
    def by_tenant(self) -> Mapping[str, float]:
        if self._by_tenant is None:
            sums: dict[str, float] = {}
            for part in self._parts:
                for tenant, s in part.items():
                    sums[tenant] = sums.get(tenant, 0.0) + s
            self._by_tenant, self._parts = MappingProxyType(sums), ()
        return self._by_tenant

    def __repr__(self) -> str:
        return f"Usage(seconds={self.seconds!r}, by_tenant={dict(self.by_tenant)!r})"


@dataclass(frozen=True)
class WindowStats:
    """Sums over the ticks of one window."""

    at: float
    seconds: float  # sum of the ticks' intervals
    ticks: int
    incomplete_ticks: int
    bounds: tuple[float, ...]
    tenants: Mapping[str, TenantWindow]
    total_cpu_seconds: float  # all tenants, reserved labels included
    total_requests: int
    workers: Mapping[int, Usage]
    cpus: Mapping[int, Usage]
    psi_some_avg10: float | None  # of the latest tick
    runq_p99_seconds: tuple[float | None, ...]  # one per tick, oldest first
    # the latest tick's temperatures, degrees Celsius by sensor (none on machines without)
    temperatures_celsius: Mapping[str, float] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """No tick of the window lost events that reach every tenant."""
        return self.incomplete_ticks == 0

    def complete_for(self, tenant: str) -> bool:
        """Complete for this tenant: no loss reaching every tenant, and none charged to it
        (docs/detection.md, "Completeness").  Flags and caps of the tenant wait for it."""
        w = self.tenants.get(tenant)
        return self.complete and (w is None or w.losses == 0)


class Window:
    """The ticks whose middle lies within the last ``seconds`` before the latest tick's end.

    The middle, not the end, decides, so that jitter in the tick clock never lets a window of
    5 s at 1 s ticks hold 6 ticks or 4.

    The sums are kept running: a tick is added once when it comes and taken off once when it
    leaves, instead of every tick of the window being summed again at each tick (at 10,000
    tenants active every second, 5 ticks of them: bench/tick_cost.py).  Seconds are summed as
    integer nanoseconds, so taking a tick off leaves exactly the sum of the others (a float
    sum would drift).  A tenant stays while a tick of the window has it, even with zeros, as
    when every tick was summed again.  Workers and CPUs are few: their seconds are summed at
    each stats(), their per-tenant time only when read (Usage).
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._ticks: deque[tuple[NodeTick, _TenantRows]] = deque()
        self._tenants: dict[str, list] = {}  # name -> [ticks, cpu ns, requests, trusted ticks,
        #                                        trusted cpu ns, losses, buckets]

    def __len__(self) -> int:
        return len(self._ticks)

    def clear(self) -> None:
        self._ticks.clear()
        self._tenants.clear()

    def push(self, tick: NodeTick) -> None:
        """Add the latest tick; a clock that goes back or stands still starts the window over."""
        rows = _rows(tick)  # raises on a time that is not a number, before any change
        if self._ticks and tick.at <= self._ticks[-1][0].at:
            self.clear()
        self._add(tick, rows)
        start = tick.at - self.seconds
        ticks = self._ticks
        while ticks and ticks[0][0].at - ticks[0][0].interval_seconds / 2 <= start:
            self._remove(ticks.popleft())
        if not ticks:  # an interval longer than the window: keep the latest tick anyway
            self._add(tick, rows)

    def _add(self, tick: NodeTick, rows: _TenantRows) -> None:
        self._ticks.append((tick, rows))
        sums = self._tenants
        add = operator.add
        for name, cpu, requests, trusted, trusted_cpu, losses, buckets in rows:
            e = sums.get(name)
            if e is None:
                sums[name] = [1, cpu, requests, trusted, trusted_cpu, losses, list(buckets)]
                continue
            e[0] += 1
            e[1] += cpu
            e[2] += requests
            e[3] += trusted
            e[4] += trusted_cpu
            e[5] += losses
            if requests or any(buckets):
                e[6] = list(map(add, e[6], buckets))

    def _remove(self, item: tuple[NodeTick, _TenantRows]) -> None:
        rows = item[1]
        sums = self._tenants
        sub = operator.sub
        for name, cpu, requests, trusted, trusted_cpu, losses, buckets in rows:
            e = sums[name]
            if e[0] == 1:
                del sums[name]
                continue
            e[0] -= 1
            e[1] -= cpu
            e[2] -= requests
            e[3] -= trusted
            e[4] -= trusted_cpu
            e[5] -= losses
            if requests or any(buckets):
                e[6] = list(map(sub, e[6], buckets))

    def stats(self) -> WindowStats:
        """Sums over the window; every tick must have the same bounds (the caller checks)."""
        if not self._ticks:
            raise ValueError("the window holds no tick yet")
        latest = self._ticks[-1][0]
        new = tuple.__new__
        tenants = {name: new(TenantWindow, (e[1] / _NS, e[2], e[3] > 0, tuple(e[6]),
                                           e[4] / _NS, e[5]))
                   for name, e in self._tenants.items()}
        return WindowStats(
            at=latest.at,
            seconds=sum(t.interval_seconds for t, _ in self._ticks),
            ticks=len(self._ticks),
            incomplete_ticks=sum(1 for t, _ in self._ticks if not t.complete),
            bounds=tuple(latest.latency_bounds),
            tenants=tenants,
            total_cpu_seconds=sum(e[1] for e in self._tenants.values()) / _NS,
            total_requests=sum(e[2] for e in self._tenants.values()),
            workers=_usages((w.tgid, w.cpu_seconds, w.by_tenant)
                            for t, _ in self._ticks for w in t.workers),
            cpus=_usages((c.cpu, c.busy_seconds, c.by_tenant)
                         for t, _ in self._ticks for c in t.cpus),
            psi_some_avg10=latest.psi_some_avg10,
            runq_p99_seconds=tuple(t.runq_p99_seconds for t, _ in self._ticks),
            temperatures_celsius=latest.temperatures_celsius,
        )


_NS = 1e9  # seconds -> the window's integer nanoseconds


# One tick's tenants as the window sums them, converted once when the tick comes and taken
# off as they are: (name, cpu ns, requests, trusted 0/1, trusted cpu ns, losses, buckets).
_TenantRows = list[tuple[str, int, int, int, int, int, tuple[int, ...]]]


def _rows(tick: NodeTick) -> _TenantRows:
    try:
        return [(t.tenant, int(t.cpu_seconds * _NS + 0.5), t.requests, 1 if t.trusted else 0,
                 int(t.trusted_cpu_seconds * _NS + 0.5) if t.trusted_cpu_seconds else 0,
                 t.losses, t.latency_buckets) for t in tick.tenants]
    except (ValueError, OverflowError):  # int() of a NaN or an infinity
        raise ValueError(f"tick at {tick.at}: a CPU time that is not a finite number") from None


def _usages(items: Iterable[tuple[int, float, Mapping[str, float]]]) -> dict[int, Usage]:
    """(id, seconds, by_tenant) of each tick's worker or CPU, oldest first -> a Usage per id:
    the seconds summed now, by_tenant when read."""
    seconds: dict[int, float] = {}
    parts: dict[int, list[Mapping[str, float]]] = {}
    for ident, s, by_tenant in items:
        seconds[ident] = seconds.get(ident, 0.0) + s
        parts.setdefault(ident, []).append(by_tenant)
    return {ident: Usage(s, parts=parts[ident]) for ident, s in seconds.items()}


# The baseline ring holds this many slots, each summing baseline_seconds / BASELINE_SLOTS of calm
# ticks.  Memory is O(slots x tenants with requests x buckets) whatever the tick length: with
# 1000 busy tenants and 17 buckets, ~13 x 1000 x 17 ints.  12 slots of 5 s at the default 60 s:
# the baseline covers 60..65 s, and ages out 5 s at a time.
BASELINE_SLOTS = 12


class Baseline:
    """Per-tenant latency histograms summed over the last ``seconds`` of ticks that were added.

    The caller adds only calm ticks, so time spent in an incident does not age the baseline out:
    it is frozen until calm ticks come again.  Ticks are summed into ``BASELINE_SLOTS`` slots
    (plus the one filling up); running sums keep ``p99()`` O(buckets).
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.slot_seconds = seconds / BASELINE_SLOTS
        self._ring: deque[_Slot] = deque()  # full slots, oldest first
        self._open = _Slot()
        self._sums: dict[str, list[int]] = {}  # over the ring and the open slot

    def clear(self) -> None:
        self._ring.clear()
        self._open = _Slot()
        self._sums.clear()

    @property
    def covered_seconds(self) -> float:
        return sum(slot.seconds for slot in self._ring) + self._open.seconds

    def add(self, interval_seconds: float, buckets: Mapping[str, Sequence[int]]) -> None:
        """Add one tick's non-cumulative buckets per tenant (tenants without requests skipped)."""
        self._open.seconds += interval_seconds
        for tenant, b in buckets.items():
            if not any(b):
                continue
            for sums in (self._open.buckets, self._sums):
                acc = sums.get(tenant)
                sums[tenant] = list(b) if acc is None else list(map(operator.add, acc, b))
        if self._open.seconds < self.slot_seconds - _EPSILON:
            return
        self._ring.append(self._open)
        self._open = _Slot()
        covered = self.covered_seconds
        while len(self._ring) > 1 and covered - self._ring[0].seconds >= self.seconds - _EPSILON:
            old = self._ring.popleft()
            covered -= old.seconds
            for tenant, b in old.buckets.items():
                acc = list(map(operator.sub, self._sums[tenant], b))
                if any(acc):
                    self._sums[tenant] = acc
                else:
                    del self._sums[tenant]

    def requests(self, tenant: str) -> int:
        return sum(self._sums.get(tenant, ()))

    def p99(self, bounds: Sequence[float], tenant: str) -> float | None:
        b = self._sums.get(tenant)
        return None if b is None else p99(bounds, b)


@dataclass
class _Slot:
    seconds: float = 0.0
    buckets: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class Latch:
    """Hysteresis state of one key."""

    active: bool = False
    since: float = 0.0  # when the key was last raised (active) or cleared
    true_run: int = 0  # consecutive evaluations with the condition true
    false_run: int = 0  # consecutive evaluations with the condition false


@dataclass(frozen=True)
class Transitions(Generic[K]):
    """What one ``Hysteresis.update`` changed."""

    raised: tuple[K, ...]
    cleared: tuple[tuple[K, Latch], ...]  # (key, its latch just before it cleared)
    blocked: tuple[K, ...]  # would have been raised, but raising was not allowed


class Hysteresis(Generic[K]):
    """Raise a key after ``onset`` consecutive true evaluations, clear it after ``clear`` false.

    Keys are tracked only while active or while their condition holds, so memory follows the
    number of suspects, not the number of tenants ever seen.
    """

    def __init__(self, onset: int, clear: int) -> None:
        self.onset = onset
        self.clear = clear
        self._latches: dict[K, Latch] = {}

    def latch(self, key: K) -> Latch | None:
        return self._latches.get(key)

    def active(self) -> Iterable[tuple[K, Latch]]:
        return ((k, v) for k, v in self._latches.items() if v.active)

    def pending(self) -> Iterable[tuple[K, Latch]]:
        return ((k, v) for k, v in self._latches.items() if not v.active and v.true_run > 0)

    def update(self, true_keys: Collection[K], at: float,
               may_raise: bool | Callable[[K], bool]) -> Transitions[K]:
        """One evaluation: ``true_keys`` hold their condition now, every other key does not.
        ``may_raise`` says whether an onset may raise now (per key when a callable); one that
        may not is reported as blocked and raises at the first evaluation that may.

        Keys are visited in a fixed order (tracked ones first, then ``true_keys`` in the order
        given), so the transitions come out in the same order for the same inputs.
        """
        raised: list[K] = []
        cleared: list[tuple[K, Latch]] = []
        blocked: list[K] = []
        true_set = set(true_keys)
        for key in list(dict.fromkeys([*self._latches, *true_keys])):
            latch = self._latches.setdefault(key, Latch())
            if key in true_set:
                latch.true_run += 1
                latch.false_run = 0
            else:
                latch.true_run = 0
                latch.false_run += 1
            if not latch.active and latch.true_run >= self.onset:
                if may_raise(key) if callable(may_raise) else may_raise:
                    latch.active, latch.since = True, at
                    raised.append(key)
                else:
                    blocked.append(key)
            elif latch.active and latch.false_run >= self.clear:
                cleared.append((key, dataclasses.replace(latch)))
                latch.active, latch.since = False, at
            if not latch.active and latch.true_run == 0:
                del self._latches[key]
        return Transitions(tuple(raised), tuple(cleared), tuple(blocked))
