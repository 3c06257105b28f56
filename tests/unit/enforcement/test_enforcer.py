"""The enforcer on fixture trees: dry-run writes nothing, enforce writes and restores, every
refusal reason, leases checked each tick, stop, counters, audit log and /api/v1/caps."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tenantwatch.enforcement import (
    AuditLog,
    Decision,
    EnforcementError,
    Enforcer,
    StateStore,
    V2Writer,
)
from tests.unit.enforcement.trees import (
    TEMPLATE_V1,
    Clock,
    result,
    settings,
    tree,
    v1_cgroup,
    v2_cgroup,
    verdict,
)

ACME_V2 = "cg/tenants.slice/tenant-acme.slice"
ACME_V1 = "sys/fs/cgroup/cpu/tenants/acme"


def enforcer(tmp_path: Path, clock: Clock, mode: str = "enforce", template: str | None = None,
             **kw: Any) -> Enforcer:
    extra = {k: kw.pop(k) for k in ("gateway_pids", "tenant_of_pid") if k in kw}
    s = settings(tmp_path, **({"template": template} if template else {}), mode=mode, **kw)
    return Enforcer(s, writer_factory=V2Writer.for_path, state_store=StateStore(s.state_file),
                    audit_log=AuditLog(s.audit_log), protected={"common"}, clock=clock,
                    host_cores=4, **extra)


def audit(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "state/audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def cap(tenant: str, cores: float) -> Decision:
    return Decision(tenant, "cap", cores, "noisy_neighbour", "noisy", {"trusted": True})


# ------------------------------------------------------------------ dry-run


@pytest.mark.parametrize("template,make", [
    ("cg/tenants.slice/tenant-{tenant}.slice", lambda p: v2_cgroup(p / ACME_V2)),
    (TEMPLATE_V1, lambda p: v1_cgroup(p / ACME_V1)),
])
def test_dry_run_writes_nothing_under_the_cgroup_tree(tmp_path: Path, template: str,
                                                      make: Any) -> None:
    make(tmp_path)
    clock = Clock()
    e = enforcer(tmp_path, clock, "dry-run", template, cooldown_seconds=10, calm_seconds=20,
                 quotas={"acme": 3.0})
    before = {k: v for k, v in tree(tmp_path).items() if not k.startswith("state")}
    e.start()
    outs = []
    for _ in range(60):  # quota cap, step downs while noisy, release to the quota when calm
        outs += e.tick(result(verdict("acme")) if clock.t < 1_700_000_030 else result())
        clock.advance(1)
    e.stop()
    after = {k: v for k, v in tree(tmp_path).items() if not k.startswith("state")}
    assert after == before
    assert not (tmp_path / "state/caps.json").exists()  # no lease of ours is in force
    actions = [(o.audit_action, o.cores) for o in outs]
    assert actions[:3] == [("would_cap", 3.0), ("would_step_down", 1.5),
                           ("would_step_down", 0.75)]
    assert ("would_release", 3.0) in actions
    lines = audit(tmp_path)
    assert lines[0]["action"] == "would_cap" and lines[0]["mode"] == "dry-run"
    assert lines[1]["evidence"]["trusted"] is True and lines[1]["evidence"]["share"] == 0.6
    assert e.caps_in_force() == {}
    assert e.actions[("acme", "cap", "dry-run")] == 1


def test_dry_run_reports_would_caps_in_the_api_document(tmp_path: Path) -> None:
    v2_cgroup(tmp_path / ACME_V2)
    e = enforcer(tmp_path, Clock(), "dry-run")
    e.apply([cap("acme", 0.5)])
    doc = e.payload()
    assert doc["mode"] == "dry-run" and doc["caps"] == []
    assert [(c["tenant"], c["cores"]) for c in doc["would_caps"]] == [("acme", 0.5)]
    assert e.would_caps() == {"acme": 0.5}


def test_off_does_nothing_at_all(tmp_path: Path) -> None:
    v2_cgroup(tmp_path / ACME_V2)
    e = enforcer(tmp_path, Clock(), "off")
    assert e.tick(result(verdict("acme"))) == () and e.apply([cap("acme", 0.5)]) == ()
    assert audit(tmp_path) == [] and (tmp_path / ACME_V2 / "cpu.max").read_text() == \
        "max 100000\n"


# ------------------------------------------------------------------ enforce


def test_enforce_caps_steps_renews_and_releases_v2(tmp_path: Path) -> None:
    cg = v2_cgroup(tmp_path / ACME_V2, usage_usec=0)
    clock = Clock()
    e = enforcer(tmp_path, clock, cooldown_seconds=10, calm_seconds=20, lease_ttl_seconds=40)
    e.start()
    e.tick(result(shares={"acme": 0.3}))  # not flagged yet: its usage is sampled
    (cg / "cpu.stat").write_text("usage_usec 1600000\n")
    clock.advance(1)
    e.tick(result(verdict("acme")))  # 1.6 cores measured: cap at 0.8
    assert (cg / "cpu.max").read_text() == "80000 100000\n"
    assert e.caps_in_force() == {"acme": 0.8}
    clock.advance(10)
    e.tick(result(verdict("acme")))
    assert (cg / "cpu.max").read_text() == "40000 100000\n"
    clock.advance(25)  # verdict gone 25 s > calm 20 s
    outs = e.tick(result())
    assert [(o.action, o.reason) for o in outs] == [("release", "calm")]
    assert (cg / "cpu.max").read_text() == "max 100000\n"
    assert e.caps_in_force() == {}
    assert [x["action"] for x in audit(tmp_path)] == ["cap", "step_down", "release"]
    assert json.loads((tmp_path / "state/caps.json").read_text())["leases"] == []
    assert e.actions == {("acme", "cap", "enforce"): 1, ("acme", "step_down", "enforce"): 1,
                         ("acme", "release", "enforce"): 1}


def test_enforce_on_v1_writes_cfs_quota_and_restores_minus_one(tmp_path: Path) -> None:
    cg = v1_cgroup(tmp_path / ACME_V1)
    e = Enforcer(settings(tmp_path, TEMPLATE_V1), clock=Clock(),
                 state_store=StateStore(str(tmp_path / "caps.json")))
    e.apply([cap("acme", 0.3)])
    assert (cg / "cpu.cfs_quota_us").read_text() == "30000\n"
    e.stop()
    assert (cg / "cpu.cfs_quota_us").read_text() == "-1\n"


def test_the_state_entry_is_saved_before_the_cap_is_written(tmp_path: Path,
                                                            monkeypatch: Any) -> None:
    v2_cgroup(tmp_path / ACME_V2)
    e = enforcer(tmp_path, Clock())

    def killed(self: V2Writer, cores: float) -> None:
        raise KeyboardInterrupt("SIGKILL between the two")

    monkeypatch.setattr(V2Writer, "write_cap", killed)
    with pytest.raises(KeyboardInterrupt):
        e.apply([cap("acme", 0.5)])
    entry = json.loads((tmp_path / "state/caps.json").read_text())["leases"][0]
    assert entry["original"]["quota_us"] is None
    assert entry["written"]["quota_us"] == 50_000


def test_stop_restores_and_is_idempotent_keep_on_exit_keeps(tmp_path: Path) -> None:
    cg = v2_cgroup(tmp_path / ACME_V2, quota="300000", weight=42)
    e = enforcer(tmp_path, Clock())
    e.apply([cap("acme", 0.5)])
    assert [o.action for o in e.stop()] == ["restore"]
    assert e.stop() == ()
    assert (cg / "cpu.max").read_text() == "300000 100000\n"
    k = enforcer(tmp_path, Clock(), keep_on_exit=True)
    k.apply([cap("acme", 0.5)])
    assert [o.action for o in k.stop()] == ["keep"]
    assert (cg / "cpu.max").read_text() == "50000 100000\n"
    assert len(json.loads((tmp_path / "state/caps.json").read_text())["leases"]) == 1


# ------------------------------------------------------------------ refusals, one by one


def refused(e: Enforcer, outs: Any) -> list[str]:
    return [o.reason for o in outs if o.action == "refuse"]


def test_refuse_gateway_in_cgroup_even_deep_in_the_subtree(tmp_path: Path) -> None:
    cg = v2_cgroup(tmp_path / ACME_V2, procs=(100,))
    v2_cgroup(cg / "nginx.service", procs=(4242,))
    e = enforcer(tmp_path, Clock(), gateway_pids=lambda: {4242})
    assert refused(e, e.apply([cap("acme", 0.5)])) == ["gateway_in_cgroup"]
    assert (cg / "cpu.max").read_text() == "max 100000\n"
    assert e.refusals == {"gateway_in_cgroup": 1}
    line = audit(tmp_path)[0]
    assert (line["action"], line["reason"]) == ("refuse", "gateway_in_cgroup")
    assert "4242" in line["detail"]


def test_refuse_a_cgroup_holding_tenantwatch_itself(tmp_path: Path) -> None:
    cg = v2_cgroup(tmp_path / ACME_V2, procs=(os.getpid(),))
    e = enforcer(tmp_path, Clock())
    assert refused(e, e.apply([cap("acme", 0.5)])) == ["gateway_in_cgroup"]
    assert (cg / "cpu.max").read_text() == "max 100000\n"


def test_refuse_foreign_processes(tmp_path: Path) -> None:
    cg = v2_cgroup(tmp_path / ACME_V2, procs=(70, 77))
    owners = {70: "acme", 77: "globex"}
    e = enforcer(tmp_path, Clock(), tenant_of_pid=owners.get)
    assert refused(e, e.apply([cap("acme", 0.5)])) == ["foreign_processes"]
    assert "globex" in audit(tmp_path)[0]["detail"]
    assert (cg / "cpu.max").read_text() == "max 100000\n"
    owners[77] = "acme"
    assert refused(e, e.apply([cap("acme", 0.5)])) == []


def test_refuse_outside_root_through_a_symlink(tmp_path: Path) -> None:
    elsewhere = v2_cgroup(tmp_path / "elsewhere/system.slice")
    (tmp_path / "cg/tenants.slice").mkdir(parents=True)
    (tmp_path / "cg/tenants.slice/tenant-acme.slice").symlink_to(elsewhere)
    e = enforcer(tmp_path, Clock())
    assert refused(e, e.apply([cap("acme", 0.5)])) == ["outside_root"]
    assert (elsewhere / "cpu.max").read_text() == "max 100000\n"


def test_refuse_outside_root_through_dotdot(tmp_path: Path) -> None:
    v2_cgroup(tmp_path / "cg/tenants")
    e = enforcer(tmp_path, Clock(), template="cg/tenants/{tenant}")
    assert refused(e, e.apply([cap("..", 0.5)])) == ["outside_root"]
    assert (tmp_path / "cg/tenants/cpu.max").read_text() == "max 100000\n"


def test_refuse_stale_when_the_cgroup_was_recreated(tmp_path: Path) -> None:
    cg = v2_cgroup(tmp_path / ACME_V2)
    e = enforcer(tmp_path, Clock())
    e.apply([cap("acme", 0.5)])
    os.rename(cg, tmp_path / "cg/old")  # kept: its inode cannot be reused by the new one
    v2_cgroup(cg)
    outs = e.apply([])  # leases are checked every tick
    assert refused(e, outs) == ["stale"]
    assert (cg / "cpu.max").read_text() == "max 100000\n"  # the new cgroup is not ours
    assert (tmp_path / "cg/old/cpu.max").read_text() == "50000 100000\n"  # nor is it any more
    assert e.caps_in_force() == {}


def test_refuse_stale_when_the_cgroup_is_gone(tmp_path: Path) -> None:
    cg = v2_cgroup(tmp_path / ACME_V2)
    e = enforcer(tmp_path, Clock(), floor=0.5)
    e.apply([cap("acme", 0.5)])
    shutil.rmtree(cg)
    outs = e.apply([Decision("acme", "renew", 0.5, "verdict_holds", "noisy")])
    assert refused(e, outs) == ["stale"] and e.caps_in_force() == {}
    assert e.refusals == {"stale": 1}


def test_refuse_untrusted_lost_events_and_reserved_through_tick(tmp_path: Path) -> None:
    for t in ("acme", "common"):
        v2_cgroup(tmp_path / f"cg/tenants.slice/tenant-{t}.slice")
    v2_cgroup(tmp_path / "cg/tenants.slice/tenant-__other__.slice")
    before = tree(tmp_path / "cg")
    e = enforcer(tmp_path, Clock())
    assert refused(e, e.tick(result(verdict("acme", trusted=False)))) == ["untrusted"]
    assert refused(e, e.tick(result(verdict("acme"), complete=False))) == ["lost_events"]
    assert refused(e, e.tick(result(verdict("common"), verdict("__other__")))) == \
        ["reserved", "reserved"]
    assert tree(tmp_path / "cg") == before
    assert e.refusals == {"untrusted": 1, "lost_events": 1, "reserved": 2}
    assert e.caps_in_force() == {}


def test_refuse_no_cgroup_no_cpu_controller_and_write_failed(tmp_path: Path,
                                                             monkeypatch: Any) -> None:
    (tmp_path / "cg/tenants.slice/tenant-bare.slice").mkdir(parents=True)
    v2_cgroup(tmp_path / ACME_V2)
    e = enforcer(tmp_path, Clock())
    assert refused(e, e.apply([cap("ghost", 0.5), cap("bare", 0.5)])) == \
        ["no_cgroup", "no_cpu_controller"]

    def einval(self: V2Writer, quota: Any, period: int) -> None:
        raise EnforcementError(f"{self.path}/cpu.max: Invalid argument")

    monkeypatch.setattr(V2Writer, "_write_bandwidth", einval)
    assert refused(e, e.apply([cap("acme", 0.5)])) == ["write_failed"]
    assert e.caps_in_force() == {}
    assert json.loads((tmp_path / "state/caps.json").read_text())["leases"] == []


def test_a_repeated_refusal_is_counted_and_audited_once_per_run(tmp_path: Path) -> None:
    e = enforcer(tmp_path, Clock())
    for _ in range(3):
        e.tick(result(verdict("acme", trusted=False)))
    e.tick(result())
    e.tick(result(verdict("acme", trusted=False)))
    assert e.refusals == {"untrusted": 2}
    assert [x["reason"] for x in audit(tmp_path)] == ["untrusted", "untrusted"]
    assert e.actions == {}  # refusals are counted by reason, not as actions


def test_a_gateway_moving_into_a_capped_cgroup_ends_the_cap(tmp_path: Path) -> None:
    cg = v2_cgroup(tmp_path / ACME_V2)
    gateway: set[int] = set()
    e = enforcer(tmp_path, Clock(), gateway_pids=lambda: gateway)
    e.apply([cap("acme", 0.5)])
    (cg / "cgroup.procs").write_text("555\n")
    gateway.add(555)
    outs = e.apply([])
    assert [(o.action, o.reason) for o in outs] == [("refuse", "gateway_in_cgroup"),
                                                    ("release", "gateway_in_cgroup")]
    assert (cg / "cpu.max").read_text() == "max 100000\n"


def test_the_api_document(tmp_path: Path) -> None:
    v2_cgroup(tmp_path / ACME_V2)
    clock = Clock()
    e = enforcer(tmp_path, clock)
    e.apply([cap("acme", 0.5), Decision("x", "refuse", None, "untrusted")])
    clock.advance(10)
    doc = e.payload()
    assert json.loads(json.dumps(doc)) == doc
    (c,) = doc["caps"]
    assert (c["tenant"], c["cores"], c["trigger"], c["cgroup_version"]) == \
        ("acme", 0.5, "noisy", 2)
    assert c["original"] == {"quota_us": None, "period_us": 100000, "weight": 100,
                             "burst_us": None}
    assert c["lease_seconds_left"] == 110.0
    assert doc["refusals"] == {"untrusted": 1}
    assert {"tenant": "acme", "action": "cap", "mode": "enforce", "count": 1} in doc["actions"]


# ------------------------------------------------------------------ leases under faults


def test_a_limit_changed_by_someone_else_ends_our_management_without_a_restore(
        tmp_path: Path) -> None:
    cg = v2_cgroup(tmp_path / ACME_V2)
    e = enforcer(tmp_path, Clock())
    e.apply([cap("acme", 0.5)])
    (cg / "cpu.max").write_text("30000 100000\n")  # an operator's own limit
    outs = e.apply([])  # every lease is read back every tick
    assert refused(e, outs) == ["changed_externally"]
    assert (cg / "cpu.max").read_text() == "30000 100000\n"  # left as they set it
    assert e.caps_in_force() == {}
    assert e.refusals == {"changed_externally": 1}
    last = audit(tmp_path)[-1]
    assert (last["action"], last["reason"]) == ("refuse", "changed_externally")
    assert "30000" in last["detail"]
    assert json.loads((tmp_path / "state/caps.json").read_text())["leases"] == []


def test_no_cap_is_written_when_its_lease_cannot_be_saved(tmp_path: Path) -> None:
    cg = v2_cgroup(tmp_path / ACME_V2)
    (tmp_path / "state").mkdir()
    blocker = tmp_path / "state" / "not-a-dir"
    blocker.write_text("")
    e = enforcer(tmp_path, Clock(), state_file=str(blocker / "caps.json"))
    outs = e.apply([cap("acme", 0.5)])
    assert refused(e, outs) == ["state_unsaved"]
    assert (cg / "cpu.max").read_text() == "max 100000\n"
    assert e.caps_in_force() == {}


def test_the_kill_switch_releases_every_cap_within_a_tick_and_blocks_new_ones(
        tmp_path: Path) -> None:
    cg = v2_cgroup(tmp_path / ACME_V2, usage_usec=0)
    clock = Clock()
    e = enforcer(tmp_path, clock)
    e.start()
    e.tick(result(shares={"acme": 0.6}))
    (cg / "cpu.stat").write_text("usage_usec 1600000\n")
    clock.advance(1)
    e.tick(result(verdict("acme")))
    assert (cg / "cpu.max").read_text() == "80000 100000\n"
    switch = tmp_path / "state" / "enforcement-off"
    switch.write_text("")
    clock.advance(1)
    outs = e.tick(result(verdict("acme")))
    assert [(o.action, o.reason) for o in outs] == [("release", "kill_switch"),
                                                    ("refuse", "kill_switch")]
    assert (cg / "cpu.max").read_text() == "max 100000\n"
    assert e.caps_in_force() == {} and e.payload()["kill_switch"]["on"] is True
    clock.advance(1)
    e.tick(result(verdict("acme")))
    assert (cg / "cpu.max").read_text() == "max 100000\n"  # nothing new while it exists
    switch.unlink()
    clock.advance(1)
    e.tick(result(verdict("acme")))
    assert e.caps_in_force() != {} and e.payload()["kill_switch"]["on"] is False


def test_a_burst_is_saved_cleared_under_a_smaller_cap_and_restored(tmp_path: Path) -> None:
    cg = v2_cgroup(tmp_path / ACME_V2, quota="200000")
    (cg / "cpu.max.burst").write_text("150000\n")
    e = enforcer(tmp_path, Clock())
    e.apply([cap("acme", 0.5)])
    assert (cg / "cpu.max").read_text() == "50000 100000\n"
    assert (cg / "cpu.max.burst").read_text() == "0\n"  # the kernel refuses quota < burst
    entry = json.loads((tmp_path / "state/caps.json").read_text())["leases"][0]
    assert entry["original"]["burst_us"] == 150000
    e.stop()
    assert (cg / "cpu.max").read_text() == "200000 100000\n"
    assert (cg / "cpu.max.burst").read_text() == "150000\n"


def test_leases_from_an_earlier_boot_are_dropped_not_adopted_nor_restored(
        tmp_path: Path) -> None:
    cg = v2_cgroup(tmp_path / ACME_V2)
    s = settings(tmp_path)
    first = Enforcer(s, state_store=StateStore(s.state_file, current_boot=lambda: "boot-a"),
                     clock=Clock())
    first.apply([cap("acme", 0.5)])
    doc = json.loads((tmp_path / "state/caps.json").read_text())
    assert doc["boot_id"] == "boot-a" and len(doc["leases"]) == 1
    (cg / "cpu.max").write_text("50000 100000\n")  # as if the same inode came back after boot
    second = Enforcer(s, state_store=StateStore(s.state_file, current_boot=lambda: "boot-b"),
                      clock=Clock())
    outs = second.start()
    assert [(o.action, o.result, o.reason) for o in outs] == [("restore", "noop",
                                                               "earlier_boot")]
    assert second.caps_in_force() == {}
    assert (cg / "cpu.max").read_text() == "50000 100000\n"  # not ours to touch
    assert json.loads((tmp_path / "state/caps.json").read_text())["leases"] == []
