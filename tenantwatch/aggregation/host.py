"""Host samples for a tick: per-CPU busy time (/proc/stat), CPU pressure (PSI), temperatures.

Roots are constructor parameters so tests use fixture trees; a failed read gives None
or an empty mapping, never an exception in the tick.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from tenantwatch.aggregation.backends import BackendCpuReader
from tenantwatch.aggregation.power import ThermalReader
from tenantwatch.aggregation.records import HostSample

USER_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class HostSampler:
    """Reads /proc/stat and /proc/pressure/cpu (busy time is the delta since the last call) and,
    with a BackendCpuReader, the tenants' own backend cgroups."""

    def __init__(self, proc: str = "/proc", backends: BackendCpuReader | None = None,
                 thermal: ThermalReader | None = None) -> None:
        self.proc = proc
        self.backends = backends
        self.thermal = thermal if thermal is not None else ThermalReader()
        self._last: dict[int, int] = {}

    def sample(self, tenants: Iterable[str] = ()) -> HostSample:
        busy_now = self._busy_ticks()
        delta = {cpu: max(0, t - self._last.get(cpu, t)) / USER_HZ for cpu, t in busy_now.items()}
        self._last = busy_now
        backends = self.backends.read(tenants) if self.backends is not None else {}
        return HostSample(cpu_busy_seconds=delta, psi_some_avg10=self._psi(), backends=backends,
                          temperatures_celsius=self.thermal.read())

    def _busy_ticks(self) -> dict[int, int]:
        out: dict[int, int] = {}
        try:
            with open(os.path.join(self.proc, "stat")) as f:
                for line in f:
                    if not line.startswith("cpu") or line.startswith("cpu "):
                        continue
                    name, *fields = line.split()
                    vals = [int(x) for x in fields]
                    # user nice system idle iowait irq softirq steal ...: busy = all - idle - iowait
                    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
                    out[int(name[3:])] = sum(vals[:8]) - idle
        except (OSError, ValueError, IndexError):
            return {}
        return out

    def _psi(self) -> float | None:
        try:
            with open(os.path.join(self.proc, "pressure", "cpu")) as f:
                for line in f:
                    if line.startswith("some "):
                        for part in line.split()[1:]:
                            k, _, v = part.partition("=")
                            if k == "avg10":
                                return float(v)
        except (OSError, ValueError):
            return None
        return None
