"""The enforcer: policy decisions -> cgroup writes, leases, the state file and the audit log.

Takes: each tick, the detection result (and optionally each tenant's cumulative cgroup CPU
seconds); or decisions directly (``apply``).  Gives: caps written (enforce), "would" entries
(dry-run) or nothing (off); an ``Outcome`` per decision, each audited; counters of actions and
of refusals by reason; the caps in force.

Every cap, step down and renewal passes safety.SafetyChecks first (outside_root, no_cgroup,
stale, gateway_in_cgroup, foreign_processes, ...); a lease in force is checked again every tick
and ended when it fails (its original restored, unless the cgroup is no longer ours: recreated,
or its limit changed by someone else).  No first cap is written before its lease is saved
(state_unsaved otherwise).  While the kill-switch file (enforcement.kill_switch) exists, every
lease ends with its original restored and nothing new is decided.  A refusal repeated on
consecutive ticks is counted and audited once.

``start()`` reconciles with the state file: a lease is adopted only in enforce mode, when its
cgroup is the same (path, inode, version), still holds exactly what we wrote, and the lease has
not expired; any other entry has its original restored (if the cgroup is still ours) and is
dropped.  ``stop()`` restores every original unless told to keep them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Callable

from tenantwatch.config.constants import ENFORCEMENT_MODES
from tenantwatch.detection.records import DetectionResult
from tenantwatch.enforcement import records as r
from tenantwatch.enforcement.audit import AuditLog
from tenantwatch.enforcement.cgroupfs import CgroupWriter, quota_us
from tenantwatch.enforcement.errors import EnforcementError, StateFileError
from tenantwatch.enforcement.policy import Policy
from tenantwatch.enforcement.records import CpuLimit, Decision, Lease, Outcome
from tenantwatch.enforcement.safety import SafetyChecks, reason_of
from tenantwatch.enforcement.state import StateStore, restore_lease, why_not_adopt
from tenantwatch.enforcement.usage import UsageMeter

if TYPE_CHECKING:  # annotations only
    from tenantwatch.config import Enforcement

log = logging.getLogger(__name__)

OFF, DRY_RUN, ENFORCE = ENFORCEMENT_MODES
WriterFactory = Callable[[str, str], CgroupWriter]


class Enforcer:
    """``settings`` is a config.Enforcement.  ``gateway_pids`` gives the gateway's processes
    (tenantwatch's own pid is always added); ``tenant_of_pid`` (placement mode) names the tenant a
    process belongs to, or None.  ``protected`` tenants (the default tenant) are never capped."""

    def __init__(self, settings: Enforcement, mode: str | None = None, *,
                 writer_factory: WriterFactory = CgroupWriter.for_path,
                 state_store: StateStore | None = None, audit_log: AuditLog | None = None,
                 gateway_pids: Callable[[], Iterable[int]] = set,
                 tenant_of_pid: Callable[[int], str | None] | None = None,
                 protected: Iterable[str] = (), clock: Callable[[], float] = time.time,
                 host_cores: float | None = None, policy: Policy | None = None,
                 quota_source: Callable[[], Mapping[str, float]] | None = None) -> None:
        self.settings = settings
        self.mode = mode or settings.mode
        if self.mode not in ENFORCEMENT_MODES:
            raise ValueError(f"mode {self.mode!r}")
        self.root = settings.root
        self.template = settings.cgroup
        self.policy = policy or Policy(settings, protected=protected, host_cores=host_cores,
                                       clock=clock, quota_source=quota_source)
        self._writer_factory = writer_factory
        self._state = state_store
        self._audit = audit_log
        self._safety = SafetyChecks(self.root, writer_factory, gateway_pids, tenant_of_pid)
        self._clock = clock
        self._lock = threading.Lock()  # the HTTP thread reads snapshots
        self._leases: dict[str, Lease] = {}
        self._usage = UsageMeter(self._read_usage)
        self._refused_prev: set[tuple[str, str]] = set()
        self._refused_now: set[tuple[str, str]] = set()
        self._dirty = False
        self._stopped = False
        self.killed = False  # enforcement.kill_switch seen at the last tick
        self.refusals: Counter[str] = Counter()
        # (tenant, action, mode): cap, step_down, renew, release, adopt, restore, keep
        self.actions: Counter[tuple[str, str, str]] = Counter()

    def path_for(self, tenant: str) -> str:
        return self.template.replace("{tenant}", tenant)

    # ------------------------------------------------------------------ views

    def caps_in_force(self) -> dict[str, float]:
        """Caps written and leased (enforce mode); dry-run leases are not caps."""
        with self._lock:
            if self.mode != ENFORCE:
                return {}
            return {t: lease.cores for t, lease in sorted(self._leases.items())}

    def would_caps(self) -> dict[str, float]:
        """Dry-run: the caps enforce mode would hold now."""
        with self._lock:
            if self.mode != DRY_RUN:
                return {}
            return {t: lease.cores for t, lease in sorted(self._leases.items())}

    def payload(self) -> dict[str, Any]:
        """The /api/v1/caps document (docs/enforcement.md)."""
        now = self._clock()
        with self._lock:
            leases = [{
                "tenant": lease.tenant, "cores": lease.cores, "trigger": lease.trigger,
                "path": lease.path, "cgroup_version": lease.version,
                "original": lease.original.as_dict(), "since": lease.taken_at,
                "changed_at": lease.changed_at, "lease_expires_unix": lease.expires_at,
                "lease_seconds_left": round(max(0.0, lease.expires_at - now), 3),
            } for _, lease in sorted(self._leases.items())]
            return {
                "mode": self.mode, "root": self.root, "template": self.template,
                "caps": leases if self.mode == ENFORCE else [],
                "would_caps": leases if self.mode == DRY_RUN else [],
                "refusals": dict(sorted(self.refusals.items())),
                "kill_switch": {"path": self.settings.kill_switch, "on": self.killed},
                "actions": [{"tenant": t, "action": a, "mode": m, "count": n}
                            for (t, a, m), n in sorted(self.actions.items())],
            }

    # ------------------------------------------------------------------ per tick

    def tick(self, result: DetectionResult,
             usage_seconds: Mapping[str, float] | None = None) -> tuple[Outcome, ...]:
        """Decide and act on one detection result.  ``usage_seconds``: cumulative CPU seconds of
        each tenant's cgroup (the aggregation snapshot's backends); read here when None."""
        if self.mode == OFF or self._stopped:
            return ()
        with self._lock:
            leases = dict(self._leases)
        if self._kill_switch():
            # Every lease ends (its original back, this tick) and nothing new is decided.
            ev = {"kill_switch": self.settings.kill_switch}
            return self.apply(
                [Decision(t, r.RELEASE, None, r.KILL_SWITCH, None, ev) for t in sorted(leases)]
                + [Decision(v.tenant, r.REFUSE, None, r.KILL_SWITCH, None, v.evidence)
                   for v in result.noisy if v.active])
        # Every tenant of the window is measured, so that its use is known when it is flagged.
        tenants = ({v.tenant for v in result.noisy} | set(result.shares) | set(leases)
                   | set(self.policy.quotas())) - self.policy.protected
        usage = self._usage.sample(tenants, self._clock(), usage_seconds)
        decisions = self.policy.decide(result.noisy, result.window_complete, leases, usage)
        return self.apply(decisions)

    def apply(self, decisions: Iterable[Decision]) -> tuple[Outcome, ...]:
        if self.mode == OFF or self._stopped:
            return ()
        now = self._clock()
        outs: list[Outcome] = []
        with self._lock:
            self._refused_now = set()
            self._safety.begin()
            touched = set()
            for d in decisions:
                if d.action != r.REFUSE:  # these check (or end) the lease themselves
                    touched.add(d.tenant)
                outs.extend(self._apply_one(d, now))
            for tenant in sorted(set(self._leases) - touched):
                outs.extend(self._verify(self._leases[tenant], now))
            self._refused_prev = self._refused_now
            self._persist()
            self._count(outs)
        for o in outs:
            self._record(o)
        return tuple(outs)

    def _kill_switch(self) -> bool:
        """Whether enforcement.kill_switch exists; its coming and going is logged once."""
        path = self.settings.kill_switch
        on = bool(path) and os.path.lexists(path)
        if on != self.killed:
            self.killed = on
            if on:
                log.warning("enforcement: kill switch %s exists: every cap is released and no "
                            "new one is made until it is removed", path)
            else:
                log.warning("enforcement: kill switch %s removed: enforcement resumes", path)
        return on

    def _read_usage(self, tenant: str) -> float | None:
        try:
            return self._writer_factory(self.path_for(tenant), self.root).usage_seconds()
        except EnforcementError:
            return None

    # ------------------------------------------------------------------ acting

    def _apply_one(self, d: Decision, now: float) -> list[Outcome]:
        lease = self._leases.get(d.tenant)
        if d.action == r.REFUSE:
            return [self._refusal(d.tenant, d.reason, now, d.evidence)]
        if d.action == r.RELEASE:
            return self._release(lease, d, now) if lease is not None else []
        path = lease.path if lease is not None else self.path_for(d.tenant)
        check = self._safety.check(d.tenant, path, lease)
        if check.reason is not None:
            return self._refuse_lease(d.tenant, check.reason, lease, now, d.evidence,
                                      check.detail, path)
        writer = check.writer
        assert writer is not None and d.cores is not None
        if d.action == r.RENEW and lease is not None:
            self._leases[d.tenant] = lease.with_(renewed_at=now,
                                                 expires_at=now + self.settings.lease_ttl_seconds)
            self._dirty = True
            return [self._outcome(now, d, d.cores, lease.cores, path)]
        return self._set_cap(writer, d, lease, now, path)

    def _set_cap(self, writer: CgroupWriter, d: Decision, lease: Lease | None, now: float,
                 path: str) -> list[Outcome]:
        assert d.cores is not None
        ttl = self.settings.lease_ttl_seconds
        first = lease is None
        original: CpuLimit | None = None
        try:
            if lease is None:
                original = writer.read_limit()
                lease = Lease(d.tenant, path, writer.inode(), writer.version, d.cores,
                              d.trigger or r.NOISY, original, None, now, now, now, now + ttl)
                previous = original.cores
            else:
                previous = lease.cores
            new = lease.with_(cores=d.cores, trigger=d.trigger or lease.trigger, changed_at=now,
                              renewed_at=now, expires_at=now + ttl)
            if self.mode == ENFORCE:
                if original is not None:
                    # Saved before the write: a daemon killed in between leaves an entry whose
                    # original is what is in force, and a restore of it changes nothing.
                    period = original.period_us
                    intended = CpuLimit(quota_us(d.cores, period), period, original.weight)
                    self._leases[d.tenant] = new.with_(written=intended)
                    if not self._persist(force=True):
                        # No cap without its lease on disk: a daemon killed after the write
                        # would leave a cap nobody knows to restore.
                        del self._leases[d.tenant]
                        return [self._refusal(d.tenant, r.STATE_UNSAVED, now, d.evidence,
                                              f"state file {self.settings.state_file}", path)]
                new = new.with_(written=writer.write_cap(d.cores))
        except EnforcementError as e:
            if first and self.mode == ENFORCE and d.tenant in self._leases:
                if original is not None:
                    try:
                        writer.restore(original)  # best effort: the write may have landed
                    except EnforcementError:
                        log.error("enforcement: %s: cannot put back %s after a failed cap",
                                  path, original.as_dict())
                del self._leases[d.tenant]
                self._dirty = True
            return [self._refusal(d.tenant, r.WRITE_FAILED, now, d.evidence, str(e), path)]
        self._leases[d.tenant] = new
        self._dirty = True
        return [self._outcome(now, d, d.cores, previous, path)]

    def _release(self, lease: Lease, d: Decision, now: float) -> list[Outcome]:
        if d.cores is not None:  # back to the static quota
            try:
                writer = self._writer_factory(lease.path, self.root)
            except EnforcementError as e:
                return self._refuse_lease(lease.tenant, reason_of(e, lease), lease, now,
                                          d.evidence, str(e), lease.path)
            return self._set_cap(writer, d, lease, now, lease.path)
        if self.mode == ENFORCE:
            try:
                done = restore_lease(lease, self.root, self._writer_factory)
            except EnforcementError as e:
                return [self._refusal(lease.tenant, r.WRITE_FAILED, now, d.evidence, str(e),
                                      lease.path)]
            if done != "restored":
                del self._leases[lease.tenant]
                self._dirty = True
                return [self._refusal(lease.tenant, r.STALE, now, d.evidence,
                                      f"cgroup {done}; nothing to restore", lease.path)]
        del self._leases[lease.tenant]
        self._dirty = True
        return [self._outcome(now, d, lease.original.cores, lease.cores, lease.path)]

    def _verify(self, lease: Lease, now: float) -> list[Outcome]:
        check = self._safety.check(lease.tenant, lease.path, lease)
        if check.reason is None:
            return []
        return self._refuse_lease(lease.tenant, check.reason, lease, now, {}, check.detail,
                                  lease.path)

    def _refuse_lease(self, tenant: str, reason: str, lease: Lease | None, now: float,
                      evidence: Mapping[str, Any], detail: str | None,
                      path: str) -> list[Outcome]:
        """A refusal; when a lease is in force it ends: a cgroup no longer ours (stale, or its
        limit changed by someone else) is left alone, any other gets its original back."""
        outs = [self._refusal(tenant, reason, now, evidence, detail, path)]
        if lease is None:
            return outs
        if reason in (r.STALE, r.CHANGED_EXTERNALLY):  # not ours any more: left as it is
            del self._leases[tenant]
            self._dirty = True
            return outs
        release = Decision(tenant, r.RELEASE, None, reason, None, evidence)
        return outs + self._release(lease, release, now)

    # ------------------------------------------------------------------ outcomes

    def _outcome(self, now: float, d: Decision, cores: float | None,
                 previous: float | None, path: str) -> Outcome:
        result = "done" if self.mode == ENFORCE else "would"
        return Outcome(now, self.mode, d.tenant, d.action, result, d.reason, cores, previous,
                       path, d.evidence)

    def _refusal(self, tenant: str, reason: str, now: float, evidence: Mapping[str, Any],
                 detail: str | None = None, path: str | None = None) -> Outcome:
        key = (tenant, reason)
        self._refused_now.add(key)
        return Outcome(now, self.mode, tenant, r.REFUSE, "refused", reason, None, None,
                       path if path is not None else self.path_for(tenant), evidence, detail,
                       audited=key not in self._refused_prev)

    def _count(self, outs: Iterable[Outcome]) -> None:
        """Under the lock (snapshots read the counters)."""
        for o in outs:
            if not o.audited:
                continue
            if o.result == "refused":  # by reason only: refusals are not actions on a cgroup
                self.refusals[o.reason] += 1
            else:
                self.actions[(o.tenant, o.action, o.mode)] += 1

    def _record(self, o: Outcome) -> None:
        """Outside the lock: the log line and the audit line."""
        if not o.audited:
            return
        if o.result == "refused":
            log.warning("enforcement: refused %s for %s: %s%s", o.reason, o.tenant,
                        o.path, f" ({o.detail})" if o.detail else "")
        else:
            log.info("enforcement: %s %s %s -> %s cores (%s)", o.tenant, o.audit_action,
                     o.path, o.cores, o.reason)
        if self._audit is not None:
            self._audit.write(o)

    def _persist(self, force: bool = False) -> bool:
        """Save the leases when they changed (or ``force``).  False when the save failed."""
        if self.mode != ENFORCE or self._state is None or not (self._dirty or force):
            return True
        try:
            self._state.save(self._leases)
            self._dirty = False
            return True
        except StateFileError as e:
            log.error("enforcement: %s (leases are kept in memory; retried next tick)", e)
            return False

    # ------------------------------------------------------------------ start / stop

    def start(self) -> tuple[Outcome, ...]:
        """Reconcile with the state file; see the module docstring."""
        if self._state is None:
            return ()
        try:
            saved = self._state.load()
        except StateFileError as e:
            moved = self._state.set_aside()
            log.error("enforcement: %s; moved to %s, starting without leases (check for caps "
                      "left behind)", e, moved)
            return ()
        now = self._clock()
        outs: list[Outcome] = []
        unrestored: dict[str, Lease] = {}
        earlier_boot = self._state.from_earlier_boot()
        with self._lock:
            for tenant, lease in sorted(saved.items()):
                if earlier_boot:  # caps do not survive a reboot; those cgroups are not ours
                    outs.append(self._lifecycle(now, lease, r.RESTORE, "noop", "earlier_boot",
                                                f"state file from boot {self._state.loaded_boot_id}"))
                    continue
                why = f"mode_{self.mode}" if self.mode != ENFORCE else why_not_adopt(
                    lease, self.path_for(tenant), self.root, now, self._writer_factory)
                if why is None:
                    self._leases[tenant] = lease
                    outs.append(self._lifecycle(now, lease, r.ADOPT, "done", "state_matches"))
                    continue
                try:
                    done = restore_lease(lease, self.root, self._writer_factory)
                except EnforcementError as e:
                    unrestored[tenant] = lease
                    outs.append(self._lifecycle(now, lease, r.RESTORE, "failed", why, str(e)))
                    continue
                outs.append(self._lifecycle(now, lease, r.RESTORE,
                                            "done" if done == "restored" else "noop", why,
                                            None if done == "restored" else f"cgroup {done}"))
            if self.mode == ENFORCE:
                # Kept as expired leases: the policy releases them next tick, retrying.
                self._leases.update({t: lease.with_(expires_at=now)
                                     for t, lease in unrestored.items()})
                self._persist(force=True)
            elif saved:
                try:  # only what could not be restored stays, for release-caps
                    self._state.save(unrestored)
                except StateFileError as e:
                    log.error("enforcement: %s", e)
            self._count(outs)
        for o in outs:
            self._record(o)
        return tuple(outs)

    def stop(self, keep: bool | None = None) -> tuple[Outcome, ...]:
        """Restore every original (enforce mode), or with ``keep`` (default
        enforcement.keep_on_exit) leave the caps and the state file for the next start or
        `release-caps`.  Idempotent."""
        if self._stopped:
            return ()
        self._stopped = True
        keep = self.settings.keep_on_exit if keep is None else keep
        now = self._clock()
        outs: list[Outcome] = []
        with self._lock:
            if self.mode != ENFORCE:
                self._leases.clear()
                return ()
            for tenant, lease in sorted(self._leases.items()):
                if keep:
                    outs.append(self._lifecycle(now, lease, r.KEEP, "done", "keep_on_exit"))
                    continue
                try:
                    done = restore_lease(lease, self.root, self._writer_factory)
                except EnforcementError as e:
                    outs.append(self._lifecycle(now, lease, r.RESTORE, "failed", "shutdown",
                                                str(e)))
                    continue  # stays in the state file for release-caps
                del self._leases[tenant]
                outs.append(self._lifecycle(now, lease, r.RESTORE,
                                            "done" if done == "restored" else "noop", "shutdown"))
            self._persist(force=True)
            self._count(outs)
        for o in outs:
            self._record(o)
        return tuple(outs)

    def _lifecycle(self, now: float, lease: Lease, action: str, result: str, reason: str,
                   detail: str | None = None) -> Outcome:
        cores = lease.cores if action != r.RESTORE else lease.original.cores
        return Outcome(now, self.mode, lease.tenant, action, result, reason, cores, lease.cores,
                       lease.path, {"lease": lease.as_dict()}, detail)

