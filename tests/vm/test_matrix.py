"""The kernel matrix: tenantwatch on other kernels, for real, in qemu guests (tests/vm/harness.py).

For each kernel -- bullseye's 5.10 and bookworm's 6.1 in a guest, and this machine's own kernel
directly (no VM) -- one run of tests/vm/guest_check.py checks: every BPF program loads and which
paths ran (probe_read_user/probe_read, rings read from their memory/perf buffer, batch/per-key
drain); a known workload
through nginx gives exact per-tenant counts on both sides; the daemon starts, is ready and stops
with exit 0; on 6.1 a cgroup v2 cpu.max cap of 0.2 cores holds within +-10%.  On 5.10 and this
machine the workload also runs with every fallback path forced (what a kernel < 5.5 runs).

Runs only when TW_VM_IN_TEST=1 (`make test-kernels` sets it, and `make test` for 6.1): a guest
under software emulation takes minutes.  TW_VM_KERNELS (comma-separated, default
"5.10,6.1,host") picks the kernels, e.g.
`TW_VM_IN_TEST=1 TW_VM_KERNELS=6.1 .venv/bin/python -m pytest tests/vm`.  Needs root and qemu:
without them it skips, or fails when CI is set.  A kernel that scripts/install-vm-deps.sh could
not fetch is "not tested" (a skip with the reason, also under CI, and a "not tested" row in the
table); a kernel cache that is missing or incomplete for any other reason fails under CI.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time

import pytest

from tests.conftest import require, require_root
from tests.vm import harness

ALL_KERNELS = ("5.10", "6.1", "host")
KERNELS = tuple(k.strip() for k in os.environ.get("TW_VM_KERNELS", ",".join(ALL_KERNELS))
                .split(",") if k.strip())
CGROUP_V2 = {"6.1"}  # the cgroup v2 cpu.max check runs here
FORCED_FALLBACKS = {"5.10", "host"}  # the workload again with every fallback forced
TIMEOUT = float(os.environ.get("TW_VM_TIMEOUT", "1200"))

pytestmark = pytest.mark.skipif(
    os.environ.get("TW_VM_IN_TEST") != "1",
    reason="kernel matrix: run with `make test-kernels` (or TW_VM_IN_TEST=1)")

# kernel -> {"result": dict | None, "run": GuestResult-like, "not_tested": reason,
# "fetch_failed": bool}; read by conftest.py for the table.
RESULTS: dict[str, dict] = {}


def python_in_guest() -> str:
    venv = harness.REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else "/usr/bin/python3"


def check_command(kernel: str) -> list[str]:
    """The check as a module, run from the repository root (run_host's cwd, guest_command's
    cd): tenantwatch and harness/ import from there whichever python runs it."""
    cmd = [python_in_guest(), "-m", "tests.vm.guest_check"]
    if kernel in CGROUP_V2:
        cmd.append("--cgroup-v2")
    if kernel in FORCED_FALLBACKS:
        cmd.append("--forced-fallbacks")
    bpf_dir = os.environ.get("TENANTWATCH_BPF_DIR")
    if bpf_dir and kernel != "host":  # a guest starts from a clean environment
        cmd = ["env", f"TENANTWATCH_BPF_DIR={bpf_dir}", *cmd]
    return cmd


def guest_command(kernel: str) -> str:
    """check_command as the guest's shell line: a guest starts in / (and its shell is busybox's,
    whose env has no -C), so cd to the repository first."""
    return f"cd {shlex.quote(str(harness.REPO))} && {shlex.join(check_command(kernel))}"


def parse_result(output: str) -> dict | None:
    m = re.search(r"^TW_RESULT (\{.*\})\s*$", output, re.MULTILINE)
    return json.loads(m.group(1)) if m else None


def run_host() -> harness.GuestResult:
    """This machine's own kernel: the same check, directly."""
    t = time.monotonic()
    try:
        p = subprocess.run(check_command("host"), check=False, capture_output=True, text=True,
                           timeout=TIMEOUT, cwd=str(harness.REPO))
        out, status, timed_out = p.stdout + p.stderr, p.returncode, False
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        status, timed_out = None, True
    return harness.GuestResult(kernel=os.uname().release, exit_status=status, output=out,
                               console=out, seconds=time.monotonic() - t, timed_out=timed_out)


def run_kernel(kernel: str) -> dict:
    """One boot (or host run) per kernel per session, shared by the tests of that kernel."""
    if kernel in RESULTS:
        return RESULTS[kernel]
    require_root()
    entry: dict = {"result": None, "run": None, "not_tested": None, "fetch_failed": False}
    RESULTS[kernel] = entry
    if kernel == "host":
        entry["run"] = run_host()
    else:
        require(harness.qemu_binary() is not None,
                f"{harness.QEMU} not installed (scripts/install-vm-deps.sh)")
        k = harness.kernel(kernel)
        if k.release is None:
            entry["not_tested"] = k.reason
            entry["fetch_failed"] = k.fetch_failed
        else:
            try:
                entry["run"] = harness.boot(kernel, guest_command(kernel), timeout=TIMEOUT)
            except harness.KernelUnavailable as e:
                entry["not_tested"] = str(e)
    if entry["run"] is not None:
        entry["result"] = parse_result(entry["run"].output)
    return entry


def checked(kernel: str) -> tuple[dict, harness.GuestResult]:
    """The kernel's result document; fails with the guest's console when there is none."""
    entry = run_kernel(kernel)
    if entry["not_tested"]:
        if entry["fetch_failed"]:  # Debian's registry did not give us the kernel: not tested
            pytest.skip(f"{kernel} not tested: {entry['not_tested']}")
        require(False, f"{kernel} not tested (kernel cache): {entry['not_tested']}")
    run = entry["run"]
    if entry["result"] is None:
        pytest.fail(f"no TW_RESULT line: {run.describe()}\n--- console (tail) ---\n"
                    f"{run.console[-12000:]}", pytrace=False)
    return entry["result"], run


def step(kernel: str, name: str) -> dict:
    result, run = checked(kernel)
    s = result["steps"].get(name)
    assert s is not None, f"{kernel}: step {name} did not run\n{run.output[-8000:]}"
    return s


def failure(kernel: str, name: str, s: dict) -> str:
    _, run = checked(kernel)
    return (f"{kernel} ({run.kernel}) {name}: {s.get('error', 'failed')}\n"
            f"{json.dumps(s, indent=1, sort_keys=True, default=str)[:6000]}\n"
            f"--- {run.describe()}; output (tail) ---\n{run.output[-8000:]}")


def version(release: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def expected_paths(release: str) -> dict:
    v = version(release)
    return {"probe_read": "probe_read_user" if v >= (5, 5) else "probe_read",
            # x86-64 guests: the rings are read from their memory (kernel/ringbuf.py)
            "events": "ring memory" if v >= (5, 8) else "perf buffer",
            "drain": "batch" if v >= (5, 6) else "per-key"}


@pytest.fixture(params=KERNELS)
def kernel(request) -> str:
    return request.param


def test_guest_exits_zero(kernel):
    """The check as a whole: exit 0 (any failed step, crash or timeout fails with the output)."""
    _, run = checked(kernel)
    assert run.ok, f"{run.describe()}\n--- output (tail) ---\n{run.output[-12000:]}"


def test_every_bpf_program_loads(kernel):
    s = step(kernel, "load")
    assert s.get("ok"), failure(kernel, "load", s)
    assert (s["attached"] == s["probes"] > 20
            and s["tail_calls"] == s["tail_calls_expected"]), failure(kernel, "load", s)


def test_fallback_paths_match_the_kernel(kernel):
    s = step(kernel, "load")
    assert "paths" in s, failure(kernel, "load", s)
    result, _ = checked(kernel)
    assert s["paths"] == expected_paths(result["kernel"]), failure(kernel, "load", s)


def test_forced_fallback_paths_count_exactly(kernel):
    if kernel not in FORCED_FALLBACKS:
        pytest.skip(f"forced fallbacks run on {sorted(FORCED_FALLBACKS)} only")
    s = step(kernel, "forced")
    assert s.get("ok"), failure(kernel, "forced", s)
    assert s["paths"] == {"probe_read": "probe_read", "events": "perf buffer",
                          "drain": "per-key"}, failure(kernel, "forced", s)


def test_known_workload_counts_exactly_on_both_sides(kernel):
    s = step(kernel, "counts")
    assert s.get("ok"), failure(kernel, "counts", s)
    assert s["got"] == s["expected"], failure(kernel, "counts", s)


def test_daemon_starts_ready_and_stops_cleanly(kernel):
    s = step(kernel, "daemon")
    assert s.get("ok"), failure(kernel, "daemon", s)
    assert s["ready"] and s["exit"] == 0 and s["counts_ok"], failure(kernel, "daemon", s)


def test_cgroup_v2_cpu_max_caps_a_busy_cgroup(kernel):
    if kernel not in CGROUP_V2:
        pytest.skip(f"the cgroup v2 check runs on {sorted(CGROUP_V2)} only")
    s = step(kernel, "cgroup")
    assert s.get("ok"), failure(kernel, "cgroup", s)
    assert abs(s["measured_cores"] - s["cap_cores"]) <= 0.1 * s["cap_cores"], \
        failure(kernel, "cgroup", s)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
