"""The issue's acceptance scenarios, replayed as synthetic 1 s ticks with seeded +-20% jitter."""

from __future__ import annotations

import json

import pytest

from tenantwatch.detection import DetectionResult, Detector, Verdict
from tests.unit.detection.ticks import CALM, Phase, noisy_neighbour, replay, run

CALM_TICKS = 60
INCIDENT_TICKS = 30
SEEDS = range(1, 11)


def changes(results: list[DetectionResult]) -> list[tuple[int, Verdict]]:
    """(index of the tick, change) of every noisy-neighbour raise and clear."""
    return [(i, c) for i, r in enumerate(results) for c in r.changes if isinstance(c, Verdict)]


@pytest.mark.parametrize("seed", SEEDS)
def test_noisy_neighbour_is_flagged_fast_cleared_fast_and_never_flaps(seed: int) -> None:
    results = run(Detector(), noisy_neighbour(seed, CALM_TICKS, INCIDENT_TICKS, after=60))

    assert all(not r.noisy for r in results[:CALM_TICKS]), "steady equal load is not flagged"
    flagged = {v.tenant for r in results for v in r.noisy}
    assert flagged == {"B"}, "no other tenant is flagged at any point"

    seen = changes(results)
    assert [(c.tenant, c.active) for _, c in seen] == [("B", True), ("B", False)], "no flapping"
    (raised_at, raised), (cleared_at, cleared) = seen
    assert raised_at - CALM_TICKS < 10, f"flagged {raised_at - CALM_TICKS + 1} s after onset"
    incident_end = CALM_TICKS + INCIDENT_TICKS
    assert raised_at < incident_end
    assert 0 <= cleared_at - incident_end < 30, "cleared within 30 s after B stops"
    assert all(r.noisy for r in results[raised_at:cleared_at]), "flagged throughout"
    assert not any(r.noisy for r in results[cleared_at:])
    assert not any(r.hotspots or r.changes for r in results[cleared_at + 1:])

    ev = raised.evidence
    assert ev["share"] >= 0.6 and ev["fair_share"] == 0.25 and ev["threshold"] == 0.5
    assert ev["window_seconds"] == 5.0 and ev["window_complete"] is True
    assert ev["psi_some_avg10"] >= 20 and "psi" in ev["contention"]
    assert ev["consecutive"] == 3
    assert {v["tenant"] for v in ev["victims"]} == {"A", "C", "D"}
    for v in ev["victims"]:
        assert v["p99_now"] >= 2 * v["p99_before"] and v["requests"] >= 20
    assert raised.since == results[raised_at].at
    assert cleared.since == results[cleared_at].at
    assert cleared.evidence["raised_at"] == raised.since
    assert cleared.evidence["duration_seconds"] == cleared.since - raised.since
    assert cleared.evidence["calm"] == 5


@pytest.mark.parametrize("seed", SEEDS)
def test_largest_tenant_without_contention_is_never_flagged(seed: int) -> None:
    # A takes 70% of the gateway's CPU, PSI ~0, nobody's latency moves.
    phases = [Phase(200, {"A": 1.4, "B": 0.2, "C": 0.2, "D": 0.2}, psi=0.5)]
    results = run(Detector(), replay(phases, seed=seed))
    heavy = [r for r in results if r.shares["A"] >= 0.5]
    assert len(heavy) > 150, "A is above the heavy threshold: only the contention gate holds"
    assert not any(r.noisy or r.changes for r in results)
    assert not any(r.contention["pending"] for r in results)


def test_same_ticks_give_the_same_results() -> None:
    ticks = noisy_neighbour(seed=7)
    a = [[c.as_dict() for c in r.changes] for r in run(Detector(), ticks)]
    b = [[c.as_dict() for c in r.changes] for r in run(Detector(), ticks)]
    assert a == b and any(a)


def test_changes_and_contention_are_json_ready() -> None:
    for r in run(Detector(), noisy_neighbour(seed=3)):
        for c in r.changes:
            json.dumps(c.as_dict(), allow_nan=False)
        json.dumps(dict(r.contention), allow_nan=False)
        json.dumps(dict(r.shares), allow_nan=False)


def test_a_long_incident_keeps_its_flag_and_its_victims() -> None:
    """The baseline is frozen while B is flagged: 5 min later the others are still victims."""
    slow = {"A": 0.02, "B": 0.03, "C": 0.02, "D": 0.02}
    phases = [Phase(60, CALM),
              Phase(300, {"A": 0.2, "B": 1.8, "C": 0.2, "D": 0.2}, latency=slow, psi=0.5)]
    results = run(Detector(), replay(phases, seed=2))
    assert [(c.tenant, c.active) for _, c in changes(results)] == [("B", True)]
    last = results[-1]
    assert [v.tenant for v in last.noisy] == ["B"]
    assert last.noisy[0].evidence["contention"] == ["victims"]
    assert {v["tenant"] for v in last.noisy[0].evidence["victims"]} == {"A", "C", "D"}
    assert last.contention["baseline_frozen"] is True


def test_recovery_after_an_incident_does_not_flag_anyone_again() -> None:
    ticks = noisy_neighbour(seed=4, after=300)
    results = run(Detector(), ticks)
    assert len(changes(results)) == 2
    assert results[-1].contention["baseline_frozen"] is False
    assert results[-1].contention["victims_total"] == 0
