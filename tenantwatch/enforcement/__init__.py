"""Enforcement stage: noisy-neighbour verdicts and static quotas -> CPU caps on per-tenant
cgroups (v2 cpu.max, v1 cpu.cfs_quota_us), as leases with a state file and an audit log.

Policy (pure rules) -> Enforcer (safety checks, writes, leases) -> CgroupWriter (one cgroup);
StateStore / release_all for restarts and `release-caps`; Placer for hosts without slices.
See docs/enforcement.md.
"""

from tenantwatch.enforcement.audit import AuditLog
from tenantwatch.enforcement.cgroupfs import CgroupWriter, V1Writer, V2Writer, within_root
from tenantwatch.enforcement.enforcer import DRY_RUN, ENFORCE, OFF, Enforcer
from tenantwatch.enforcement.errors import (
    CgroupMissing,
    EnforcementError,
    NoCpuController,
    OutsideRoot,
    StateFileError,
)
from tenantwatch.enforcement.placement import Placer
from tenantwatch.enforcement.policy import Policy
from tenantwatch.enforcement.records import (
    REFUSAL_REASONS,
    CpuLimit,
    Decision,
    Lease,
    Outcome,
)
from tenantwatch.enforcement.state import ReleaseReport, StateStore, release_all

__all__ = [
    "DRY_RUN", "ENFORCE", "OFF", "REFUSAL_REASONS", "AuditLog", "CgroupMissing", "CgroupWriter",
    "CpuLimit", "Decision", "EnforcementError", "Enforcer", "Lease", "NoCpuController",
    "Outcome", "OutsideRoot", "Placer", "Policy", "ReleaseReport", "StateFileError",
    "StateStore", "V1Writer", "V2Writer", "release_all", "within_root",
]
