"""A tenant's backend cgroup on this machine's cgroup v1 cpu/cpuacct: usage read for real."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tenantwatch.aggregation.backends import BackendCpuReader
from tests.conftest import require_root

CPU = Path("/sys/fs/cgroup/cpu")
CPUACCT = Path("/sys/fs/cgroup/cpuacct")


def test_backend_usage_matches_the_process_cpu_time():
    require_root()
    if not (CPU / "cpu.cfs_quota_us").exists() or not (CPUACCT / "cpuacct.usage").exists():
        if os.environ.get("CI"):
            pytest.fail("no cgroup v1 cpu/cpuacct hierarchy")
        pytest.skip("no cgroup v1 cpu/cpuacct hierarchy")
    name = f"tw-test-{os.getpid()}"
    made = [CPU / name, CPUACCT / name]
    for d in made:
        d.mkdir()
    burn = "import time\nwhile time.process_time() < 1.0: pass"  # CPU time, not wall time
    proc = subprocess.Popen([sys.executable, "-c", burn])
    try:
        for d in made:
            (d / "cgroup.procs").write_text(str(proc.pid))
        proc.wait(10)
        got = BackendCpuReader(f"/sys/fs/cgroup/cpu/{name[:-len(str(os.getpid()))]}{{tenant}}") \
            .read([str(os.getpid())])
    finally:
        if proc.poll() is None:
            proc.kill()
        time.sleep(0.1)
        for d in made:
            d.rmdir()
    usage = got[str(os.getpid())]
    assert usage.cgroup_version == 1
    assert 0.8 <= usage.usage_seconds <= 1.3, usage  # the child burned ~1 s of CPU
