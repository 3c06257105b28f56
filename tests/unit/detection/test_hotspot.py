"""Hotspots: a saturated worker or CPU mostly busy with one tenant, with onset/clear hysteresis."""

from __future__ import annotations

import random

from tenantwatch.config import DetectionSettings
from tenantwatch.detection import CpuTick, Detector, Hotspot, WorkerTick
from tenantwatch.detection.records import NodeTick
from tests.unit.detection.ticks import node, run


def worker_tick(at: float, cpu: float, by_tenant: dict[str, float], *,
                complete: bool = True) -> NodeTick:
    return node(at, workers=[WorkerTick(101, cpu, by_tenant),
                             WorkerTick(102, 0.3, {"A": 0.3})], complete=complete)


def cpu_tick(at: float, busy: float, by_tenant: dict[str, float]) -> NodeTick:
    return node(at, cpus=[CpuTick(0, 0.2, {"A": 0.1}), CpuTick(3, busy, by_tenant)])


def hotspot_changes(results: list) -> list[tuple[float, str, str, str, bool]]:
    return [(r.at, c.kind, c.id, c.tenant, c.active) for r in results for c in r.changes
            if isinstance(c, Hotspot)]


def test_saturated_worker_owned_by_one_tenant_is_a_hotspot() -> None:
    d = Detector()
    hot = run(d, [worker_tick(float(t), 0.97, {"B": 0.8, "A": 0.17}) for t in range(1, 11)])
    assert hotspot_changes(hot) == [(3.0, "worker", "101", "B", True)]
    h = hot[-1].hotspots[0]
    assert (h.kind, h.id, h.tenant, h.active, h.since) == ("worker", "101", "B", True, 3.0)
    assert h.evidence["busy"] == 0.97 and h.evidence["tenant_share"] == round(0.8 / 0.97, 6)
    assert h.evidence["window_seconds"] == 5.0 and h.evidence["window_complete"] is True
    assert hot[-1].noisy == (), "a hotspot is not a noisy-neighbour verdict"

    cool = run(d, [worker_tick(float(t), 0.3, {"B": 0.2, "A": 0.1}) for t in range(11, 21)])
    # window busy: (4 x 0.97 + 0.3) / 5 = 0.836 >= 0.81 (0.9 x release_factor) holds at 11;
    # (3 x 0.97 + 0.6) / 5 = 0.702 at 12 does not -> cleared on the 5th evaluation, 16
    assert hotspot_changes(cool) == [(16.0, "worker", "101", "B", False)]
    cleared = cool[5].changes[0]
    assert cleared.since == 16.0 and cleared.evidence["raised_at"] == 3.0
    assert cleared.evidence["duration_seconds"] == 13.0
    assert cleared.evidence["calm"] == 5
    assert cool[-1].hotspots == ()


def test_saturated_worker_shared_by_tenants_is_not_a_hotspot() -> None:
    d = Detector()
    r = run(d, [worker_tick(float(t), 1.0, {"B": 0.5, "A": 0.5}) for t in range(1, 20)])
    assert not any(x.hotspots for x in r)


def test_busy_cpu_with_one_tenant_is_a_hotspot_and_idle_cpu_is_not() -> None:
    d = Detector()
    r = run(d, [cpu_tick(float(t), 0.95, {"C": 0.7}) for t in range(1, 10)])
    assert hotspot_changes(r) == [(3.0, "cpu", "3", "C", True)]
    assert r[-1].hotspots[0].evidence["tenant_share"] == round(0.7 / 0.95, 6)
    # the same tenant alone on a CPU that is mostly idle is no hotspot
    r = run(Detector(), [cpu_tick(float(t), 0.5, {"C": 0.5}) for t in range(1, 10)])
    assert not any(x.hotspots for x in r)
    # a busy CPU whose time goes to other processes is no tenant's hotspot
    r = run(Detector(), [cpu_tick(float(t), 1.0, {"C": 0.3}) for t in range(1, 10)])
    assert not any(x.hotspots for x in r)


def test_reserved_tenants_never_own_a_hotspot() -> None:
    d = Detector(ignore={"common"})
    r = run(d, [node(float(t), workers=[WorkerTick(7, 1.0, {"__unattributed__": 0.9})],
                     cpus=[CpuTick(1, 1.0, {"common": 0.9})]) for t in range(1, 10)])
    assert not any(x.hotspots or x.changes for x in r)


def test_hotspot_does_not_flap_around_the_busy_threshold() -> None:
    rng = random.Random(11)
    d = Detector()
    ticks = [worker_tick(float(t), rng.uniform(0.8, 1.0), {"B": 0.75}) for t in range(1, 200)]
    assert len(hotspot_changes(run(d, ticks))) <= 1


def test_hotspot_moving_to_another_tenant_clears_one_and_raises_the_other() -> None:
    d = Detector()
    r = run(d, [worker_tick(float(t), 1.0, {"B": 1.0}) for t in range(1, 11)])
    r += run(d, [worker_tick(float(t), 1.0, {"C": 1.0}) for t in range(11, 21)])
    # B's window share: 0.6 at 12 (holds, >= 0.54), 0.4 at 13 -> cleared at 17;
    # C's: 0.4 at 12, 0.6 at 13 -> raised at 15
    assert hotspot_changes(r) == [
        (3.0, "worker", "101", "B", True),
        (15.0, "worker", "101", "C", True),
        (17.0, "worker", "101", "B", False),
    ]
    assert [(h.tenant, h.since) for h in r[15].hotspots] == [("B", 3.0), ("C", 15.0)]


def test_incomplete_windows_cannot_raise_a_hotspot() -> None:
    d = Detector()
    r = run(d, [worker_tick(float(t), 1.0, {"B": 0.9}, complete=False) for t in range(1, 8)])
    assert not any(x.hotspots for x in r)
    assert r[-1].contention["raise_blocked"]["hotspots"] == [
        {"kind": "worker", "id": "101", "tenant": "B"}]
    r = run(d, [worker_tick(float(t), 1.0, {"B": 0.9}) for t in range(8, 14)])
    assert hotspot_changes(r) == [(12.0, "worker", "101", "B", True)]


def test_hotspot_thresholds_are_settings() -> None:
    d = Detector(DetectionSettings(hotspot_busy=0.5, hotspot_share=0.9, onset_windows=1,
                                   clear_windows=1, window_seconds=1, release_factor=1.0))
    r = run(d, [worker_tick(1.0, 0.6, {"B": 0.58}), worker_tick(2.0, 0.6, {"B": 0.5})])
    assert hotspot_changes(r) == [(1.0, "worker", "101", "B", True),
                                  (2.0, "worker", "101", "B", False)]


def test_hotspot_evidence_cites_the_node_temperatures_when_there_are_any() -> None:
    import dataclasses
    temps = {"x86_pkg_temp/thermal_zone0": 91.0, "coretemp/Core 0": 88.5}
    d = Detector()
    hot = run(d, [dataclasses.replace(worker_tick(float(t), 0.97, {"B": 0.8, "A": 0.17}),
                                      temperatures_celsius=temps) for t in range(1, 6)])
    ev = hot[-1].hotspots[0].evidence
    assert ev["max_temperature_celsius"] == 91.0
    assert ev["temperatures_celsius"] == dict(sorted(temps.items()))
    # a machine without sensors (this VM): no temperature keys at all
    plain = run(Detector(), [worker_tick(float(t), 0.97, {"B": 0.8}) for t in range(1, 6)])
    assert "temperatures_celsius" not in plain[-1].hotspots[0].evidence
