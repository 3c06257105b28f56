"""The hotspot rule: a CPU or a gateway worker saturated, most of its time going to one tenant.

Takes the ``WindowStats`` of the current window; gives the hotspots currently active and those
raised or cleared by this evaluation, each a ``Hotspot`` with its evidence.  A worker is one
gateway process (``WorkerTick``): its CPU over the window against the window's length.  A CPU is
one logical CPU (``CpuTick``): its whole-machine busy time against the window's length, and the
gateway time charged to the tenant on it against that busy time.  Reserved labels (``ignore``)
never own a hotspot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tenantwatch.config import DetectionSettings
from tenantwatch.detection.records import Hotspot
from tenantwatch.detection.window import Hysteresis, Latch, Usage, WindowStats

HotspotKey = tuple[Literal["cpu", "worker"], str, str]  # (kind, id, tenant)
_DIGITS = 6  # rounding of fractions and seconds in evidence


@dataclass(frozen=True)
class HotspotOutcome:
    """What one evaluation of the rule found."""

    active: tuple[Hotspot, ...]
    changes: tuple[Hotspot, ...]
    blocked: tuple[HotspotKey, ...]  # onsets complete but not raised: the window lost events


class Hotspots:
    """Per-(kind, id, tenant) hysteresis over "saturated and owned by one tenant".

    An active hotspot is judged at the thresholds times ``release_factor``, so that a worker
    hovering at the busy threshold does not raise and clear in turn.
    """

    def __init__(self, settings: DetectionSettings, ignore: frozenset[str]) -> None:
        self.settings = settings
        self.ignore = ignore
        self._latches: Hysteresis[HotspotKey] = Hysteresis(settings.onset_windows,
                                                           settings.clear_windows)

    def evaluate(self, stats: WindowStats) -> HotspotOutcome:
        moved = self._latches.update(self._candidates(stats), stats.at,
                                     may_raise=lambda key: stats.complete_for(key[2]))

        def hotspot(key: HotspotKey, latch: Latch, active: bool) -> Hotspot:
            kind, ident, tenant = key
            evidence = self._evidence(key, stats, latch)
            if not active:
                evidence["duration_seconds"] = round(stats.at - latch.since, _DIGITS)
            return Hotspot(kind, ident, tenant, active, latch.since if active else stats.at,
                           evidence)

        latches = sorted(self._latches.active(), key=lambda kv: _key_order(kv[0]))
        active = [hotspot(k, latch, True) for k, latch in latches]
        raised = set(moved.raised)
        changes = [h for h in active if (h.kind, h.id, h.tenant) in raised]
        changes += [hotspot(k, latch, False) for k, latch in moved.cleared]
        return HotspotOutcome(tuple(active), tuple(sorted(changes, key=_order)), moved.blocked)

    def _candidates(self, stats: WindowStats) -> list[HotspotKey]:
        """Keys hot now: at the raise thresholds, or times release_factor for active ones."""
        s = self.settings
        held = {k for k, _ in self._latches.active()}
        out: list[HotspotKey] = []
        kinds: tuple[tuple[Literal["cpu", "worker"], Mapping[int, Usage]], ...] = (
            ("cpu", stats.cpus), ("worker", stats.workers))
        # no key is hot below the lower of the two busy thresholds: such a worker or CPU is
        # passed by before its tenants are summed (10,000 of them on a big node)
        least_busy = min(1.0, s.release_factor) * s.hotspot_busy
        for kind, usages in kinds:
            for ident in sorted(usages):
                usage = usages[ident]
                if stats.seconds <= 0 or usage.seconds <= 0:
                    continue
                busy = usage.seconds / stats.seconds
                if busy < least_busy:
                    continue
                for tenant in sorted(t for t in usage.by_tenant if t not in self.ignore):
                    key: HotspotKey = (kind, str(ident), tenant)
                    scale = s.release_factor if key in held else 1.0
                    share = usage.by_tenant[tenant] / usage.seconds
                    if busy >= scale * s.hotspot_busy and share >= scale * s.hotspot_share:
                        out.append(key)
        return out

    def _evidence(self, key: HotspotKey, stats: WindowStats, latch: Latch) -> dict[str, Any]:
        kind, ident, tenant = key
        usages: Mapping[int, Usage] = stats.cpus if kind == "cpu" else stats.workers
        usage = usages.get(int(ident), Usage(0.0, {}))
        tenant_seconds = usage.by_tenant.get(tenant, 0.0)
        heat = {"max_temperature_celsius": max(stats.temperatures_celsius.values()),
                "temperatures_celsius": dict(sorted(stats.temperatures_celsius.items()))} \
            if stats.temperatures_celsius else {}
        return {
            "busy": round(usage.seconds / stats.seconds, _DIGITS) if stats.seconds > 0 else 0.0,
            "busy_seconds": round(usage.seconds, _DIGITS),
            "tenant_seconds": round(tenant_seconds, _DIGITS),
            "tenant_share": round(tenant_seconds / usage.seconds, _DIGITS)
            if usage.seconds > 0 else 0.0,
            "window_seconds": round(stats.seconds, _DIGITS),
            "window_complete": stats.complete_for(tenant),
            "node_window_complete": stats.complete,
            "incomplete_ticks": stats.incomplete_ticks,
            "tenant_losses": w.losses if (w := stats.tenants.get(tenant)) else 0,
            "consecutive": latch.true_run,
            "calm": latch.false_run,
            "raised_at": latch.since,
            **heat,
        }


def _key_order(key: HotspotKey) -> tuple[str, int, str]:
    kind, ident, tenant = key
    return kind, int(ident), tenant


def _order(h: Hotspot) -> tuple[str, int, str]:
    return _key_order((h.kind, h.id, h.tenant))
