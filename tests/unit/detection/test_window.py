"""The window, the baseline ring, the hysteresis latches and the detector's handling of ticks."""

from __future__ import annotations

import dataclasses

import pytest

from tenantwatch.config import DetectionSettings
from tenantwatch.detection import CpuTick, Detector, TenantTick, WorkerTick
from tenantwatch.detection.window import Baseline, Hysteresis, Window, p99
from tests.unit.detection.ticks import BOUNDS, CALM, INCIDENT_CPU, buckets, node, run, tenant


def test_p99_is_the_upper_bound_of_its_bucket() -> None:
    assert p99(BOUNDS, buckets([0.003] * 99 + [0.2])) == 0.005
    assert p99(BOUNDS, buckets([0.003] * 98 + [0.2] * 2)) == 0.25
    assert p99(BOUNDS, buckets([60.0] * 10)) == 10, "+Inf reads as the highest finite bound"
    assert p99(BOUNDS, buckets([])) is None


@pytest.mark.parametrize("jitter", [0.0, 0.001, -0.001, 0.3, -0.3])
def test_window_holds_window_seconds_of_ticks_despite_clock_jitter(jitter: float) -> None:
    w = Window(5.0)
    for i in range(1, 20):
        w.push(node(i + (jitter if i % 2 else 0.0)))
    assert len(w) == 5
    assert w.stats().seconds == 5.0


def test_window_sums_tenants_workers_and_cpus() -> None:
    w = Window(5.0)
    for at in (1.0, 2.0):
        w.push(node(at, [tenant("A", 0.5, 10, trusted=False), tenant("B", 0.25, 5)],
                    workers=[WorkerTick(9, 0.75, {"A": 0.5, "B": 0.25})],
                    cpus=[CpuTick(0, 0.9, {"A": 0.5})], complete=at != 1.0))
    s = w.stats()
    assert (s.ticks, s.seconds, s.incomplete_ticks, s.complete) == (2, 2.0, 1, False)
    assert s.tenants["A"].cpu_seconds == 1.0 and s.tenants["A"].requests == 20
    assert s.tenants["A"].trusted is False and s.tenants["B"].trusted is True
    assert sum(s.tenants["A"].buckets) == 20
    assert s.total_cpu_seconds == 1.5 and s.total_requests == 30
    assert s.workers[9].seconds == 1.5 and s.workers[9].by_tenant == {"A": 1.0, "B": 0.5}
    assert s.cpus[0].seconds == 1.8 and s.cpus[0].by_tenant == {"A": 1.0}


def test_window_starts_over_when_the_clock_goes_back() -> None:
    w = Window(5.0)
    for at in (10.0, 11.0, 12.0, 3.0):
        w.push(node(at))
    assert len(w) == 1 and w.stats().at == 3.0


def test_a_tick_longer_than_the_window_is_kept_alone() -> None:
    w = Window(2.0)
    w.push(node(1.0))
    w.push(node(10.0, interval=9.0))
    assert len(w) == 1 and w.stats().seconds == 9.0


def test_baseline_keeps_the_last_seconds_it_was_given_and_then_forgets() -> None:
    b = Baseline(3.0)
    b.add(1.0, {"A": buckets([0.2] * 50)})
    for _ in range(3):
        b.add(1.0, {"A": buckets([0.003] * 50), "B": buckets([])})
    assert b.covered_seconds == 3.0
    assert b.requests("A") == 150 and b.p99(BOUNDS, "A") == 0.005
    assert b.requests("B") == 0 and b.p99(BOUNDS, "B") is None
    for _ in range(3):
        b.add(1.0, {})
    assert b.requests("A") == 0 and b.p99(BOUNDS, "A") is None


def test_hysteresis_counts_consecutive_evaluations() -> None:
    h: Hysteresis[str] = Hysteresis(onset=3, clear=2)
    seen = []
    for at, on in enumerate([1, 1, 0, 1, 1, 1, 1, 0, 1, 0, 0, 1]):
        t = h.update(["x"] if on else [], float(at), may_raise=True)
        seen += [(at, "raise") for _ in t.raised] + [(at, "clear") for _ in t.cleared]
    assert seen == [(5, "raise"), (10, "clear")]
    assert h.latch("x") is not None and h.latch("x").true_run == 1  # type: ignore[union-attr]


def test_hysteresis_forgets_keys_that_are_neither_active_nor_pending() -> None:
    h: Hysteresis[str] = Hysteresis(onset=2, clear=1)
    h.update([f"t{i}" for i in range(1000)], 0.0, may_raise=True)
    h.update([], 1.0, may_raise=True)
    assert list(h.active()) == [] and list(h.pending()) == [] and h.latch("t1") is None


def test_hysteresis_blocks_raises_but_keeps_counting() -> None:
    h: Hysteresis[str] = Hysteresis(onset=2, clear=1)
    assert h.update(["x"], 0.0, may_raise=False).blocked == ()
    assert h.update(["x"], 1.0, may_raise=False).blocked == ("x",)
    t = h.update(["x"], 2.0, may_raise=True)
    assert t.raised == ("x",) and h.latch("x").since == 2.0  # type: ignore[union-attr]


def test_changing_latency_bounds_starts_window_and_baseline_over() -> None:
    d = Detector()
    run(d, [node(float(t), [tenant(n, c) for n, c in CALM.items()]) for t in range(1, 61)])
    other = (0.01, 0.1)
    tick = dataclasses.replace(
        node(61.0, [TenantTick(n, True, c, 100, (0, 100, 0)) for n, c in INCIDENT_CPU.items()]),
        latency_bounds=other)
    r = d.update(tick)
    assert r.window_seconds == 1.0
    assert r.contention["baseline_seconds"] == 1.0  # this tick only


def test_malformed_ticks_are_refused() -> None:
    d = Detector()
    with pytest.raises(ValueError, match="latency buckets"):
        d.update(node(1.0, [TenantTick("A", True, 0.1, 1, (1, 0))]))
    with pytest.raises(ValueError, match="positive interval"):
        d.update(node(2.0, interval=0.0))
    with pytest.raises(ValueError, match="finite"):
        d.update(node(float("nan")))
    r = d.update(node(3.0, [tenant("A", 0.1)]))
    assert r.window_seconds == 1.0 and r.shares == {"A": 1.0}, "refused ticks left no trace"


def test_empty_ticks_give_an_empty_result() -> None:
    r = Detector().update(node(1.0))
    assert (r.at, r.window_seconds, r.window_complete) == (1.0, 1.0, True)
    assert r.shares == {} and r.noisy == () and r.hotspots == () and r.changes == ()
    assert r.contention["any"] is False


def test_window_seconds_is_a_setting() -> None:
    d = Detector(DetectionSettings(window_seconds=10.0, baseline_seconds=10.0))
    r = run(d, [node(float(t)) for t in range(1, 30)])
    assert r[-1].window_seconds == 10.0 and r[-1].contention["ticks"] == 10


def test_baseline_memory_does_not_grow_with_shorter_ticks() -> None:
    b = Baseline(60.0)
    for _ in range(6000):  # 10 min of 0.1 s ticks
        b.add(0.1, {"A": buckets([0.003] * 5)})
    assert 60.0 - 1e-6 <= b.covered_seconds < 65.0
    assert len(b._ring) <= 13
    assert b.requests("A") == round(b.covered_seconds / 0.1) * 5


def test_inputs_are_the_aggregation_stages_records() -> None:
    from tenantwatch.aggregation import records as aggregation
    from tenantwatch.detection import records as detection

    for name in ("NodeTick", "TenantTick", "WorkerTick", "CpuTick"):
        assert getattr(detection, name) is getattr(aggregation, name)


def _summed_again(ticks: list) -> dict:
    """The window's sums the way it computed them before its running sums: every tick of the
    window added up again (the reference of the test below)."""
    tenants: dict = {}
    for t in (x for tick in ticks for x in tick.tenants):
        cpu, req, trusted, tcpu, losses, b = tenants.get(t.tenant, (0.0, 0, False, 0.0, 0, None))
        tenants[t.tenant] = (cpu + t.cpu_seconds, req + t.requests, trusted or t.trusted,
                             tcpu + t.trusted_cpu_seconds, losses + t.losses,
                             t.latency_buckets if b is None else
                             tuple(map(sum, zip(b, t.latency_buckets))))
    usages = []
    for kind in ("workers", "cpus"):
        by: dict = {}
        for tick in ticks:
            for u in getattr(tick, kind):
                ident = u.tgid if kind == "workers" else u.cpu
                seconds, shares = by.get(ident, (0.0, {}))
                for name, s in u.by_tenant.items():
                    shares[name] = shares.get(name, 0.0) + s
                by[ident] = (seconds + (u.cpu_seconds if kind == "workers" else u.busy_seconds),
                             shares)
        usages.append(by)
    return {"tenants": tenants, "workers": usages[0], "cpus": usages[1]}


@pytest.mark.parametrize("seed", range(5))
def test_running_sums_equal_the_window_summed_again(seed: int) -> None:
    """Tenants, workers and CPUs come and go (zeros included), ticks jitter and the clock
    goes back once: after every push the running sums are those of the window's ticks."""
    import random
    rng = random.Random(seed)
    w = Window(5.0)
    at, held = 0.0, []
    for i in range(120):
        at = 3.0 if i == 60 else at + rng.choice([0.5, 1.0, 1.0, 1.3, 4.0])
        tenants = [TenantTick(f"t{n}", rng.random() < 0.5, rng.choice([0.0, rng.random()]),
                              rng.randrange(4), buckets([rng.choice(BOUNDS)] * rng.randrange(3)),
                              rng.choice([0.0, rng.random() / 4]), rng.randrange(2))
                   for n in rng.sample(range(12), rng.randrange(6))]
        workers = [WorkerTick(tgid, rng.random(), {t.tenant: rng.random() / 9 for t in tenants})
                   for tgid in rng.sample((7, 8, 9), rng.randrange(3))]
        cpus = [CpuTick(c, rng.random(), {t.tenant: rng.random() / 9 for t in tenants[:2]})
                for c in rng.sample((0, 1), rng.randrange(3))]
        tick = node(at, tenants, workers=workers, cpus=cpus, interval=rng.choice([0.5, 1.0]))
        w.push(tick)
        held = [t for t in held if t.at < at] + [tick]
        held = [t for t in held if t.at - t.interval_seconds / 2 > at - 5.0] or [tick]
        want, s = _summed_again(held), w.stats()  # seconds: 0.5 ns of rounding a tick at most
        assert len(w) == len(held) and s.ticks == len(held)
        assert set(s.tenants) == set(want["tenants"])
        for name, (cpu, req, trusted, tcpu, losses, b) in want["tenants"].items():
            got = s.tenants[name]
            assert got.cpu_seconds == pytest.approx(cpu, abs=1e-8)
            assert got.trusted_cpu_seconds == pytest.approx(tcpu, abs=1e-8)
            assert (got.requests, got.trusted, got.losses, got.buckets) == (req, trusted, losses, b)
        assert s.total_cpu_seconds == pytest.approx(sum(v[0] for v in want["tenants"].values()),
                                                    abs=1e-7)
        assert s.total_requests == sum(v[1] for v in want["tenants"].values())
        for kind in ("workers", "cpus"):
            usages = getattr(s, kind)
            assert set(usages) == set(want[kind])
            for ident, (seconds, shares) in want[kind].items():
                assert usages[ident].seconds == pytest.approx(seconds, abs=1e-8)
                assert usages[ident].by_tenant == pytest.approx(shares, abs=1e-8)


def test_a_cpu_time_that_is_not_a_number_is_refused_and_leaves_the_window_as_it_was() -> None:
    w = Window(5.0)
    w.push(node(1.0, [tenant("A", 0.5)]))
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="not a finite number"):
            w.push(node(2.0, [tenant("A", bad)]))
        with pytest.raises(ValueError, match="not a finite number"):
            w.push(node(0.5, [tenant("B", bad)]))  # a clock gone back too
    assert len(w) == 1 and w.stats().tenants["A"].cpu_seconds == 0.5


def test_p99_by_bisection_is_estimate_quantiles_answer() -> None:
    import random

    from tenantwatch.aggregation import estimate_quantile
    rng = random.Random(7)
    for _ in range(2000):
        b = [rng.choice([0, 0, 1, 5, 1000]) for _ in range(len(BOUNDS) + 1)]
        cumulative = [sum(b[:i + 1]) for i in range(len(b))]
        assert p99(BOUNDS, b) == estimate_quantile(BOUNDS, cumulative, 0.99), b
