"""Builders of synthetic NodeTicks (1 s apart) and the scenarios the detection tests replay."""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from tenantwatch.detection import (
    CpuTick,
    DetectionResult,
    Detector,
    NodeTick,
    TenantTick,
    WorkerTick,
)

# The daemon's default bounds (config.DEFAULT_LATENCY_BUCKETS): p99 is read at their resolution.
BOUNDS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
)
TENANTS = ("A", "B", "C", "D")


def buckets(latencies: Iterable[float]) -> tuple[int, ...]:
    """Non-cumulative counts of ``latencies`` per bound of BOUNDS, plus the +Inf slot."""
    out = [0] * (len(BOUNDS) + 1)
    for latency in latencies:
        out[bisect.bisect_left(BOUNDS, latency)] += 1
    return tuple(out)


def tenant(name: str, cpu: float, requests: int = 100, latency: float = 0.003,
           trusted: bool = True, rng: random.Random | None = None) -> TenantTick:
    """``requests`` requests around ``latency`` (each +-20% when ``rng`` is given)."""
    lat = [latency * (rng.uniform(0.8, 1.2) if rng else 1.0) for _ in range(requests)]
    return TenantTick(name, trusted, cpu, requests, buckets(lat))


def node(at: float, tenants: Sequence[TenantTick] = (), *, psi: float | None = 0.0,
         runq: float | None = 0.0005, complete: bool = True, workers: Sequence[WorkerTick] = (),
         cpus: Sequence[CpuTick] = (), interval: float = 1.0) -> NodeTick:
    return NodeTick(at=at, interval_seconds=interval, tenants=tuple(tenants),
                    workers=tuple(workers), cpus=tuple(cpus), latency_bounds=BOUNDS,
                    psi_some_avg10=psi, runq_p99_seconds=runq, complete=complete)


@dataclass
class Phase:
    """``ticks`` ticks of steady load: CPU, requests and latency per tenant, node signals."""

    ticks: int
    cpu: Mapping[str, float]
    latency: Mapping[str, float] = field(default_factory=dict)  # default 3 ms
    requests: Mapping[str, int] = field(default_factory=dict)  # default 100
    psi: float = 1.0
    runq: float = 0.0005
    complete: bool = True


def replay(phases: Sequence[Phase], seed: int = 1, jitter: float = 0.2,
           start: float = 1.0) -> Iterator[NodeTick]:
    """The phases one after the other, every number jittered by +-``jitter`` (seeded)."""
    rng = random.Random(seed)

    def j(x: float) -> float:
        return x * rng.uniform(1 - jitter, 1 + jitter)

    at = start
    for phase in phases:
        for _ in range(phase.ticks):
            tenants = [
                tenant(name, j(cpu), max(1, round(j(phase.requests.get(name, 100)))),
                       j(phase.latency.get(name, 0.003)), rng=rng)
                for name, cpu in phase.cpu.items()
            ]
            yield node(at, tenants, psi=j(phase.psi), runq=j(phase.runq), complete=phase.complete)
            at += 1.0


def run(detector: Detector, ticks: Iterable[NodeTick]) -> list[DetectionResult]:
    return [detector.update(t) for t in ticks]


CALM = {name: 0.2 for name in TENANTS}  # four tenants, 0.2 s of gateway CPU each per second
# B sends 10x more expensive requests: 9 x 0.2 s = 75% of the gateway's CPU
INCIDENT_CPU = {"A": 0.2, "B": 1.8, "C": 0.2, "D": 0.2}
DOUBLED = {"A": 0.006, "B": 0.03, "C": 0.006, "D": 0.006}  # others' latency doubles (3 -> 6 ms)


def noisy_neighbour(seed: int = 1, calm: int = 60, incident: int = 30,
                    after: int = 60) -> list[NodeTick]:
    """The issue's scenario: 60 s steady, B goes 10x for ``incident`` s with PSI 30%, then calm."""
    return list(replay([
        Phase(calm, CALM),
        Phase(incident, INCIDENT_CPU, latency=DOUBLED, psi=30.0),
        Phase(after, CALM),
    ], seed=seed))
