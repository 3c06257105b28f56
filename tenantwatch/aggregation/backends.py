"""CPU of each tenant's own backend cgroup (the `enforcement.cgroup` template), when it exists.

Takes: the template (e.g. /sys/fs/cgroup/tenants.slice/tenant-{tenant}.slice) and tenant names.
Gives: cumulative usage and throttling per tenant, read from cgroup v2 `cpu.stat`
(usage_usec, nr_throttled, throttled_usec) or cgroup v1 `cpuacct.usage` plus the cpu
controller's `cpu.stat` (nr_throttled, throttled_time).  A tenant whose cgroup does not
exist is skipped; a failed read skips that tenant for the tick, never raises.

v1 hosts mount cpu and cpuacct separately (this VM) or together (cpu,cpuacct): for a path
under one of them, the same relative path is tried under the others.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from tenantwatch.aggregation.records import BackendUsage
from tenantwatch.cgroups import v1_siblings

# Existence of a tenant's cgroup is re-checked this often, not every tick.
EXISTS_TTL_SECONDS = 10.0


class BackendCpuReader:
    def __init__(self, template: str, root: str = "/",
                 clock=time.monotonic) -> None:
        self.template = template
        self.root = root
        self._clock = clock
        self._exists: dict[str, tuple[float, bool]] = {}
        self._parent: tuple[float, bool] | None = None

    def path(self, tenant: str) -> str:
        p = self.template.format(tenant=tenant)
        return os.path.join(self.root, p.lstrip("/")) if self.root != "/" else p

    def read(self, tenants: Iterable[str]) -> dict[str, BackendUsage]:
        out: dict[str, BackendUsage] = {}
        now = self._clock()
        tenants = tuple(tenants)
        if not self._parent_exists(now):
            self._exists.clear()
            return out  # no tenant cgroup can exist: not one stat per tenant (10k tenants)
        for tenant in tenants:
            seen = self._exists.get(tenant)
            if seen is None or now - seen[0] > EXISTS_TTL_SECONDS:
                seen = (now, os.path.isdir(self.path(tenant)))
                self._exists[tenant] = seen
            if not seen[1]:
                continue
            usage = self._read_one(self.path(tenant))
            if usage is not None:
                out[tenant] = usage
        for gone in set(self._exists) - set(tenants):
            del self._exists[gone]
        return out

    def _parent_exists(self, now: float) -> bool:
        """Does the directory that holds the tenants' cgroups exist (checked with the same TTL)?
        For the default template, /sys/fs/cgroup/tenants.slice."""
        parent = os.path.dirname(self.path("\0").split("\0", 1)[0] + "x")
        seen = self._parent
        if seen is None or now - seen[0] > EXISTS_TTL_SECONDS:
            seen = (now, os.path.isdir(parent))
            self._parent = seen
        return seen[1]

    def _read_one(self, path: str) -> BackendUsage | None:
        stat = _kv(os.path.join(path, "cpu.stat"))
        if stat is not None and "usage_usec" in stat:  # cgroup v2
            return BackendUsage(stat["usage_usec"] / 1e6, stat.get("throttled_usec", 0) / 1e6,
                                stat.get("nr_throttled", 0), 2)
        usage_ns = None
        for candidate in [path] + v1_siblings(path):
            usage_ns = _int(os.path.join(candidate, "cpuacct.usage"))
            if usage_ns is not None:
                break
        if usage_ns is None:
            return None
        if stat is None:
            for candidate in v1_siblings(path):
                stat = _kv(os.path.join(candidate, "cpu.stat"))
                if stat is not None:
                    break
        stat = stat or {}
        return BackendUsage(usage_ns / 1e9, stat.get("throttled_time", 0) / 1e9,
                            stat.get("nr_throttled", 0), 1)


def _kv(path: str) -> dict[str, int] | None:
    try:
        with open(path) as f:
            out = {}
            for line in f:
                k, _, v = line.partition(" ")
                if v.strip().isdigit():
                    out[k] = int(v)
            return out
    except OSError:
        return None


def _int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None
