"""CgroupWriter against fixture trees: v2 and v1 detection, read / write / restore, subtree
pids, usage on split v1 mounts, the root check (symlinks, ..) and errors."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tenantwatch.enforcement import (
    CgroupMissing,
    CgroupWriter,
    CpuLimit,
    EnforcementError,
    NoCpuController,
    OutsideRoot,
    V1Writer,
    V2Writer,
    within_root,
)
from tests.unit.enforcement.trees import v1_cgroup, v2_cgroup


def test_v2_is_detected_by_cpu_max_and_round_trips(tmp_path: Path) -> None:
    cg = v2_cgroup(tmp_path / "t/acme", weight=250)
    w = CgroupWriter.for_path(str(cg), str(tmp_path / "t"))
    assert isinstance(w, V2Writer) and w.version == 2
    original = w.read_limit()
    assert original == CpuLimit(None, 100_000, 250) and original.cores is None
    got = w.write_cap(0.3)
    assert (cg / "cpu.max").read_text() == "30000 100000\n"
    assert got == CpuLimit(30_000, 100_000, 250) and got.cores == pytest.approx(0.3)
    w.restore(original)
    assert (cg / "cpu.max").read_text() == "max 100000\n"
    assert (cg / "cpu.weight").read_text() == "250\n"  # not rewritten: unchanged


def test_v2_restore_puts_back_a_changed_weight_and_period(tmp_path: Path) -> None:
    cg = v2_cgroup(tmp_path / "t/acme", quota="50000", period=50_000)
    w = CgroupWriter.for_path(str(cg), str(tmp_path / "t"))
    original = w.read_limit()
    (cg / "cpu.weight").write_text("7\n")
    (cg / "cpu.max").write_text("1000 100000\n")
    w.restore(original)
    assert (cg / "cpu.max").read_text() == "50000 50000\n"
    assert (cg / "cpu.weight").read_text() == "100\n"


def test_v1_is_detected_by_cfs_quota_and_round_trips(tmp_path: Path) -> None:
    cg = v1_cgroup(tmp_path / "sys/fs/cgroup/cpu/tenants/acme", shares=512)
    w = CgroupWriter.for_path(str(cg), str(tmp_path / "sys/fs/cgroup/cpu/tenants"))
    assert isinstance(w, V1Writer) and w.version == 1
    original = w.read_limit()
    assert original == CpuLimit(None, 100_000, 512)
    assert w.write_cap(1.5) == CpuLimit(150_000, 100_000, 512)
    assert (cg / "cpu.cfs_quota_us").read_text() == "150000\n"
    w.restore(original)
    assert (cg / "cpu.cfs_quota_us").read_text() == "-1\n"
    assert (cg / "cpu.cfs_period_us").read_text() == "100000\n"


def test_v1_restore_of_another_period_lifts_the_quota_first(tmp_path: Path) -> None:
    cg = v1_cgroup(tmp_path / "sys/fs/cgroup/cpu/x/a", quota=20_000, period=50_000)
    w = CgroupWriter.for_path(str(cg), str(tmp_path / "sys/fs/cgroup/cpu/x"))
    original = w.read_limit()
    w.write_cap(0.1)
    (cg / "cpu.cfs_period_us").write_text("100000\n")
    w.restore(original)
    assert w.read_limit() == original


def test_a_cap_is_never_below_the_kernel_minimum_quota(tmp_path: Path) -> None:
    cg = v2_cgroup(tmp_path / "t/a", period=10_000)
    w = CgroupWriter.for_path(str(cg), str(tmp_path / "t"))
    assert w.write_cap(0.01).quota_us == 1000  # 0.01 * 10 ms = 100 us: raised to 1 ms


def test_usage_v2_cpu_stat_and_v1_split_cpuacct_mount(tmp_path: Path) -> None:
    v2 = v2_cgroup(tmp_path / "t/a", usage_usec=2_500_000)
    assert CgroupWriter.for_path(str(v2), str(tmp_path / "t")).usage_seconds() == 2.5
    v1 = v1_cgroup(tmp_path / "sys/fs/cgroup/cpu/t/a", usage_ns=4_200_000_000)
    w = CgroupWriter.for_path(str(v1), str(tmp_path / "sys/fs/cgroup/cpu/t"))
    assert w.usage_seconds() == 4.2
    (tmp_path / "sys/fs/cgroup/cpuacct/t/a/cpuacct.usage").unlink()
    assert w.usage_seconds() is None


def test_procs_cover_the_whole_subtree(tmp_path: Path) -> None:
    cg = v2_cgroup(tmp_path / "t/a", procs=(10, 11))
    v2_cgroup(cg / "svc.service", procs=(20,))
    v2_cgroup(cg / "svc.service/worker", procs=(30, 31))
    (cg / "empty").mkdir()
    w = CgroupWriter.for_path(str(cg), str(tmp_path / "t"))
    assert w.procs() == {10, 11, 20, 30, 31}


def test_inode_tells_a_recreated_cgroup(tmp_path: Path) -> None:
    cg = v2_cgroup(tmp_path / "t/a")
    before = CgroupWriter.for_path(str(cg), str(tmp_path / "t")).inode()
    os.rename(cg, tmp_path / "t/old")  # kept, so that its inode cannot be reused
    v2_cgroup(cg)
    assert CgroupWriter.for_path(str(cg), str(tmp_path / "t")).inode() != before


@pytest.mark.parametrize("path", ["t/../elsewhere/a", "t/link/a", "t"])
def test_outside_root_resolves_dotdot_and_symlinks(tmp_path: Path, path: str) -> None:
    v2_cgroup(tmp_path / "elsewhere/a")
    (tmp_path / "t").mkdir()
    (tmp_path / "t/link").symlink_to(tmp_path / "elsewhere")
    assert not within_root(str(tmp_path / path), str(tmp_path / "t"))
    with pytest.raises(OutsideRoot):
        CgroupWriter.for_path(str(tmp_path / path), str(tmp_path / "t"))


def test_missing_cgroup_and_missing_controller(tmp_path: Path) -> None:
    (tmp_path / "t/bare").mkdir(parents=True)
    with pytest.raises(CgroupMissing):
        CgroupWriter.for_path(str(tmp_path / "t/none"), str(tmp_path / "t"))
    with pytest.raises(NoCpuController, match="cpu.max"):
        CgroupWriter.for_path(str(tmp_path / "t/bare"), str(tmp_path / "t"))


def test_errors_become_enforcement_errors_naming_the_file(tmp_path: Path) -> None:
    cg = v2_cgroup(tmp_path / "t/a")
    w = CgroupWriter.for_path(str(cg), str(tmp_path / "t"))
    (cg / "cpu.max").write_text("garbage\n")
    with pytest.raises(EnforcementError, match="cpu.max"):
        w.read_limit()
    (cg / "cpu.max").unlink()
    with pytest.raises(EnforcementError, match="cpu.max"):
        w.restore(CpuLimit(None, 100_000))  # a file the kernel would have: never created
    assert not (cg / "cpu.max").exists()
    shutil.rmtree(cg)
    with pytest.raises(CgroupMissing):
        w.procs()
    with pytest.raises(CgroupMissing):
        w.inode()
