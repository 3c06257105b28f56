"""Caps on this machine's cgroup v1 cpu controller, for real: throttling to the cap, restore,
a daemon killed with SIGKILL while a cap is in force, and placement of a worker process.

This VM's cpu controller is on v1 (cpu and cpuacct mounted apart); its cgroup v2 hierarchy
(/sys/fs/cgroup/unified) has no cpu controller, so cpu.max cannot be tested for real here:
the v2 writer is covered by fixture trees in tests/unit/enforcement only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenantwatch.config import Enforcement, Placement, Selector
from tenantwatch.enforcement import (
    CgroupWriter,
    Enforcer,
    Placer,
    StateStore,
    V1Writer,
    release_all,
)
from tests.conftest import require, require_root

CPU = Path("/sys/fs/cgroup/cpu")
CPUACCT = Path("/sys/fs/cgroup/cpuacct")
BURN_SECONDS = 30  # upper bound of every busy loop a test starts


@pytest.fixture
def v1() -> None:
    require_root()
    require((CPU / "cpu.cfs_quota_us").exists() and (CPUACCT / "cpuacct.usage").exists(),
            "no cgroup v1 cpu and cpuacct hierarchies at /sys/fs/cgroup/{cpu,cpuacct}")


@pytest.fixture
def cgroups(v1: None) -> Iterator[list[Path]]:
    """Directories the test makes (under cpu and cpuacct); removed deepest first, after the
    processes in them are gone."""
    made: list[Path] = []
    yield made
    for d in sorted(made, key=lambda p: len(p.parts), reverse=True):
        for _ in range(50):  # a killed task leaves the cgroup asynchronously
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)


def mkcg(made: list[Path], *rel: str) -> tuple[Path, Path]:
    out = []
    for base in (CPU, CPUACCT):
        d = base.joinpath(*rel)
        d.mkdir()
        made.append(d)
        out.append(d)
    return out[0], out[1]


def burn(*extra: str) -> subprocess.Popen:
    code = f"import time\nt = time.time()\nwhile time.time() - t < {BURN_SECONDS}: pass"
    proc = subprocess.Popen([sys.executable, "-c", code, *extra])
    # Popen may return (vfork) before the kernel has set up the new program's arguments:
    # /proc/PID/cmdline reads empty for that moment, and a selector would not match yet.
    deadline = time.monotonic() + 5
    while not Path(f"/proc/{proc.pid}/cmdline").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)
    return proc


def usage_ns(acct: Path) -> int:
    return int((acct / "cpuacct.usage").read_text())


def nr_throttled(cpu: Path) -> int:
    for line in (cpu / "cpu.stat").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "nr_throttled":
            return int(value)
    raise AssertionError("no nr_throttled in cpu.stat")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def test_a_cap_throttles_a_busy_loop_to_it_and_restore_lifts_it(cgroups: list[Path]) -> None:
    cpu, acct = mkcg(cgroups, f"tw-test-{os.getpid()}")
    proc = burn()
    try:
        for d in (cpu, acct):
            (d / "cgroup.procs").write_text(str(proc.pid))
        w = CgroupWriter.for_path(str(cpu), str(CPU))
        assert isinstance(w, V1Writer)
        original = w.read_limit()
        assert original.quota_us is None and original.period_us > 0
        written = w.write_cap(0.3)
        assert (cpu / "cpu.cfs_quota_us").read_text().strip() == str(written.quota_us)
        time.sleep(0.5)  # let the first periods pass
        u0, t0 = usage_ns(acct), time.monotonic()
        time.sleep(3.0)
        cores = (usage_ns(acct) - u0) / 1e9 / (time.monotonic() - t0)
        print(f"measured {cores:.3f} cores under a 0.3 cap")
        assert 0.27 <= cores <= 0.33, f"{cores:.3f} cores under a 0.3 cap"
        assert nr_throttled(cpu) > 0
        assert w.usage_seconds() is not None  # read through the cpuacct sibling
        w.restore(original)
        assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "-1"
        throttled = nr_throttled(cpu)
        time.sleep(1.0)
        assert nr_throttled(cpu) == throttled  # no quota: no more throttling
    finally:
        stop(proc)


CHILD = textwrap.dedent("""
    import sys, time
    from tenantwatch.config import Enforcement
    from tenantwatch.enforcement import Decision, Enforcer, StateStore
    template, state = sys.argv[1], sys.argv[2]
    s = Enforcement("enforce", template, state_file=state, lease_ttl_seconds=120)
    e = Enforcer(s, state_store=StateStore(state))
    e.start()
    outs = e.apply([Decision("acme", "cap", 0.3, "noisy_neighbour", "noisy")])
    assert [o.result for o in outs] == ["done"], outs
    print("capped", flush=True)
    time.sleep(60)
""")


def killed_with_a_cap(template: str, state: Path) -> None:
    """A daemon-like process caps acme, then gets SIGKILL: no stop(), no restore."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, template, str(state)],
                             stdout=subprocess.PIPE, text=True, cwd=str(Path(__file__).parents[2]))
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "capped"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert child.returncode == -signal.SIGKILL


def test_sigkill_with_a_cap_in_force(cgroups: list[Path], tmp_path: Path) -> None:
    parent = f"tw-kill-{os.getpid()}"
    mkcg(cgroups, parent)
    cpu, _ = mkcg(cgroups, parent, "acme")
    template = f"{CPU}/{parent}/{{tenant}}"
    settings = Enforcement("enforce", template, state_file=str(tmp_path / "caps.json"))
    quota = cpu / "cpu.cfs_quota_us"

    # 1. killed, then the independent path (`release-caps` from ExecStopPost=) restores.
    killed_with_a_cap(template, tmp_path / "caps.json")
    assert quota.read_text().strip() == "30000"  # left behind by the kill, with its lease
    report = release_all(str(tmp_path / "caps.json"), settings.root)
    assert (report.restored, report.exit_code) == (("acme",), 0)
    assert quota.read_text().strip() == "-1"
    assert release_all(str(tmp_path / "caps.json"), settings.root).exit_code == 0  # twice: fine

    # 2. killed, restarted within the TTL: the state file matches, the cap is adopted.
    killed_with_a_cap(template, tmp_path / "caps.json")
    e = Enforcer(settings, state_store=StateStore(settings.state_file))
    assert [(o.action, o.result) for o in e.start()] == [("adopt", "done")]
    assert e.caps_in_force() == {"acme": 0.3} and quota.read_text().strip() == "30000"
    e.stop()
    assert quota.read_text().strip() == "-1"

    # 3. killed, and someone changed the limit meanwhile: restored at restart, not adopted.
    killed_with_a_cap(template, tmp_path / "caps.json")
    quota.write_text("70000")
    e = Enforcer(settings, state_store=StateStore(settings.state_file))
    assert [(o.action, o.reason) for o in e.start()] == [("restore", "limit_changed")]
    assert quota.read_text().strip() == "-1" and e.caps_in_force() == {}

    # 4. killed, restarted after the TTL: the lease has run out, the original is restored.
    killed_with_a_cap(template, tmp_path / "caps.json")
    later = Enforcer(settings, state_store=StateStore(settings.state_file),
                     clock=lambda: time.time() + 121)
    assert [(o.action, o.reason) for o in later.start()] == [("restore", "lease_expired")]
    assert quota.read_text().strip() == "-1"


def test_placement_moves_a_worker_once_into_both_hierarchies(cgroups: list[Path]) -> None:
    root = f"tw-place-{os.getpid()}"
    cpu_root, acct_root = mkcg(cgroups, root)
    cgroups += [cpu_root / "tenant-acme", acct_root / "tenant-acme"]  # the placer makes these
    marker = f"tw-worker-{os.getpid()}"
    worker = burn(marker, "--tenant-id=acme")
    try:
        placement = Placement(str(cpu_root),
                              (Selector(cmdline=rf"{marker} --tenant-id=(?P<tenant>\w+)"),))
        p = Placer(placement, f"{cpu_root}/tenant-{{tenant}}")
        assert p.place() == ((worker.pid, "acme", f"{cpu_root}/tenant-acme"),)
        lines = Path(f"/proc/{worker.pid}/cgroup").read_text().splitlines()
        where = {ctrl: path for _, ctrl, path in (line.split(":", 2) for line in lines)}
        assert where["cpu"] == f"/{root}/tenant-acme"
        assert where["cpuacct"] == f"/{root}/tenant-acme"
        assert p.place() == ()  # once
        assert p.tenant_of_pid(worker.pid) == "acme"
    finally:
        stop(worker)
