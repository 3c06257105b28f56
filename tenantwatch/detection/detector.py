"""Detection stage: one ``NodeTick`` per tick in, one ``DetectionResult`` out.

``Detector.update`` slides the window, judges contention and victims against the latency
baseline, runs the noisy-neighbour and hotspot rules with their hysteresis, and only then feeds
the tick to the baseline when nothing is flagged or on its way to be.  No I/O and no clock of its
own: time is ``NodeTick.at``, so the same ticks always give the same results.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from types import MappingProxyType
from typing import Any

from tenantwatch.config import DetectionSettings
from tenantwatch.detection.hotspot import Hotspots
from tenantwatch.detection.noisy import MAX_VICTIMS_IN_EVIDENCE, Contention, NoisyNeighbours
from tenantwatch.detection.records import Change, DetectionResult, NodeTick
from tenantwatch.detection.window import Baseline, Window, WindowStats
from tenantwatch.identity.records import RESERVED_LABELS

RESERVED = frozenset(RESERVED_LABELS)


class Detector:
    """Windowed noisy-neighbour and hotspot rules with hysteresis; see docs/detection.md.

    ``ignore`` adds labels that are never flagged and never victims to the built-in reserved ones
    (``__unattributed__``, ``__other__``, ``__invalid__``): pass the configured default tenant.
    Not thread-safe: call ``update`` from the tick thread only and publish the results.
    """

    def __init__(self, settings: DetectionSettings | None = None,
                 ignore: Iterable[str] = frozenset()) -> None:
        self.settings = settings or DetectionSettings()
        self.ignore = RESERVED | frozenset(ignore)
        self._window = Window(self.settings.window_seconds)
        self._baseline = Baseline(self.settings.baseline_seconds)
        self._noisy = NoisyNeighbours(self.settings, self.ignore)
        self._hotspots = Hotspots(self.settings, self.ignore)
        self._bounds: tuple[float, ...] | None = None

    def update(self, tick: NodeTick) -> DetectionResult:
        """Evaluate the window ending with ``tick``; raises ValueError on a malformed tick."""
        _check(tick)
        bounds = tuple(tick.latency_bounds)
        if bounds != self._bounds:  # histograms of other bounds cannot be added up: start over
            self._window.clear()
            self._baseline.clear()
            self._bounds = bounds
        self._window.push(tick)
        stats = self._window.stats()
        noisy = self._noisy.evaluate(stats, self._baseline)
        contention = noisy.contention
        hotspots = self._hotspots.evaluate(stats)
        baseline_fed = self._noisy.calm
        if baseline_fed:
            self._baseline.add(tick.interval_seconds, {
                t.tenant: t.latency_buckets for t in tick.tenants
                if t.tenant not in self.ignore and t.tenant not in contention.victims})
        changes: tuple[Change, ...] = noisy.changes + hotspots.changes
        total = stats.total_cpu_seconds
        # sorted by name alone: sorting (name, window) pairs compared tuples, ~80 ms at 10k
        # tenants (bench/tick_cost.py), against a few ms for the names
        tenants = stats.tenants
        shares = {t: (tenants[t].cpu_seconds / total if total > 0 else 0.0)
                  for t in sorted(tenants)}
        flagged = frozenset(v.tenant for v in noisy.flagged)
        summary = _contention(stats, contention, flagged, self._baseline, baseline_fed)
        summary["pending"] = dict(noisy.pending)
        summary["raise_blocked"] = {
            "noisy": list(noisy.blocked),
            "hotspots": [{"kind": k, "id": i, "tenant": t} for k, i, t in hotspots.blocked],
        }
        return DetectionResult(
            at=tick.at,
            window_seconds=stats.seconds,
            window_complete=stats.complete,
            shares=MappingProxyType(shares),
            noisy=noisy.flagged,
            hotspots=hotspots.active,
            changes=changes,
            contention=MappingProxyType(summary),
        )


def _contention(stats: WindowStats, c: Contention, flagged: frozenset[str], baseline: Baseline,
                baseline_fed: bool) -> dict[str, Any]:
    """Node-wide signals; a flagged tenant's own slowdown is not listed among the victims."""
    victims = [v for v in c.victims_of("") if v.tenant not in flagged]
    return {
        "any": c.psi or c.runq or bool(victims),
        "psi": c.psi,
        "psi_some_avg10": stats.psi_some_avg10,
        "runq": c.runq,
        "runq_p99_seconds": stats.runq_p99_seconds[-1],
        "runq_ticks_over": c.runq_ticks_over,
        "ticks": stats.ticks,
        "incomplete_ticks": stats.incomplete_ticks,
        "victims": [v.as_dict() for v in victims[:MAX_VICTIMS_IN_EVIDENCE]],
        "victims_total": len(victims),
        "baseline_seconds": baseline.covered_seconds,
        "baseline_frozen": not baseline_fed,
    }


def _check(tick: NodeTick) -> None:
    """Refuse a malformed tick before it enters any state, so the next good one still works."""
    if not (math.isfinite(tick.at) and math.isfinite(tick.interval_seconds)
            and tick.interval_seconds > 0):
        raise ValueError(f"tick at {tick.at}: needs a finite time and a positive interval, "
                         f"got interval {tick.interval_seconds}")
    nbuckets = len(tick.latency_bounds) + 1
    for t in tick.tenants:
        if len(t.latency_buckets) != nbuckets:
            raise ValueError(f"tenant {t.tenant!r} at {tick.at}: {len(t.latency_buckets)} latency "
                             f"buckets, expected {nbuckets} (the bounds and +Inf)")
