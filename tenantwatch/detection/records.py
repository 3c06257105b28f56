"""Records crossing the detection stage: per-tick inputs (``NodeTick``) and verdicts out.

The inputs are the aggregation stage's per-tick records (``Aggregator.node_tick()``), re-exported
here so that detection has one name for them and imports keep flowing one way;
``Detector.update`` gives back one ``DetectionResult``.  Everything here is immutable;
``evidence`` and ``contention`` hold only JSON types (dict, list, str, int, float, bool, None) so
that the daemon can log them as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from tenantwatch.aggregation.records import CpuTick, NodeTick, TenantTick, WorkerTick

__all__ = [
    "NOISY_NEIGHBOUR", "Change", "CpuTick", "DetectionResult", "Hotspot", "NodeTick", "TenantTick",
    "Verdict", "WorkerTick",
]

NOISY_NEIGHBOUR = "noisy_neighbour"


@dataclass(frozen=True)
class Verdict:
    """A tenant flagged as a noisy neighbour (active) or a flag that has just been cleared.

    ``since`` is when the flag was raised (active) or cleared (inactive).  ``evidence`` keys:
    share, request_share, fair_share, quota, threshold, hold_threshold, heavy, contention (list
    of "psi", "runq", "victims"), window_seconds, window_complete (for this tenant),
    node_window_complete, incomplete_ticks, tenant_losses, psi_some_avg10, runq_p99_seconds, runq_ticks_over, victims ([{tenant, p99_before, p99_now,
    requests}]), victims_total, consecutive, calm, trusted, raised_at; clears add
    duration_seconds.
    """

    tenant: str
    kind: str = NOISY_NEIGHBOUR
    active: bool = True
    since: float = 0.0
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """One structured log line's worth: JSON types only."""
        return {"event": _event(self.kind, self.active), "kind": self.kind, "tenant": self.tenant,
                "active": self.active, "since": self.since, "evidence": dict(self.evidence)}


@dataclass(frozen=True)
class Hotspot:
    """A CPU or gateway worker saturated mostly by one tenant (active), or one that has cooled.

    ``id`` is the CPU number or the worker's tgid, as a string.  ``evidence`` keys: busy (fraction
    of the window), busy_seconds, tenant_seconds, tenant_share, window_seconds, window_complete
    (for the tenant), node_window_complete, incomplete_ticks, tenant_losses, consecutive, calm, raised_at; clears add duration_seconds.
    """

    kind: Literal["cpu", "worker"]
    id: str
    tenant: str
    active: bool
    since: float
    evidence: Mapping[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """One structured log line's worth: JSON types only."""
        return {"event": _event(f"hotspot_{self.kind}", self.active), "kind": self.kind,
                "id": self.id, "tenant": self.tenant, "active": self.active, "since": self.since,
                "evidence": dict(self.evidence)}


Change = Union[Verdict, Hotspot]


@dataclass(frozen=True)
class DetectionResult:
    """The outcome of one evaluation (one per tick)."""

    at: float
    window_seconds: float  # seconds the window actually covers (shorter while warming up)
    window_complete: bool  # no tick in the window lost events that reach every tenant
    shares: Mapping[str, float]  # CPU share per tenant over the window, 0..1, reserved included
    noisy: tuple[Verdict, ...]  # currently flagged only
    hotspots: tuple[Hotspot, ...]  # currently active only
    changes: tuple[Change, ...]  # raised or cleared in this update; log each once
    contention: Mapping[str, Any]  # node-wide signals and pending onsets, see docs/detection.md


def _event(kind: str, active: bool) -> str:
    return f"{kind}_{'raised' if active else 'cleared'}"
