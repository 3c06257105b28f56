"""Records of the enforcement stage: CPU limits as read, decisions, leases and outcomes.

Everything is immutable; ``as_dict`` gives JSON types only (the state file and the audit log
write them as they are).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

# Decision actions (Policy) and what the enforcer did about them (Outcome.result).
CAP, STEP_DOWN, RENEW, RELEASE, REFUSE = "cap", "step_down", "renew", "release", "refuse"
ACTIONS = (CAP, STEP_DOWN, RENEW, RELEASE, REFUSE)
# Actions of the enforcer itself, outside the policy: at start and at stop.
ADOPT, RESTORE, KEEP = "adopt", "restore", "keep"

# Triggers: why a tenant is capped.
NOISY, QUOTA = "noisy", "quota"

# Refusal reasons.  The policy gives the first three; the enforcer the rest.
UNTRUSTED = "untrusted"  # the verdict's identity was never trusted (forged header, bad token)
RESERVED = "reserved"  # a reserved bucket or the default tenant: many callers share it
LOST_EVENTS = "lost_events"  # the window had lost events: the evidence is incomplete
GATEWAY_IN_CGROUP = "gateway_in_cgroup"  # the cgroup holds a gateway process (or tenantwatch)
FOREIGN_PROCESSES = "foreign_processes"  # the cgroup holds another tenant's processes
OUTSIDE_ROOT = "outside_root"  # the mapped path resolves outside enforcement.root
STALE = "stale"  # the leased cgroup is gone or was recreated (another inode)
NO_CGROUP = "no_cgroup"  # the tenant has no cgroup of its own: nothing to cap
NO_CPU_CONTROLLER = "no_cpu_controller"  # neither cpu.max nor cpu.cfs_quota_us in the cgroup
WRITE_FAILED = "write_failed"  # the kernel refused the write (EINVAL, EACCES, ...)
# the limit read back is not the one we wrote: someone else manages the cgroup now, we let go
CHANGED_EXTERNALLY = "changed_externally"
STATE_UNSAVED = "state_unsaved"  # the lease could not be saved first: no cap is written
KILL_SWITCH = "kill_switch"  # enforcement.kill_switch exists: every lease ends, nothing new
REFUSAL_REASONS = (
    UNTRUSTED, RESERVED, LOST_EVENTS, GATEWAY_IN_CGROUP, FOREIGN_PROCESSES, OUTSIDE_ROOT, STALE,
    NO_CGROUP, NO_CPU_CONTROLLER, WRITE_FAILED, CHANGED_EXTERNALLY, STATE_UNSAVED, KILL_SWITCH,
)


@dataclass(frozen=True)
class CpuLimit:
    """A cgroup's CPU bandwidth limit as the kernel shows it.

    ``quota_us`` None means no limit (v2 ``max``, v1 ``-1``).  ``weight`` is v2 ``cpu.weight`` or
    v1 ``cpu.shares`` as read (the units differ; a limit is only ever restored to the same
    hierarchy it was read from), None when the file is absent.
    """

    quota_us: int | None
    period_us: int
    weight: int | None = None
    burst_us: int | None = None  # v2 cpu.max.burst, v1 cpu.cfs_burst_us; None when absent

    @property
    def cores(self) -> float | None:
        return None if self.quota_us is None else self.quota_us / self.period_us

    def same_bandwidth(self, other: CpuLimit) -> bool:
        """Quota and period equal (the weight is never written by a cap)."""
        return (self.quota_us, self.period_us) == (other.quota_us, other.period_us)

    def as_dict(self) -> dict[str, Any]:
        return {"quota_us": self.quota_us, "period_us": self.period_us, "weight": self.weight,
                "burst_us": self.burst_us}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CpuLimit:
        quota, period, weight = d.get("quota_us"), d["period_us"], d.get("weight")
        if quota is not None and (isinstance(quota, bool) or not isinstance(quota, int)):
            raise ValueError(f"quota_us {quota!r} is not an integer or null")
        if isinstance(period, bool) or not isinstance(period, int) or period <= 0:
            raise ValueError(f"period_us {period!r} is not a positive integer")
        if weight is not None and (isinstance(weight, bool) or not isinstance(weight, int)):
            raise ValueError(f"weight {weight!r} is not an integer or null")
        burst = d.get("burst_us")  # absent in state files written before it was saved
        if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int)
                                  or burst < 0):
            raise ValueError(f"burst_us {burst!r} is not a non-negative integer or null")
        return cls(quota, period, weight, burst)


@dataclass(frozen=True)
class Decision:
    """What the policy wants done for one tenant in one tick.

    ``cores`` is the new cap for cap / step_down / renew, the quota a release returns to (None:
    back to the original limit), and None for a refusal.  ``reason`` says why: for a refusal one
    of REFUSAL_REASONS, otherwise e.g. noisy_neighbour, static_quota, verdict_holds, calm,
    lease_expired.  ``evidence`` holds JSON types only: the verdict's evidence plus the numbers
    the policy used (usage_cores, current_cores, floor, ...).
    """

    tenant: str
    action: str
    cores: float | None
    reason: str
    trigger: str | None = None  # NOISY | QUOTA for cap / step_down / renew / release-to-quota
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "action": self.action, "cores": self.cores,
                "reason": self.reason, "trigger": self.trigger, "evidence": dict(self.evidence)}


@dataclass(frozen=True)
class Lease:
    """A cap tenantwatch holds on one cgroup, and what to put back when it ends.

    Times are wall-clock Unix seconds so that a restarted daemon (and `release-caps`) can judge
    them.  ``inode`` identifies the cgroup directory: a cgroup removed and created again under
    the same path has another inode, and is not ours.  ``written`` is None for a dry-run lease
    (nothing was written).  ``renewed_at`` is the last time the trigger still held.
    """

    tenant: str
    path: str
    inode: int
    version: int  # cgroup hierarchy version, 1 or 2
    cores: float
    trigger: str
    original: CpuLimit
    written: CpuLimit | None
    taken_at: float
    changed_at: float
    renewed_at: float
    expires_at: float

    def with_(self, **changes: Any) -> Lease:
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "path": self.path, "inode": self.inode,
                "version": self.version, "cores": self.cores, "trigger": self.trigger,
                "original": self.original.as_dict(),
                "written": None if self.written is None else self.written.as_dict(),
                "taken_at": self.taken_at, "changed_at": self.changed_at,
                "renewed_at": self.renewed_at, "lease_expires_unix": self.expires_at}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Lease:
        """Raises KeyError, TypeError or ValueError on a malformed entry."""
        written = d.get("written")
        return cls(
            tenant=str(d["tenant"]), path=str(d["path"]), inode=int(d["inode"]),
            version=int(d["version"]), cores=float(d["cores"]), trigger=str(d["trigger"]),
            original=CpuLimit.from_dict(d["original"]),
            written=None if written is None else CpuLimit.from_dict(written),
            taken_at=float(d["taken_at"]), changed_at=float(d["changed_at"]),
            renewed_at=float(d["renewed_at"]), expires_at=float(d["lease_expires_unix"]),
        )


@dataclass(frozen=True)
class Outcome:
    """What the enforcer did with one decision (or at start / stop); one audit line each.

    ``action`` is the decision's, or adopt / restore / keep; ``result`` is done (written),
    would (dry-run), refused, failed or noop.  ``audited`` is False for a refusal repeated from
    the previous tick (counted and logged once per run of ticks).
    """

    at: float
    mode: str
    tenant: str
    action: str
    result: str
    reason: str
    cores: float | None = None
    previous_cores: float | None = None
    path: str | None = None
    evidence: Mapping[str, Any] = field(default_factory=dict)
    detail: str | None = None
    audited: bool = True

    @property
    def audit_action(self) -> str:
        """The action as the audit log names it: would_cap ... in dry-run."""
        return f"would_{self.action}" if self.result == "would" else self.action

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "ts": round(self.at, 3), "mode": self.mode, "tenant": self.tenant,
            "action": self.audit_action, "result": self.result, "reason": self.reason,
            "cores": self.cores, "previous_cores": self.previous_cores, "path": self.path,
            "evidence": dict(self.evidence)}
        if self.detail:
            doc["detail"] = self.detail
        return doc
