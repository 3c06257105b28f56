"""The policy alone: trust, reserved tenants, lost events, first cap, step limit, cooldown,
floor, renewal at half the TTL, release after calm or expiry, static quotas."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest

from tenantwatch.config import Enforcement
from tenantwatch.enforcement import CpuLimit, Decision, Lease, Policy
from tenantwatch.identity.records import INVALID, OTHER, UNATTRIBUTED
from tests.unit.enforcement.trees import Clock, verdict


def policy(clock: Clock, **kw: Any) -> Policy:
    if "quotas" in kw:
        kw["quotas"] = MappingProxyType(kw["quotas"])
    s = Enforcement("enforce", "/sys/fs/cgroup/t/{tenant}", **kw)
    return Policy(s, protected={"common"}, host_cores=8, clock=clock)


def lease(tenant: str, cores: float, at: float, trigger: str = "noisy",
          ttl: float = 120.0) -> Lease:
    return Lease(tenant, f"/sys/fs/cgroup/t/{tenant}", 1, 2, cores, trigger,
                 CpuLimit(None, 100_000), CpuLimit(int(cores * 100_000), 100_000), at, at, at,
                 at + ttl)


def only(decisions: tuple[Decision, ...]) -> Decision:
    assert len(decisions) == 1, decisions
    return decisions[0]


def test_first_cap_is_half_the_measured_use() -> None:
    c = Clock()
    d = only(policy(c).decide([verdict("acme")], True, {}, {"acme": 1.6}))
    assert (d.action, d.cores, d.reason, d.trigger) == ("cap", 0.8, "noisy_neighbour", "noisy")
    assert d.evidence["trusted"] is True and d.evidence["usage_cores"] == 1.6  # evidence kept


def test_first_cap_without_a_measurement_starts_from_the_host_cores() -> None:
    d = only(policy(Clock()).decide([verdict("acme")], True, {}, {}))
    assert d.cores == 4.0  # 8 host cores, one step


def test_the_floor_bounds_every_cap() -> None:
    d = only(policy(Clock(), floor=0.25).decide([verdict("acme")], True, {}, {"acme": 0.2}))
    assert d.cores == 0.25


def test_untrusted_verdicts_are_refused() -> None:
    p = policy(Clock())
    for v in (verdict("acme", trusted=False), verdict("acme", trusted=None),  # type: ignore
              verdict("acme", trusted="yes")):  # type: ignore[arg-type]
        d = only(p.decide([v], True, {}, {"acme": 2.0}))
        assert (d.action, d.reason, d.cores) == ("refuse", "untrusted", None)
    missing = verdict("acme")
    missing = type(missing)("acme", evidence={"share": 0.9})  # no "trusted" key at all
    assert only(p.decide([missing], True, {}, {})).reason == "untrusted"


@pytest.mark.parametrize("tenant", [OTHER, INVALID, UNATTRIBUTED, "common"])
def test_reserved_buckets_and_the_default_tenant_are_never_capped(tenant: str) -> None:
    d = only(policy(Clock()).decide([verdict(tenant)], True, {}, {tenant: 3.0}))
    assert (d.action, d.reason) == ("refuse", "reserved")


def test_a_lost_events_window_refuses_a_new_cap() -> None:
    d = only(policy(Clock()).decide([verdict("acme")], False, {}, {"acme": 2.0}))
    assert (d.action, d.reason) == ("refuse", "lost_events")


def test_losses_charged_to_the_tenant_refuse_its_new_cap_on_a_complete_node() -> None:
    # the node's window is complete, but the tenant's own numbers may be raised by losses
    lossy = verdict("acme", window_complete=False, tenant_losses=3)
    d = only(policy(Clock()).decide([lossy], True, {}, {"acme": 2.0}))
    assert (d.action, d.reason) == ("refuse", "lost_events")
    # another tenant with exact numbers is capped in the same evaluation
    out = policy(Clock()).decide([lossy, verdict("globex")], True, {}, {"acme": 2.0,
                                                                        "globex": 2.0})
    assert {(x.tenant, x.action) for x in out} == {("acme", "refuse"), ("globex", "cap")}


def test_steps_wait_for_the_cooldown_and_never_halve_more_than_once() -> None:
    c = Clock()
    p = policy(c, cooldown_seconds=30)
    held = {"acme": lease("acme", 1.0, c.t)}
    c.advance(29)
    assert p.decide([verdict("acme")], True, held, {"acme": 1.0}) == ()
    c.advance(1)
    d = only(p.decide([verdict("acme")], True, held, {"acme": 1.0}))
    assert (d.action, d.cores, d.reason) == ("step_down", 0.5, "verdict_holds")


def test_a_smaller_max_step_takes_smaller_steps_and_the_floor_stops_them() -> None:
    c = Clock()
    p = policy(c, max_step=0.25, floor=0.7, cooldown_seconds=0)
    d = only(p.decide([verdict("acme")], True, {"acme": lease("acme", 1.0, c.t)}, {}))
    assert d.cores == 0.75
    d = only(p.decide([verdict("acme")], True, {"acme": lease("acme", 0.75, c.t)}, {}))
    assert d.cores == 0.7
    c.advance(100)  # at the floor: nothing to step; renewal once half the TTL is gone
    d = only(p.decide([verdict("acme")], True, {"acme": lease("acme", 0.7, c.t - 100)}, {}))
    assert (d.action, d.cores) == ("renew", 0.7)


def test_lost_events_refuse_a_step_but_let_the_lease_be_renewed() -> None:
    c = Clock()
    p = policy(c)
    held = {"acme": lease("acme", 1.0, c.t - 70)}
    got = p.decide([verdict("acme")], False, held, {})
    assert [(d.action, d.reason) for d in got] == [("refuse", "lost_events"),
                                                   ("renew", "verdict_holds")]


def test_renewal_happens_once_half_the_ttl_is_left() -> None:
    c = Clock()
    p = policy(c, floor=1.0, lease_ttl_seconds=120)  # at the floor: no step in the way
    held = {"acme": lease("acme", 1.0, c.t)}
    c.advance(59)
    assert p.decide([verdict("acme")], True, held, {}) == ()
    c.advance(1)
    assert only(p.decide([verdict("acme")], True, held, {})).action == "renew"


def test_release_after_the_calm_period_not_before() -> None:
    c = Clock()
    p = policy(c, calm_seconds=60, cooldown_seconds=30)
    held = {"acme": lease("acme", 0.5, c.t)}
    p.decide([verdict("acme")], True, held, {})
    c.advance(59)
    assert p.decide([], True, held, {}) == ()
    c.advance(1)
    d = only(p.decide([], True, held, {}))
    assert (d.action, d.cores, d.reason) == ("release", None, "calm")
    assert d.evidence["calm_seconds"] == 60.0


def test_an_untrusted_verdict_does_not_keep_a_lease_alive() -> None:
    c = Clock()
    p = policy(c, calm_seconds=10, cooldown_seconds=0)
    held = {"acme": lease("acme", 0.5, c.t)}
    c.advance(10)
    got = p.decide([verdict("acme", trusted=False)], True, held, {})
    assert [(d.action, d.reason) for d in got] == [("refuse", "untrusted"), ("release", "calm")]


def test_an_expired_lease_is_released_at_once() -> None:
    c = Clock()
    p = policy(c, calm_seconds=600, cooldown_seconds=0, lease_ttl_seconds=30)
    held = {"acme": lease("acme", 0.5, c.t, ttl=30)}
    c.advance(30)
    assert only(p.decide([], True, held, {})).reason == "lease_expired"


def test_static_quota_caps_renews_and_goes_when_removed() -> None:
    c = Clock()
    p = policy(c, quotas={"acme": 0.5})
    d = only(p.decide([], True, {}, {}))
    assert (d.action, d.cores, d.reason, d.trigger) == ("cap", 0.5, "static_quota", "quota")
    held = {"acme": lease("acme", 0.5, c.t, "quota")}
    assert p.decide([], True, held, {}) == ()
    c.advance(61)
    assert only(p.decide([], True, held, {})).action == "renew"
    assert only(policy(c, quotas={"acme": 0.8}).decide([], True, held, {})).reason == \
        "quota_changed"
    d = only(policy(c).decide([], True, held, {}))
    assert (d.action, d.cores, d.reason) == ("release", None, "quota_removed")


def test_a_noisy_tenant_with_a_quota_steps_down_from_it_and_returns_to_it() -> None:
    c = Clock()
    p = policy(c, quotas={"acme": 2.0}, cooldown_seconds=30, calm_seconds=60)
    d = only(p.decide([verdict("acme")], True, {}, {"acme": 2.0}))
    assert (d.action, d.cores, d.trigger) == ("cap", 2.0, "quota")  # the quota first
    c.advance(30)
    d = only(p.decide([verdict("acme")], True, {"acme": lease("acme", 2.0, c.t - 30, "quota")},
                      {}))
    assert (d.action, d.cores, d.trigger) == ("step_down", 1.0, "noisy")
    held = {"acme": lease("acme", 1.0, c.t)}
    c.advance(60)
    d = only(p.decide([], True, held, {}))
    assert (d.action, d.cores, d.trigger, d.reason) == ("release", 2.0, "quota", "calm")


def test_a_quota_on_the_default_tenant_is_refused() -> None:
    d = only(policy(Clock(), quotas={"common": 1.0}).decide([], True, {}, {}))
    assert (d.action, d.reason) == ("refuse", "reserved")


def test_inactive_verdicts_are_ignored() -> None:
    cleared = type(verdict("acme"))("acme", active=False, evidence={"trusted": True})
    assert policy(Clock()).decide([cleared], True, {}, {"acme": 3.0}) == ()


def test_quotas_from_a_source_feed_the_policy_config_wins_floor_applies() -> None:
    registry = {"acme": 1.5, "globex": 0.01, "initech": 9.0}
    p = Policy(Enforcement(mode="enforce", cgroup="/sys/fs/cgroup/t/{tenant}",
                           quotas={"initech": 2.0}),
               clock=Clock(), quota_source=lambda: registry)
    assert p.quotas() == {"acme": 1.5, "globex": 0.1, "initech": 2.0}
    out = p.decide([], True, {}, {})
    assert {(d.tenant, d.action, d.cores) for d in out} == {
        ("acme", "cap", 1.5), ("globex", "cap", 0.1), ("initech", "cap", 2.0)}
    registry.pop("acme")  # the record lost its quota: back to nothing for acme
    assert "acme" not in p.quotas()
