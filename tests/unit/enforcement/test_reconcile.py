"""Restarts and the independent restore: a daemon killed with a cap in force, restarted within
the TTL (adopt only when the state file matches) or after it; `release-caps` (release_all)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tenantwatch.enforcement import (
    AuditLog,
    Decision,
    Enforcer,
    StateStore,
    release_all,
)
from tests.unit.enforcement.trees import TEMPLATE_V1, Clock, settings, v1_cgroup, v2_cgroup

ACME = "cg/tenants.slice/tenant-acme.slice"
GLOBEX = "cg/tenants.slice/tenant-globex.slice"


def enforcer(tmp_path: Path, clock: Clock, mode: str = "enforce", **kw: Any) -> Enforcer:
    s = settings(tmp_path, mode=mode, **kw)
    return Enforcer(s, state_store=StateStore(s.state_file), audit_log=AuditLog(s.audit_log),
                    clock=clock)


def cap(tenant: str, cores: float) -> Decision:
    return Decision(tenant, "cap", cores, "noisy_neighbour", "noisy", {"trusted": True})


def killed_with_a_cap(tmp_path: Path, clock: Clock, *tenants: str) -> None:
    """A daemon caps, then dies without stop() (SIGKILL): caps and state file stay."""
    e = enforcer(tmp_path, clock)
    e.start()
    e.apply([cap(t, 0.5) for t in tenants])
    del e


def state(tmp_path: Path) -> list[dict[str, Any]]:
    return json.loads((tmp_path / "state/caps.json").read_text())["leases"]


def test_restart_within_the_ttl_adopts_a_matching_cap(tmp_path: Path) -> None:
    cg = v2_cgroup(tmp_path / ACME)
    clock = Clock()
    killed_with_a_cap(tmp_path, clock, "acme")
    clock.advance(60)
    e = enforcer(tmp_path, clock)
    outs = e.start()
    assert [(o.action, o.result) for o in outs] == [("adopt", "done")]
    assert (cg / "cpu.max").read_text() == "50000 100000\n"  # untouched
    assert e.caps_in_force() == {"acme": 0.5}
    e.stop()
    assert (cg / "cpu.max").read_text() == "max 100000\n"
    assert state(tmp_path) == []


def test_restart_restores_a_cap_someone_else_changed(tmp_path: Path) -> None:
    cg = v2_cgroup(tmp_path / ACME)
    clock = Clock()
    killed_with_a_cap(tmp_path, clock, "acme")
    (cg / "cpu.max").write_text("70000 100000\n")  # not what the state file says we wrote
    outs = enforcer(tmp_path, clock).start()
    assert [(o.action, o.result, o.reason) for o in outs] == \
        [("restore", "done", "limit_changed")]
    assert (cg / "cpu.max").read_text() == "max 100000\n"
    assert state(tmp_path) == []


def test_restart_after_the_ttl_restores(tmp_path: Path) -> None:
    cg = v2_cgroup(tmp_path / ACME)
    clock = Clock()
    killed_with_a_cap(tmp_path, clock, "acme")
    clock.advance(120)
    e = enforcer(tmp_path, clock)
    assert [o.reason for o in e.start()] == ["lease_expired"]
    assert (cg / "cpu.max").read_text() == "max 100000\n" and e.caps_in_force() == {}


def test_restart_leaves_a_recreated_cgroup_alone(tmp_path: Path) -> None:
    cg = v2_cgroup(tmp_path / ACME)
    clock = Clock()
    killed_with_a_cap(tmp_path, clock, "acme")
    os.rename(cg, tmp_path / "cg/old")
    v2_cgroup(cg, quota="20000")
    outs = enforcer(tmp_path, clock).start()
    assert [(o.action, o.result, o.reason) for o in outs] == \
        [("restore", "noop", "cgroup_recreated")]
    assert (cg / "cpu.max").read_text() == "20000 100000\n"
    assert state(tmp_path) == []


def test_restart_with_another_template_or_in_dry_run_restores(tmp_path: Path) -> None:
    cg = v2_cgroup(tmp_path / ACME)
    clock = Clock()
    killed_with_a_cap(tmp_path, clock, "acme")
    moved = settings(tmp_path, template="cg/tenants.slice/t-{tenant}",
                     root=str(tmp_path / "cg/tenants.slice"))
    e = Enforcer(moved, state_store=StateStore(moved.state_file), clock=clock)
    assert [o.reason for o in e.start()] == ["mapping_changed"]
    assert (cg / "cpu.max").read_text() == "max 100000\n"
    killed_with_a_cap(tmp_path, clock, "acme")
    outs = enforcer(tmp_path, clock, "dry-run").start()
    assert [(o.action, o.reason) for o in outs] == [("restore", "mode_dry-run")]
    assert (cg / "cpu.max").read_text() == "max 100000\n" and state(tmp_path) == []


def test_a_corrupt_state_file_is_set_aside(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state/caps.json").write_text("{not json")
    assert enforcer(tmp_path, Clock()).start() == ()
    assert [p.name for p in (tmp_path / "state").iterdir()] == [f"caps.json.bad.{os.getpid()}"]


def test_release_caps_restores_everything_and_is_safe_to_run_twice(tmp_path: Path) -> None:
    a, g = v2_cgroup(tmp_path / ACME, weight=300), v2_cgroup(tmp_path / GLOBEX, quota="400000")
    killed_with_a_cap(tmp_path, Clock(), "acme", "globex")
    assert (a / "cpu.max").read_text() == "50000 100000\n"
    root = str(tmp_path / "cg/tenants.slice")
    report = release_all(str(tmp_path / "state/caps.json"), root)
    assert (report.restored, report.exit_code) == (("acme", "globex"), 0)
    assert (a / "cpu.max").read_text() == "max 100000\n"
    assert (g / "cpu.max").read_text() == "400000 100000\n"
    assert state(tmp_path) == []
    again = release_all(str(tmp_path / "state/caps.json"), root)
    assert (again.restored, again.exit_code) == ((), 0)
    assert release_all(str(tmp_path / "nothing.json"), root).exit_code == 0


def test_release_caps_on_v1(tmp_path: Path) -> None:
    cg = v1_cgroup(tmp_path / "sys/fs/cgroup/cpu/tenants/acme")
    s = settings(tmp_path, template=TEMPLATE_V1)
    e = Enforcer(s, state_store=StateStore(s.state_file), clock=Clock())
    e.apply([cap("acme", 0.3)])
    assert (cg / "cpu.cfs_quota_us").read_text() == "30000\n"
    assert release_all(s.state_file, s.root).restored == ("acme",)
    assert (cg / "cpu.cfs_quota_us").read_text() == "-1\n"


def test_release_caps_drops_gone_and_recreated_keeps_what_it_cannot_restore(
        tmp_path: Path) -> None:
    a, g = v2_cgroup(tmp_path / ACME), v2_cgroup(tmp_path / GLOBEX)
    killed_with_a_cap(tmp_path, Clock(), "acme", "globex")
    os.rename(a, tmp_path / "cg/old")
    v2_cgroup(a, quota="20000")
    report = release_all(str(tmp_path / "state/caps.json"), str(tmp_path / "elsewhere"))
    assert report.exit_code == 1 and [t for t, _ in report.failed] == ["acme", "globex"]
    assert len(state(tmp_path)) == 2  # outside that root: kept for a run with the right one
    report = release_all(str(tmp_path / "state/caps.json"), str(tmp_path / "cg/tenants.slice"))
    assert (report.replaced, report.restored, report.exit_code) == (("acme",), ("globex",), 0)
    assert (a / "cpu.max").read_text() == "20000 100000\n"  # not ours: untouched
    (g / "cpu.max").write_text("50000 100000\n")
    os.rename(g, tmp_path / "cg/old-globex")
    assert release_all(str(tmp_path / "state/caps.json"), str(tmp_path / "cg")).exit_code == 0


def test_release_caps_fails_on_an_unreadable_state_file(tmp_path: Path) -> None:
    (tmp_path / "caps.json").write_text('{"version": 99}')
    report = release_all(str(tmp_path / "caps.json"), str(tmp_path))
    assert report.exit_code == 1 and "version 1" in (report.error or "")


def test_release_caps_drops_entries_of_an_earlier_boot_untouched(tmp_path: Path) -> None:
    a = v2_cgroup(tmp_path / ACME)
    killed_with_a_cap(tmp_path, Clock(), "acme")
    path = tmp_path / "state/caps.json"
    doc = json.loads(path.read_text())
    assert doc["boot_id"]  # this boot's, recorded with the entries
    doc["boot_id"] = "00000000-0000-0000-0000-000000000000"
    path.write_text(json.dumps(doc))
    report = release_all(str(path), str(tmp_path / "cg/tenants.slice"))
    assert (report.restored, report.replaced, report.exit_code) == ((), ("acme",), 0)
    assert (a / "cpu.max").read_text() == "50000 100000\n"  # a cgroup of this boot: not ours
    assert state(tmp_path) == []
