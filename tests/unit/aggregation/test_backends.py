"""Backend cgroup CPU against fixture trees (cgroup v2, v1 with split cpu/cpuacct mounts)."""

from __future__ import annotations

from pathlib import Path

from tenantwatch.aggregation.backends import BackendCpuReader
from tenantwatch.aggregation.host import HostSampler


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_v2_cpu_stat(tmp_path: Path) -> None:
    _write(tmp_path / "sys/fs/cgroup/tenants/acme/cpu.stat",
           "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n"
           "nr_periods 10\nnr_throttled 4\nthrottled_usec 300000\n")
    r = BackendCpuReader("/sys/fs/cgroup/tenants/{tenant}", root=str(tmp_path))
    got = r.read(["acme", "globex"])
    assert set(got) == {"acme"}  # globex has no cgroup: skipped
    u = got["acme"]
    assert (u.usage_seconds, u.throttled_seconds, u.nr_throttled, u.cgroup_version) == \
        (2.5, 0.3, 4, 2)


def test_v1_split_cpu_and_cpuacct_mounts(tmp_path: Path) -> None:
    _write(tmp_path / "sys/fs/cgroup/cpu/tenants/acme/cpu.stat",
           "nr_periods 7\nnr_throttled 3\nthrottled_time 1500000000\n")
    _write(tmp_path / "sys/fs/cgroup/cpuacct/tenants/acme/cpuacct.usage", "4200000000\n")
    r = BackendCpuReader("/sys/fs/cgroup/cpu/tenants/{tenant}", root=str(tmp_path))
    u = r.read(["acme"])["acme"]
    assert (u.usage_seconds, u.throttled_seconds, u.nr_throttled, u.cgroup_version) == \
        (4.2, 1.5, 3, 1)


def test_unreadable_cgroup_is_skipped_not_raised(tmp_path: Path) -> None:
    (tmp_path / "sys/fs/cgroup/tenants/acme").mkdir(parents=True)  # exists, no files
    r = BackendCpuReader("/sys/fs/cgroup/tenants/{tenant}", root=str(tmp_path))
    assert r.read(["acme"]) == {}


def test_host_sampler_reads_proc_stat_psi_and_backends(tmp_path: Path) -> None:
    _write(tmp_path / "proc/stat", "cpu  1 1 1 1 1 1 1 1\ncpu0 100 0 50 1000 10 0 0 0\n"
                                   "cpu1 10 0 5 2000 0 0 0 0\n")
    _write(tmp_path / "proc/pressure/cpu", "some avg10=12.50 avg60=1.00 avg300=0.10 total=1\n")
    _write(tmp_path / "sys/fs/cgroup/t/acme/cpu.stat", "usage_usec 1000000\n")
    s = HostSampler(proc=str(tmp_path / "proc"),
                    backends=BackendCpuReader("/sys/fs/cgroup/t/{tenant}", root=str(tmp_path)))
    first = s.sample(["acme"])
    assert first.psi_some_avg10 == 12.5
    assert first.backends["acme"].usage_seconds == 1.0
    _write(tmp_path / "proc/stat", "cpu  1 1 1 1 1 1 1 1\ncpu0 200 0 50 1000 10 0 0 0\n"
                                   "cpu1 10 0 5 2100 0 0 0 0\n")
    second = s.sample([])
    assert second.cpu_busy_seconds[0] > 0 and second.cpu_busy_seconds[1] == 0
    assert second.backends == {}
