"""Aggregator on synthetic KernelTicks, with the in-memory FakeResolver (no kernel, no root)."""

from __future__ import annotations

import dataclasses
import logging
import threading

import pytest

from tenantwatch.aggregation import Aggregator, estimate_quantile
from tenantwatch.aggregation.records import Snapshot, TenantSideStats
from tenantwatch.identity.records import INVALID, TenantIdentity, Trust
from tenantwatch.kernel.records import STATUS_CLASSES, KernelTick, Side, ValueFlag
from tests.unit.aggregation.fakes import BOUNDS, FakeResolver, make_counts, make_tick

ACME = TenantIdentity("acme", Trust.CLAIMED)
ACME_TRUSTED = TenantIdentity("acme", Trust.TRUSTED)
GLOBEX = TenantIdentity("globex", Trust.CLAIMED)
BAD = TenantIdentity(INVALID, Trust.NONE, rejected_reason="pattern")


def stats(snap: Snapshot, tenant: str, side: Side = Side.SERVER) -> TenantSideStats:
    found = [s for s in snap.tenants if s.tenant == tenant and s.side == side]
    assert len(found) == 1, f"{tenant}/{side.value} not in {[s.tenant for s in snap.tenants]}"
    return found[0]


def make_aggregator(**identities: TenantIdentity) -> tuple:
    resolver = FakeResolver({int(k[1:]): v for k, v in identities.items()})
    return Aggregator(resolver, BOUNDS, clock=lambda: 1234.5), resolver


def test_snapshot_before_any_tick_is_empty_and_not_ready() -> None:
    agg, _ = make_aggregator()
    snap = agg.snapshot(ready=False)
    assert snap.tenants == ()
    assert snap.ticks == 0
    assert snap.ready is False
    assert snap.latency_bounds_seconds == BOUNDS
    assert agg.snapshot(ready=True).ready is True


def test_deltas_accumulate_over_ticks() -> None:
    agg, resolver = make_aggregator(k1=ACME)
    agg.apply(
        make_tick(
            make_counts(
                1,
                classes={"2xx": 3, "5xx": 1},
                rx=100,
                tx=1000,
                sum_ns=40_000_000,
                opened=2,
                closed=1,
                raw=b"acme",
            )
        )
    )
    agg.apply(
        make_tick(
            make_counts(1, classes={"2xx": 2, "4xx": 1}, rx=50, tx=500, sum_ns=60_000_000, opened=1)
        )
    )
    s = stats(agg.snapshot(ready=True), "acme")
    assert dict(s.requests_by_class) == {
        "1xx": 0,
        "2xx": 5,
        "3xx": 0,
        "4xx": 1,
        "5xx": 1,
        "none": 0,
    }
    assert s.requests == 7
    assert (s.rx_bytes, s.tx_bytes) == (150, 1500)
    assert s.latency_sum_seconds == pytest.approx(0.1)
    assert (s.connections_opened, s.connections_active) == (3, 2)
    assert agg.snapshot(ready=True).ticks == 2
    assert resolver.calls[0] == (1, b"acme", 0, ValueFlag.NONE, Side.SERVER)
    assert resolver.calls[1][1] is None


def test_latency_buckets_become_cumulative() -> None:
    agg, _ = make_aggregator(k1=ACME)
    agg.apply(make_tick(make_counts(1, classes={"2xx": 6}, buckets=(1, 2, 0, 3))))
    assert stats(agg.snapshot(False), "acme").latency_buckets == (1, 3, 3, 6)
    agg.apply(make_tick(make_counts(1, classes={"2xx": 2}, buckets=(0, 1, 1, 0))))
    assert stats(agg.snapshot(False), "acme").latency_buckets == (1, 4, 5, 8)


def test_keys_of_one_tenant_merge_and_sides_stay_apart() -> None:
    agg, _ = make_aggregator(k1=ACME, k2=ACME, k3=GLOBEX)
    agg.apply(
        make_tick(
            make_counts(1, classes={"2xx": 1}),
            make_counts(2, classes={"2xx": 2}),
            make_counts(1, Side.CLIENT, classes={"2xx": 4}),
            make_counts(3, classes={"2xx": 8}),
        )
    )
    snap = agg.snapshot(False)
    assert stats(snap, "acme").requests == 3
    assert stats(snap, "acme", Side.CLIENT).requests == 4
    assert stats(snap, "globex").requests == 8
    assert [(s.tenant, s.side.value) for s in snap.tenants] == [
        ("acme", "client"),
        ("acme", "server"),
        ("globex", "server"),
    ]


def test_unknown_keys_go_to_the_resolver_default() -> None:
    agg, _ = make_aggregator()
    agg.apply(
        make_tick(make_counts(99, classes={"2xx": 5}, flags=ValueFlag.NO_IDENTITY, source_index=-1))
    )
    assert stats(agg.snapshot(False), "common").requests == 5


def test_rejected_identities_count_request_heads_by_reason() -> None:
    agg, _ = make_aggregator(k7=BAD, k1=ACME)
    agg.apply(
        make_tick(
            make_counts(7, classes={"2xx": 2}, heads=3, flags=ValueFlag.BAD_BYTE),
            make_counts(1, classes={"2xx": 10}),
        )
    )
    agg.apply(make_tick(make_counts(7, classes={"4xx": 1}, heads=2)))
    snap = agg.snapshot(False)
    assert dict(snap.identity_rejected) == {"pattern": 5}
    # the rejected requests are still counted, under the folded tenant
    assert stats(snap, INVALID).requests == 3


def test_trusted_needs_a_request_from_a_trusted_source() -> None:
    agg, _ = make_aggregator(k1=ACME, k2=ACME_TRUSTED)
    agg.apply(make_tick(make_counts(1, classes={"2xx": 1}), make_counts(2, opened=1)))
    assert stats(agg.snapshot(False), "acme").trusted is False
    agg.apply(make_tick(make_counts(2, Side.CLIENT, heads=1)))
    assert stats(agg.snapshot(False), "acme").trusted is False  # the server side is not
    assert stats(agg.snapshot(False), "acme", Side.CLIENT).trusted is True


def test_connections_active_is_clamped_at_zero() -> None:
    # connections accepted before the daemon started are closed without having been opened
    agg, _ = make_aggregator(k1=ACME)
    agg.apply(make_tick(make_counts(1, opened=1, closed=4)))
    s = stats(agg.snapshot(False), "acme")
    assert (s.connections_opened, s.connections_active) == (1, 0)


def test_connection_lifetimes_add_up_per_tenant_and_side() -> None:
    agg, _ = make_aggregator(k1=ACME)
    agg.apply(make_tick(make_counts(1, opened=3, closed=2, closed_ns=1_500_000_000)))
    agg.apply(make_tick(make_counts(1, closed=1, closed_ns=500_000_000),
                        make_counts(1, Side.CLIENT, opened=1, closed=1, closed_ns=250_000_000)))
    server = stats(agg.snapshot(False), "acme")
    client = stats(agg.snapshot(False), "acme", Side.CLIENT)
    assert (server.connections_closed, server.connection_seconds) == (3, 2.0)
    assert (client.connections_closed, client.connection_seconds) == (1, 0.25)


def test_expired_tenants_disappear_from_the_snapshot() -> None:
    agg, resolver = make_aggregator(k1=ACME, k3=GLOBEX)
    agg.apply(
        make_tick(
            make_counts(1, classes={"2xx": 1}),
            make_counts(1, Side.CLIENT, classes={"2xx": 1}),
            make_counts(3, classes={"2xx": 1}),
        )
    )
    resolver.to_expire = ["acme"]
    agg.apply(make_tick())
    assert resolver.expire_calls == 2
    snap = agg.snapshot(False)
    assert [s.tenant for s in snap.tenants] == ["globex"]
    # a returning tenant starts again from zero
    agg.apply(make_tick(make_counts(1, classes={"2xx": 2})))
    assert stats(agg.snapshot(False), "acme").requests == 2


def test_lost_events_probes_and_targets() -> None:
    agg, _ = make_aggregator()
    agg.apply(make_tick(lost={"ringbuf_full": 3}, targets=4, probes={"http": True}))
    agg.apply(
        make_tick(
            lost={"ringbuf_full": 2, "map_full": 1}, targets=5, probes={"http": True, "cpu": False}
        )
    )
    snap = agg.snapshot(False)
    assert dict(snap.events_lost) == {"ringbuf_full": 5, "map_full": 1}
    assert dict(snap.probes) == {"http": True, "cpu": False}
    assert snap.targets == 5
    assert snap.taken_at_unix == 1234.5


def test_snapshot_is_immutable_and_not_changed_by_later_ticks() -> None:
    agg, _ = make_aggregator(k1=ACME)
    agg.apply(make_tick(make_counts(1, classes={"2xx": 1}), lost={"x": 1}))
    before = agg.snapshot(False)
    agg.apply(make_tick(make_counts(1, classes={"2xx": 1}), lost={"x": 1}))
    assert stats(before, "acme").requests == 1
    assert dict(before.events_lost) == {"x": 1}
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.ticks = 9  # type: ignore[misc]
    with pytest.raises(TypeError):
        before.events_lost["x"] = 9  # type: ignore[index]
    with pytest.raises(TypeError):
        stats(before, "acme").requests_by_class["2xx"] = 9  # type: ignore[index]


def test_malformed_kernel_counts_are_skipped_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    agg, _ = make_aggregator(k1=ACME)
    with caplog.at_level(logging.WARNING, logger="tenantwatch.aggregation.aggregator"):
        agg.apply(make_tick(make_counts(1, classes={"2xx": 1}, buckets=(1, 0), rx=5)))
        agg.apply(make_tick(make_counts(1, classes={"2xx": 1}, buckets=(1, 0), rx=5)))
    assert len(caplog.records) == 1
    assert "latency_buckets" in caplog.records[0].getMessage()
    s = stats(agg.snapshot(False), "acme")
    assert s.latency_buckets == (0, 0, 0, 0)
    assert (s.requests, s.rx_bytes) == (2, 10)  # the rest of the record still counts


@pytest.mark.parametrize("bounds", [(), (0.1, 0.1), (0.2, 0.1), (0.0, 1.0)])
def test_bad_bounds_are_refused(bounds: tuple) -> None:
    with pytest.raises(ValueError):
        Aggregator(FakeResolver(), bounds)


def test_readers_never_see_a_half_applied_tick() -> None:
    # each tick adds exactly one request, so a consistent snapshot has requests == ticks
    agg, _ = make_aggregator(k1=ACME)
    stop = threading.Event()
    bad = []

    def read() -> None:
        while not stop.is_set():
            snap = agg.snapshot(True)
            requests = sum(s.requests for s in snap.tenants)
            if requests != snap.ticks:
                bad.append((requests, snap.ticks))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(2000):
            agg.apply(make_tick(make_counts(1, classes={"2xx": 1})))
    finally:
        stop.set()
        reader.join()
    assert bad == []
    assert agg.snapshot(True).ticks == 2000


def test_estimate_quantile_takes_the_upper_bound_of_the_rank_bucket() -> None:
    cumulative = (1, 4, 5, 8)  # bounds 1ms, 10ms, 100ms, +Inf
    assert estimate_quantile(BOUNDS, cumulative, 0.1) == 0.001
    assert estimate_quantile(BOUNDS, cumulative, 0.5) == 0.01  # rank 4 -> second bucket
    assert estimate_quantile(BOUNDS, cumulative, 0.6) == 0.1
    assert estimate_quantile(BOUNDS, cumulative, 0.99) == 0.1  # +Inf bucket: highest bound
    assert estimate_quantile(BOUNDS, (0, 0, 0, 0), 0.5) is None
    with pytest.raises(ValueError):
        estimate_quantile(BOUNDS, (1, 2), 0.5)
    with pytest.raises(ValueError):
        estimate_quantile(BOUNDS, cumulative, 0)


def test_all_status_classes_are_present() -> None:
    agg, _ = make_aggregator(k1=ACME)
    agg.apply(make_tick(make_counts(1, opened=1)))
    assert tuple(stats(agg.snapshot(False), "acme").requests_by_class) == STATUS_CLASSES


def test_slow_requests_resolve_to_their_tenant_with_wall_clock_times() -> None:
    import time as _time

    from tenantwatch.kernel.records import SlowRequest

    agg = Aggregator(FakeResolver({7: TenantIdentity("acme", Trust.CLAIMED)}), BOUNDS)
    now_ns = _time.monotonic_ns()
    tick = KernelTick(identities=(), lost={}, targets=1, probes={}, monotonic_ns=now_ns,
                      slow=(SlowRequest(key=7, side=Side.SERVER, start_monotonic_ns=now_ns,
                                        latency_ns=750_000_000, method="GET", status=504,
                                        tgid=42),))
    agg.apply(tick)
    (span,) = agg.slow_spans()
    assert (span.tenant, span.method, span.status, span.tgid) == ("acme", "GET", 504, 42)
    assert span.duration_seconds == 0.75
    assert abs(span.start_unix - _time.time()) < 5


def test_losses_charged_to_an_identity_make_only_its_tenant_incomplete() -> None:
    agg, _ = make_aggregator(k1=ACME, k2=GLOBEX)
    acme = make_counts(1, classes={"2xx": 3})._replace(losses=2)
    agg.apply(make_tick(acme, make_counts(2, classes={"2xx": 5}),
                        lost={"scan_budget": 1, "resync": 1}))
    node = agg.node_tick()
    assert node is not None and node.complete  # nothing that reaches every tenant
    assert {t.tenant: t.losses for t in node.tenants} == {"acme": 2, "globex": 0}


@pytest.mark.parametrize("reason", ["conn_map_full", "identity_map_full", "cpu_map_full",
                                    "slow_rate_limited", "token_rate_limited"])
def test_losses_that_raise_no_tenant_leave_the_node_complete(reason: str) -> None:
    agg, _ = make_aggregator(k1=ACME)
    agg.apply(make_tick(make_counts(1, classes={"2xx": 1}), lost={reason: 7}))
    node = agg.node_tick()
    assert node is not None and node.complete


@pytest.mark.parametrize("reason", ["args_map_full", "read_fault", "hash_collision",
                                    "tls_no_fd", "h2_buffer_full", "target_map_full"])
def test_other_losses_make_the_node_incomplete(reason: str) -> None:
    agg, _ = make_aggregator(k1=ACME)
    agg.apply(make_tick(make_counts(1, classes={"2xx": 1}), lost={reason: 1}))
    node = agg.node_tick()
    assert node is not None and not node.complete


def test_every_kernel_loss_reason_has_a_reach() -> None:
    # A new reason is node-wide unless it is put, with a reason, in one of the other sets.
    from tenantwatch.aggregation.aggregator import (
        SAMPLING_LOSSES,
        TENANT_LOSSES,
        UNDERSTATING_LOSSES,
    )
    from tenantwatch.h2 import LOST_REASONS as H2_REASONS
    from tenantwatch.kernel.abi import LOST_REASONS

    node_wide = {"args_map_full", "read_fault", "hash_collision", "tls_no_fd", "h2_buffer_full"}
    classified = SAMPLING_LOSSES | UNDERSTATING_LOSSES | TENANT_LOSSES
    assert not (SAMPLING_LOSSES & UNDERSTATING_LOSSES or UNDERSTATING_LOSSES & TENANT_LOSSES
                or SAMPLING_LOSSES & TENANT_LOSSES)
    assert set(LOST_REASONS) - classified == node_wide
    assert classified <= set(LOST_REASONS) | set(H2_REASONS)


def test_snapshot_rows_stay_sorted_and_fresh_as_tenants_come_and_go() -> None:
    """Rows are rebuilt only for the pairs a tick touched and kept in (tenant, side) order."""
    import random

    rng = random.Random(3)
    names = [f"t{i:03d}" for i in range(60)]
    resolver = FakeResolver({i: TenantIdentity(n, Trust.CLAIMED) for i, n in enumerate(names)})
    agg = Aggregator(resolver, BOUNDS, clock=lambda: 1.0)
    want: dict[tuple[str, Side], int] = {}
    for _ in range(30):
        counts = []
        for key in rng.sample(range(60), 7):
            side = rng.choice([Side.SERVER, Side.CLIENT])
            counts.append(make_counts(key, side, classes={"2xx": 1}))
            want[(names[key], side)] = want.get((names[key], side), 0) + 1
        gone = rng.sample(sorted({t for t, _ in want}), 2)
        resolver.to_expire = gone
        agg.apply(make_tick(*counts))
        for t in gone:
            for side in Side:
                want.pop((t, side), None)
        snap = agg.snapshot(True)
        keys = [(s.tenant, s.side) for s in snap.tenants]
        assert keys == sorted(want, key=lambda k: (k[0], k[1].value))
        assert {k: s.requests_by_class["2xx"] for k, s in zip(keys, snap.tenants)} == want


def test_the_snapshot_is_built_by_its_first_reader_after_a_tick(monkeypatch) -> None:
    """apply() leaves the rows to the first snapshot() after it (a scrape); the tick's own
    questions (labels, backends, the status line) are answered without building them, and
    agree with the snapshot."""
    times = iter([100.0, 200.0, 300.0, 400.0])
    agg = Aggregator(FakeResolver({1: ACME, 2: GLOBEX}), BOUNDS, clock=lambda: next(times))
    builds = []
    real = agg._build_snapshot
    monkeypatch.setattr(agg, "_build_snapshot", lambda: builds.append(1) or real())
    agg.apply(make_tick(make_counts(1, classes={"2xx": 2}, raw=b"acme"),
                        make_counts(2, Side.CLIENT, classes={"5xx": 1}, raw=b"globex")))
    agg.apply(make_tick(make_counts(1, classes={"2xx": 1})))
    assert builds == []  # two ticks, no reader: nothing built
    assert agg.tenant_labels() == {"acme", "globex"}
    assert agg.summary()[3] == 2
    first = agg.snapshot(ready=True)
    assert builds == [1]
    assert agg.snapshot(ready=False) is agg.snapshot(ready=False)  # the same until apply()
    assert agg.snapshot(ready=True) == first
    assert builds == [1]
    assert {row.tenant for row in first.tenants} == agg.tenant_labels()
    assert stats(first, "acme").requests_by_class["2xx"] == 3  # both ticks' rows
    assert stats(first, "globex", Side.CLIENT).requests_by_class["5xx"] == 1
    assert first.ticks == 2
    assert first.taken_at_unix == 300.0  # the last apply(), not the read
    attached, probes, targets, tenants, lost = agg.summary()
    assert (attached, probes, targets, tenants, lost) == (
        sum(first.probes.values()), len(first.probes), first.targets, 2,
        sum(first.events_lost.values()))
    assert agg.backend_usage() == {t: b.usage_seconds for t, b in first.backends.items()}
