"""The noisy-neighbour rule piece by piece: heavy, contention, victims, quotas, lost events."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any

from tenantwatch.config import DetectionSettings
from tenantwatch.detection import Detector, Verdict
from tenantwatch.detection.records import NodeTick
from tests.unit.detection.ticks import CALM, INCIDENT_CPU, Phase, node, replay, run, tenant


def noisy_changes(results: list) -> list[tuple[float, str, bool]]:
    return [(r.at, c.tenant, c.active) for r in results for c in r.changes
            if isinstance(c, Verdict)]


def steady(at: float, cpu: dict[str, float], *, psi: float | None = 0.0, complete: bool = True,
           latency: dict[str, float] | None = None, runq: float | None = 0.0005,
           requests: int = 100) -> NodeTick:
    """One tick without jitter."""
    latency = latency or {}
    return node(at, [tenant(t, c, requests, latency.get(t, 0.003)) for t, c in cpu.items()],
                psi=psi, complete=complete, runq=runq)


def ticks(start: float, n: int, cpu: dict[str, float], **kw: Any) -> list[NodeTick]:
    return [steady(start + i, cpu, **kw) for i in range(n)]


def test_heavy_and_contended_raises_after_onset_windows_and_clears_after_clear_windows() -> None:
    d = Detector(DetectionSettings(release_factor=1.0))  # no threshold band: counts only
    calm = run(d, ticks(1, 10, CALM))
    hot = run(d, ticks(11, 5, INCIDENT_CPU, psi=50.0))
    # window shares of B at 11, 12, 13: 0.45, 0.58, 0.66 -> heavy from 12, raised at 14
    assert [r.contention["pending"] for r in hot[:3]] == [{}, {"B": 1}, {"B": 2}]
    assert noisy_changes(calm + hot) == [(14.0, "B", True)]
    cool = run(d, ticks(16, 15, CALM, psi=50.0))
    # still contended, but B's window share falls below 0.5 on the 4th calm tick (19): the 5th
    # evaluation from there clears
    assert [r.noisy[0].evidence["heavy"] for r in cool[:4]] == [True, True, True, False]
    assert noisy_changes(cool) == [(23.0, "B", False)]
    assert [bool(r.noisy) for r in cool] == [True] * 7 + [False] * 8


def test_a_raised_flag_holds_at_release_factor_times_the_thresholds() -> None:
    d = Detector()
    run(d, ticks(1, 10, INCIDENT_CPU, psi=50.0))
    # B's window share at 18 (one heavy tick left) is 2.6 / 5.6 = 0.464: below the 0.5 that
    # raises, above the 0.45 that holds; PSI 9.5 is below the 10 that raises, above the 9 that
    # holds.  At 19 B is down to 0.25: cleared on the 5th evaluation, 23.
    r = run(d, ticks(11, 4, INCIDENT_CPU, psi=9.5))
    r += run(d, ticks(15, 10, CALM, psi=9.5))
    assert [x.noisy[0].evidence["heavy"] for x in r[:9]] == [True] * 8 + [False]
    assert r[7].noisy[0].evidence["share"] == round(2.6 / 5.6, 6)
    assert r[7].noisy[0].evidence["hold_threshold"] == 0.45
    assert r[7].noisy[0].evidence["contention"] == ["psi"]
    assert noisy_changes(r) == [(23.0, "B", False)]
    # the same share and PSI do not raise a flag
    d = Detector()
    r = run(d, ticks(1, 20, {"A": 0.46, "B": 0.18, "C": 0.18, "D": 0.18}, psi=9.5))
    assert noisy_changes(r) == []


def test_contention_ending_clears_after_clear_windows() -> None:
    d = Detector()
    run(d, ticks(1, 10, INCIDENT_CPU, psi=50.0))
    r = run(d, ticks(11, 10, INCIDENT_CPU, psi=2.0))  # below 10 x release_factor at once
    assert noisy_changes(r) == [(15.0, "B", False)]
    assert r[4].changes[0].evidence["heavy"] is True
    assert r[4].changes[0].evidence["contention"] == []


def test_a_single_contended_blip_does_not_raise() -> None:
    d = Detector()
    run(d, ticks(1, 10, {"A": 1.4, "B": 0.2, "C": 0.2, "D": 0.2}))
    results = run(d, [steady(11, {"A": 1.4, "B": 0.2, "C": 0.2, "D": 0.2}, psi=80.0)])
    results += run(d, ticks(12, 10, {"A": 1.4, "B": 0.2, "C": 0.2, "D": 0.2}))
    assert results[0].contention["pending"] == {"A": 1}
    assert noisy_changes(results) == []


def test_run_queue_delay_in_half_the_window_is_contention() -> None:
    d = Detector()
    cpu = {"A": 1.4, "B": 0.2, "C": 0.2, "D": 0.2}
    run(d, ticks(1, 5, cpu))
    # two slow ticks of five: not yet; the third makes it half or more
    r = run(d, ticks(6, 2, cpu, runq=0.02))
    assert [x.contention["runq"] for x in r] == [False, False]
    r = run(d, ticks(8, 4, cpu, runq=0.02))
    assert [x.contention["runq"] for x in r] == [True] * 4
    assert noisy_changes(r) == [(10.0, "A", True)]
    assert r[-1].noisy[0].evidence["contention"] == ["runq"]
    assert r[-1].noisy[0].evidence["runq_ticks_over"] == 5


def test_no_psi_and_no_runq_data_is_no_contention() -> None:
    d = Detector()
    cpu = {"A": 1.4, "B": 0.2, "C": 0.2, "D": 0.2}
    results = run(d, ticks(1, 30, cpu, psi=None, runq=None))
    assert not any(r.contention["any"] for r in results)
    assert results[-1].contention["psi_some_avg10"] is None
    assert noisy_changes(results) == []


def test_victims_alone_are_contention() -> None:
    d = Detector()
    run(d, ticks(1, 60, CALM))
    slow = {"A": 0.01, "B": 0.003, "C": 0.003, "D": 0.003}
    results = run(d, ticks(61, 10, INCIDENT_CPU, latency=slow))
    assert noisy_changes(results) == [(64.0, "B", True)]
    ev = results[-1].noisy[0].evidence
    assert ev["contention"] == ["victims"]
    assert ev["victims"] == [{"tenant": "A", "p99_before": 0.005, "p99_now": 0.01,
                              "requests": 500}]
    assert ev["victims_total"] == 1


def test_a_tenant_is_not_its_own_victim() -> None:
    d = Detector()
    run(d, ticks(1, 60, CALM))
    slow_b = {"B": 0.05}
    results = run(d, ticks(61, 20, INCIDENT_CPU, latency=slow_b))
    assert [v["tenant"] for v in results[-1].contention["victims"]] == ["B"]
    assert noisy_changes(results) == []


def test_victims_need_requests_a_baseline_and_a_minimum_p99() -> None:
    d = Detector()
    run(d, ticks(1, 60, CALM, requests=3))  # 15 requests per window: under victim_min_requests
    slow = {"A": 0.05, "C": 0.05, "D": 0.05}
    r = run(d, ticks(61, 10, INCIDENT_CPU, latency=slow, requests=3))
    assert all(x.contention["victims_total"] == 0 for x in r)

    d = Detector()  # no baseline yet: the first ticks cannot have victims
    r = run(d, ticks(1, 10, INCIDENT_CPU, latency=slow))
    assert all(x.contention["victims_total"] == 0 for x in r)

    d = Detector(DetectionSettings(victim_min_p99_seconds=0.02))
    fast = {t: 0.0002 for t in "ABCD"}
    run(d, ticks(1, 60, CALM, latency=fast))
    r = run(d, ticks(61, 10, INCIDENT_CPU, latency={t: 0.004 for t in "ACD"}))
    assert all(x.contention["victims_total"] == 0 for x in r), "20x of tiny is still tiny"


def test_quota_makes_a_thirty_percent_tenant_heavy() -> None:
    cpu = {"A": 0.3, "B": 0.24, "C": 0.23, "D": 0.23}
    plain = run(Detector(), ticks(1, 20, cpu, psi=30.0))
    assert noisy_changes(plain) == [], "30% of four tenants is not heavy by default"

    quota = DetectionSettings(quotas=MappingProxyType({"A": 0.1}))
    results = run(Detector(quota), ticks(1, 20, cpu, psi=30.0))
    assert noisy_changes(results) == [(3.0, "A", True)]
    ev = results[-1].noisy[0].evidence
    assert ev["quota"] == 0.1 and ev["fair_share"] == 0.1
    assert ev["threshold"] == 0.2 and ev["share"] == 0.3


def test_two_tenants_need_a_quota_to_be_heavy() -> None:
    """Fair share 1/2 x share_factor 2 = 100%: with two tenants only a quota can flag one."""
    results = run(Detector(), ticks(1, 20, {"A": 0.9, "B": 0.1}, psi=50.0))
    assert results[-1].noisy == ()
    quota = DetectionSettings(quotas=MappingProxyType({"A": 0.4}))
    results = run(Detector(quota), ticks(1, 20, {"A": 0.9, "B": 0.1}, psi=50.0))
    assert [v.tenant for v in results[-1].noisy] == ["A"]


def test_reserved_and_ignored_tenants_are_never_flagged_nor_victims() -> None:
    for label in ("__unattributed__", "__other__", "__invalid__", "common"):
        d = Detector(ignore={"common"})
        cpu = {label: 2.0, "A": 0.2, "B": 0.2, "C": 0.2}
        run(d, ticks(1, 60, cpu))
        results = run(d, ticks(61, 30, cpu, psi=90.0, latency={label: 0.05}))
        assert all(r.noisy == () and r.changes == () for r in results), label
        assert all(r.contention["pending"] == {} for r in results), label
        assert all(r.contention["victims_total"] == 0 for r in results), label
        assert results[-1].shares[label] > 0.7, "its share is still reported"


def test_reserved_tenants_count_in_the_total_but_not_in_the_fair_share() -> None:
    cpu = {"__unattributed__": 1.0, "A": 0.6, "B": 0.2, "C": 0.2}
    r = run(Detector(), ticks(1, 5, cpu, psi=50.0))
    assert r[-1].shares == {"A": 0.3, "B": 0.1, "C": 0.1, "__unattributed__": 0.5}
    assert noisy_changes(r) == []  # 30% < max(0.35, 2/3)


def test_incomplete_windows_cannot_raise_but_keep_a_flag() -> None:
    d = Detector()
    run(d, ticks(1, 10, CALM))
    lossy = run(d, ticks(11, 10, INCIDENT_CPU, psi=50.0, complete=False))
    assert noisy_changes(lossy) == []
    assert all(not r.window_complete for r in lossy)
    assert lossy[-1].contention["raise_blocked"]["noisy"] == ["B"]
    assert lossy[-1].contention["incomplete_ticks"] == 5
    # complete ticks again: the window still holds lossy ticks for 4 more evaluations
    clean = run(d, ticks(21, 6, INCIDENT_CPU, psi=50.0))
    assert [r.window_complete for r in clean] == [False] * 4 + [True] * 2
    assert noisy_changes(clean) == [(25.0, "B", True)]
    raised = clean[4].changes[0].evidence
    assert raised["window_complete"] is True and raised["incomplete_ticks"] == 0
    # a flag survives windows with lost events, and says so
    kept = run(d, ticks(27, 3, INCIDENT_CPU, psi=50.0, complete=False))
    assert all(r.noisy for r in kept)
    assert kept[-1].noisy[0].evidence["window_complete"] is False
    assert kept[-1].noisy[0].evidence["incomplete_ticks"] == 3


def test_one_lossy_tick_delays_a_raise_by_at_most_one_window() -> None:
    d = Detector()
    run(d, ticks(1, 10, CALM))
    r = run(d, [steady(11, INCIDENT_CPU, psi=50.0, complete=False)])
    r += run(d, ticks(12, 10, INCIDENT_CPU, psi=50.0))
    assert noisy_changes(r) == [(16.0, "B", True)]


def test_trust_is_reported_not_required() -> None:
    d = Detector()
    untrusted = [node(float(i), [tenant("A", 1.4, trusted=False), tenant("B", 0.2),
                                 tenant("C", 0.2), tenant("D", 0.2)], psi=50.0)
                 for i in range(1, 6)]
    r = run(d, untrusted)
    assert r[-1].noisy[0].tenant == "A"
    assert r[-1].noisy[0].evidence["trusted"] is False


def test_a_flagged_tenant_that_goes_away_is_cleared() -> None:
    d = Detector()
    run(d, ticks(1, 10, INCIDENT_CPU, psi=50.0))
    r = run(d, ticks(11, 10, {"A": 0.2, "C": 0.2, "D": 0.2}, psi=50.0))
    # B's window share: 0.545 at 13 (two heavy ticks left), 0.375 at 14 -> cleared at 18
    assert noisy_changes(r) == [(18.0, "B", False)]
    assert r[7].changes[0].evidence["share"] == 0.0


def test_jittered_heavy_tenant_near_nothing_does_not_flap() -> None:
    """Hysteresis holds a tenant whose share wanders around the threshold under contention."""
    phases = [Phase(100, {"A": 0.55, "B": 0.15, "C": 0.15, "D": 0.15}, psi=30.0)]
    r = run(Detector(), replay(phases, seed=5, jitter=0.3))
    assert len(noisy_changes(r)) <= 1


def with_losses(t: NodeTick, losses: dict[str, int]) -> NodeTick:
    """The tick with kernel losses charged to some of its tenants (TenantTick.losses)."""
    return dataclasses.replace(t, tenants=tuple(
        x._replace(losses=losses.get(x.tenant, 0)) for x in t.tenants))


def test_losses_charged_to_another_tenant_do_not_hold_back_a_flag() -> None:
    # A client breaking the parser on its own connections: the losses are charged to the
    # identity they were counted under (A), the node stays complete, and B is flagged on time.
    d = Detector(DetectionSettings(release_factor=1.0))
    run(d, ticks(1, 10, CALM))
    hot = run(d, [with_losses(t, {"A": 50}) for t in ticks(11, 5, INCIDENT_CPU, psi=50.0)])
    assert noisy_changes(hot) == [(14.0, "B", True)]
    ev = hot[3].changes[0].evidence
    assert ev["window_complete"] is True and ev["node_window_complete"] is True
    assert ev["tenant_losses"] == 0
    assert all(r.window_complete for r in hot)


def test_losses_charged_to_a_tenant_hold_back_its_flag_until_they_leave_the_window() -> None:
    d = Detector(DetectionSettings(release_factor=1.0))
    run(d, ticks(1, 10, CALM))
    lossy = run(d, [with_losses(t, {"B": 2}) for t in ticks(11, 5, INCIDENT_CPU, psi=50.0)])
    assert noisy_changes(lossy) == []
    assert lossy[-1].contention["raise_blocked"]["noisy"] == ["B"]
    assert all(r.window_complete for r in lossy)  # the node's window: nothing reaches all
    clean = run(d, ticks(16, 6, INCIDENT_CPU, psi=50.0))
    # the window at 20 holds ticks 16..20: the first without B's losses
    assert noisy_changes(clean) == [(20.0, "B", True)]
    assert clean[3].contention["raise_blocked"]["noisy"] == ["B"]


def test_a_node_wide_loss_still_holds_back_every_flag() -> None:
    d = Detector(DetectionSettings(release_factor=1.0))
    run(d, ticks(1, 10, CALM))
    lossy = run(d, [with_losses(t, {"A": 1}) for t in
                    ticks(11, 5, INCIDENT_CPU, psi=50.0, complete=False)])
    assert noisy_changes(lossy) == []
    assert lossy[-1].contention["raise_blocked"]["noisy"] == ["B"]


def test_the_heavy_prefilter_never_leaves_out_a_heavy_tenant() -> None:
    """_Shares.may_be_heavy is a superset of the tenants heavy() says yes to, at a tenant's own
    scale (release_factor when held), quotas and exact thresholds included."""
    import random

    from tenantwatch.detection.noisy import _Shares
    from tenantwatch.detection.window import Window
    rng = random.Random(3)
    for _ in range(400):
        names = [f"t{i}" for i in range(rng.randrange(1, 40))]
        cpu = {n: rng.choice([0.0, 0.35, 0.5, 1.0, rng.random(), rng.random() / 100])
               for n in names}
        quotas = {n: rng.choice([0.01, 0.2, 0.5]) for n in rng.sample(names, len(names) // 5)}
        settings = DetectionSettings(min_share=rng.choice([0.0, 0.1, 0.35]),
                                     share_factor=rng.choice([1.0, 2.0, 3.0]),
                                     release_factor=rng.choice([0.5, 0.9, 1.0]),
                                     quotas=MappingProxyType(quotas))
        w = Window(5.0)
        w.push(steady(1.0, cpu))
        shares = _Shares(w.stats(), settings, frozenset())
        held = set(rng.sample(names, len(names) // 4))
        heavy = {t for t in names
                 if shares.heavy(t, settings.release_factor if t in held else 1.0)}
        assert heavy <= set(shares.may_be_heavy(held))
