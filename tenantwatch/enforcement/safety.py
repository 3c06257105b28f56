"""The checks every cap, step down and renewal must pass, and that a lease in force must keep
passing: each failure is a refusal reason (records.REFUSAL_REASONS).

Takes: a tenant, the cgroup path it maps to, its lease (if any).  Gives: None when the cgroup may
be capped (with the writer to do it), or the refusal reason and a detail for the log:

- outside_root: the path, symlinks and ``..`` resolved, is not strictly below the root;
- no_cgroup / no_cpu_controller: nothing to cap (no lease yet);
- stale: the leased cgroup is gone, or another cgroup (other inode or version) took its path;
- changed_externally: the limit read back is not the one the lease wrote (someone else set it);
- gateway_in_cgroup: the subtree holds a gateway process or tenantwatch itself;
- foreign_processes: the subtree holds a process that placement's selectors give to another
  tenant (placement mode only: without it nothing says whose a process is).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Callable

from tenantwatch.enforcement import records as r
from tenantwatch.enforcement.cgroupfs import CgroupWriter, within_root
from tenantwatch.enforcement.errors import (
    CgroupMissing,
    EnforcementError,
    NoCpuController,
    OutsideRoot,
)
from tenantwatch.enforcement.records import Lease

# Pids named in a refusal's detail: enough to find the culprit, bounded for the log line.
MAX_PIDS_SHOWN = 10


@dataclass(frozen=True)
class Check:
    reason: str | None  # None: passed
    writer: CgroupWriter | None = None
    detail: str | None = None


class SafetyChecks:
    def __init__(self, root: str, writer_factory: Callable[[str, str], CgroupWriter],
                 gateway_pids: Callable[[], Iterable[int]],
                 tenant_of_pid: Callable[[int], str | None] | None = None) -> None:
        self.root = root
        self._writer_factory = writer_factory
        self._gateway_pids = gateway_pids
        self._tenant_of_pid = tenant_of_pid
        self._gateway: set[int] | None = None

    def begin(self) -> None:
        """A new round of checks (one tick): the gateway's pids are asked for again, once."""
        self._gateway = None

    def gateway(self) -> set[int]:
        if self._gateway is None:
            self._gateway = set(self._gateway_pids()) | {os.getpid()}
        return self._gateway

    def check(self, tenant: str, path: str, lease: Lease | None) -> Check:
        if not within_root(path, self.root):
            return Check(r.OUTSIDE_ROOT, None,
                         f"{path} -> {os.path.realpath(path)} is not below {self.root}")
        try:
            writer = self._writer_factory(path, self.root)
            if lease is not None and (writer.inode() != lease.inode
                                      or writer.version != lease.version):
                return Check(r.STALE, None, f"{path} was recreated (inode {lease.inode} -> "
                             f"{writer.inode()}, cgroup v{writer.version})")
            if lease is not None and lease.written is not None:
                now = writer.read_limit()
                if not now.same_bandwidth(lease.written):
                    return Check(r.CHANGED_EXTERNALLY, None,
                                 f"{path}: {now.as_dict()} in force, {lease.written.as_dict()} "
                                 "written by tenantwatch")
            procs = writer.procs()
        except EnforcementError as e:
            return Check(reason_of(e, lease), None, str(e))
        hit = sorted(procs & self.gateway())
        if hit:
            return Check(r.GATEWAY_IN_CGROUP, None, f"gateway or tenantwatch pids "
                         f"{hit[:MAX_PIDS_SHOWN]} in {path}")
        if self._tenant_of_pid is not None:
            foreign = {}
            for pid in sorted(procs):
                owner = self._tenant_of_pid(pid)
                if owner is not None and owner != tenant:
                    foreign[pid] = owner
                    if len(foreign) >= MAX_PIDS_SHOWN:
                        break
            if foreign:
                return Check(r.FOREIGN_PROCESSES, None,
                             f"processes of other tenants in {path}: {foreign}")
        return Check(None, writer)


def reason_of(e: EnforcementError, lease: Lease | None) -> str:
    """The refusal reason an error from the cgroup tree stands for."""
    if isinstance(e, OutsideRoot):
        return r.OUTSIDE_ROOT
    if isinstance(e, CgroupMissing):
        return r.STALE if lease is not None else r.NO_CGROUP
    if isinstance(e, NoCpuController):
        return r.STALE if lease is not None else r.NO_CPU_CONTROLLER
    return r.WRITE_FAILED
