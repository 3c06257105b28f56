"""Placement on fixture /proc and cgroup trees: selectors, one move per process, pid reuse,
gateway never placed, v2 subtree_control, v1 sibling mounts, dry-run, the foreign check."""

from __future__ import annotations

import os
from pathlib import Path

from tenantwatch.config import Placement, Selector
from tenantwatch.enforcement import Decision, Enforcer, Placer
from tests.unit.enforcement.trees import Clock, settings, tree, v2_cgroup

FPM = Selector(process="php-fpm", cmdline=r"pool (?P<tenant>[a-z]+)")
WORKER = Selector(cmdline=r"^/usr/bin/worker --tenant-id=(?P<tenant>\w+)")
FIXED = Selector(process="reportd", tenant="globex")


def proc(root: Path, pid: int, comm: str, argv: list[str], start: int = 1000) -> None:
    d = root / "proc" / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    (d / "comm").write_text(comm + "\n")
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    rest = " ".join(["0"] * 18 + [str(start)] + ["0"] * 10)
    (d / "stat").write_text(f"{pid} ({comm}) S {rest}\n")


def placer(tmp_path: Path, *selectors: Selector, root: str = "cg/tw", **kw) -> Placer:
    delegated = tmp_path / root
    delegated.mkdir(parents=True, exist_ok=True)
    return Placer(Placement(str(delegated), selectors), f"{delegated}/tenant-{{tenant}}",
                  proc_root=str(tmp_path / "proc"), **kw)


def procs_of(path: Path) -> list[int]:
    return [int(x) for x in (path / "cgroup.procs").read_text().split()]


def test_selectors_pick_tenants_by_name_cmdline_group_or_fixed(tmp_path: Path) -> None:
    proc(tmp_path, 100, "php-fpm", ["php-fpm: pool acme"])
    proc(tmp_path, 101, "php-fpm", ["php-fpm: master process"])
    proc(tmp_path, 102, "worker", ["/usr/bin/worker", "--tenant-id=initech"])
    proc(tmp_path, 103, "reportd", ["reportd", "-v"])
    proc(tmp_path, 104, "bash", ["bash", "pool acme"])  # name does not match FPM's
    proc(tmp_path, 105, "kthreadd", [])  # a kernel thread: empty cmdline
    p = placer(tmp_path, FPM, WORKER, FIXED)
    assert p.scan() == {100: "acme", 102: "initech", 103: "globex"}
    assert p.tenant_of_pid(101) is None and p.tenant_of_pid(999) is None


def test_each_process_is_placed_once(tmp_path: Path) -> None:
    proc(tmp_path, 100, "php-fpm", ["php-fpm: pool acme"])
    p = placer(tmp_path, FPM)
    assert p.place() == ((100, "acme", f"{tmp_path}/cg/tw/tenant-acme"),)
    assert procs_of(tmp_path / "cg/tw/tenant-acme") == [100]
    assert p.place() == () and p.place() == ()
    assert procs_of(tmp_path / "cg/tw/tenant-acme") == [100]  # written once, never again
    proc(tmp_path, 100, "php-fpm", ["php-fpm: pool acme"], start=2000)  # pid reused
    assert [pid for pid, _, _ in p.place()] == [100]
    assert p.placed_total == 2


def test_gateway_tenantwatch_and_pid_1_are_never_placed(tmp_path: Path) -> None:
    for pid in (1, 200, os.getpid()):
        proc(tmp_path, pid, "php-fpm", ["php-fpm: pool acme"])
    p = placer(tmp_path, FPM, gateway_pids=lambda: {200})
    assert p.place() == ()


def test_invalid_or_reserved_tenants_are_not_placed(tmp_path: Path) -> None:
    proc(tmp_path, 100, "worker", ["/usr/bin/worker", "--tenant-id=__other__"])
    proc(tmp_path, 101, "worker", ["/usr/bin/worker", "--tenant-id=x"])
    p = placer(tmp_path, WORKER, valid_tenant=lambda t: len(t) > 1)
    assert p.scan() == {}


def test_v2_enables_the_cpu_controller_on_the_way_down(tmp_path: Path) -> None:
    proc(tmp_path, 100, "php-fpm", ["php-fpm: pool acme"])
    (tmp_path / "cg/tw").mkdir(parents=True)
    (tmp_path / "cg/tw/cgroup.subtree_control").write_text("memory\n")
    placer(tmp_path, FPM).place()
    assert (tmp_path / "cg/tw/cgroup.subtree_control").read_text() == "+cpu\n"


def test_v1_places_in_the_cpuacct_sibling_too(tmp_path: Path) -> None:
    proc(tmp_path, 100, "php-fpm", ["php-fpm: pool acme"])
    (tmp_path / "sys/fs/cgroup/cpuacct/tw").mkdir(parents=True)
    placer(tmp_path, FPM, root="sys/fs/cgroup/cpu/tw").place()
    assert procs_of(tmp_path / "sys/fs/cgroup/cpu/tw/tenant-acme") == [100]
    assert procs_of(tmp_path / "sys/fs/cgroup/cpuacct/tw/tenant-acme") == [100]


def test_a_template_outside_the_delegated_root_is_not_used(tmp_path: Path) -> None:
    proc(tmp_path, 100, "worker", ["/usr/bin/worker", "--tenant-id=acme"])
    (tmp_path / "cg/tw").mkdir(parents=True)
    p = Placer(Placement(str(tmp_path / "cg/tw"), (WORKER,)), f"{tmp_path}/cg/tw/../{{tenant}}",
               proc_root=str(tmp_path / "proc"))
    assert p.place() == ()
    assert not (tmp_path / "cg/acme").exists()


def test_dry_run_creates_and_moves_nothing(tmp_path: Path) -> None:
    proc(tmp_path, 100, "php-fpm", ["php-fpm: pool acme"])
    (tmp_path / "cg/tw").mkdir(parents=True)
    before = tree(tmp_path / "cg")
    assert [t for _, t, _ in placer(tmp_path, FPM, dry_run=True).place()] == ["acme"]
    assert tree(tmp_path / "cg") == before


def test_the_enforcer_refuses_a_cgroup_holding_another_tenants_worker(tmp_path: Path) -> None:
    proc(tmp_path, 100, "php-fpm", ["php-fpm: pool acme"])
    proc(tmp_path, 101, "php-fpm", ["php-fpm: pool globex"])
    cg = v2_cgroup(tmp_path / "cg/tw/tenant-acme", procs=(100, 101))
    p = placer(tmp_path, FPM)
    s = settings(tmp_path, template="cg/tw/tenant-{tenant}")
    e = Enforcer(s, tenant_of_pid=p.tenant_of_pid, clock=Clock())
    outs = e.apply([Decision("acme", "cap", 0.5, "noisy_neighbour", "noisy")])
    assert [(o.action, o.reason) for o in outs] == [("refuse", "foreign_processes")]
    assert (cg / "cpu.max").read_text() == "max 100000\n"
