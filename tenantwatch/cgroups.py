"""cgroup path helpers shared by the stages that read cgroups (aggregation/backends.py) and
the one that writes them (enforcement/cgroupfs.py, placement.py)."""

from __future__ import annotations

import os

# cgroup v1 mounts that can hold the cpu or cpuacct controller: separate (this VM) or together.
V1_CPU_MOUNTS = ("cpu", "cpu,cpuacct", "cpuacct,cpu", "cpuacct")


def v1_siblings(path: str) -> list[str]:
    """The same relative path under the other v1 cpu/cpuacct mounts (…/cgroup/cpu/x ->
    …/cgroup/cpuacct/x, …/cgroup/cpu,cpuacct/x, …)."""
    parts = path.split(os.sep)
    for i, part in enumerate(parts):
        if part in V1_CPU_MOUNTS and i > 0 and parts[i - 1] == "cgroup":
            return [os.sep.join(parts[:i] + [m] + parts[i + 1:]) for m in V1_CPU_MOUNTS
                    if m != part]
    return []
