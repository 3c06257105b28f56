"""The enforcement policy: noisy-neighbour verdicts and static quotas -> cap decisions.

Takes, each tick: the active verdicts (detection), whether the window was complete, the leases
in force (from the enforcer) and each tenant's measured CPU use in cores.  Gives: a tuple of
``Decision`` (cap, step_down, renew, release, refuse).  No I/O: the only state kept is when each
tenant's verdict last held, for the calm period.

Rules (docs/enforcement.md explains each):

- Only a verdict whose evidence says ``trusted`` may cap; else refuse ``untrusted``.  A reserved
  bucket or the default tenant is never capped (``reserved``).  No new cap and no step down from a
  window that lost events (``lost_events``); a lease already in force may still be renewed.
- First cap: ``max(floor, usage * (1 - max_step))``, the usage being the tenant's measured cores
  (its current cap when capped; the host's cores when not measured yet).
- While the verdict holds, after each ``cooldown_seconds`` since the last change: step down to
  ``max(floor, cap * (1 - max_step))`` (max_step <= 0.5: no step larger than half the cap).
- A lease is renewed (expires ``lease_ttl_seconds`` later) while its trigger holds, once at most
  half of its TTL is left; it is released after ``calm_seconds`` without a verdict (and not
  within the cooldown), or at once when it has expired.
- Static quotas: a tenant with a quota is capped at it and renewed while it is configured; a
  noisy verdict steps it further down from there, and a calm period returns it to the quota.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Callable

from tenantwatch.detection.records import Verdict
from tenantwatch.enforcement.records import (
    CAP,
    LOST_EVENTS,
    NOISY,
    QUOTA,
    RELEASE,
    RENEW,
    RESERVED,
    STEP_DOWN,
    UNTRUSTED,
    Decision,
    Lease,
)
from tenantwatch.identity.records import RESERVED_LABELS

if TYPE_CHECKING:  # config imports this package at run time; annotations only
    from tenantwatch.config import Enforcement

_RESERVED_LABELS = frozenset(RESERVED_LABELS)
# Cores are rounded to this many digits: finer than the kernel's 1 us of a 100 ms period.
_DIGITS = 4
_EPSILON = 10.0 ** -_DIGITS


class Policy:
    """``settings`` is a config.Enforcement (floor, max_step, cooldown_seconds, calm_seconds,
    lease_ttl_seconds, quotas).  ``protected`` names tenants never capped besides the reserved
    labels (the default tenant).  ``host_cores`` stands for the use of a tenant not measured yet.
    ``quota_source`` gives more static quotas each tick (the tenant registry's); the config's
    win over them, and one below ``floor`` is raised to it.
    """

    def __init__(self, settings: Enforcement, *, protected: Iterable[str] = (),
                 host_cores: float | None = None,
                 clock: Callable[[], float] = time.time,
                 quota_source: Callable[[], Mapping[str, float]] | None = None) -> None:
        self.settings = settings
        self._quota_source = quota_source
        self.protected = _RESERVED_LABELS | frozenset(protected)
        self.host_cores = float(host_cores or os.cpu_count() or 1)
        self._clock = clock
        self._seen: dict[str, float] = {}  # tenant -> last time a trusted verdict held

    def decide(self, verdicts: Iterable[Verdict], window_complete: bool,
               leases: Mapping[str, Lease], usage: Mapping[str, float]) -> tuple[Decision, ...]:
        now = self._clock()
        quotas = self.quotas()
        out: list[Decision] = []
        noisy: dict[str, Verdict] = {}
        for v in verdicts:
            if not v.active:
                continue
            evidence = dict(v.evidence)
            if v.tenant in self.protected:
                out.append(_refuse(v.tenant, RESERVED, evidence))
            elif evidence.get("trusted") is not True:
                out.append(_refuse(v.tenant, UNTRUSTED, evidence))
            else:
                noisy[v.tenant] = v
                self._seen[v.tenant] = now
        for tenant in sorted(quotas):
            if tenant in self.protected:
                out.append(_refuse(tenant, RESERVED, {"quota_cores": quotas[tenant]}))
        for tenant in sorted(set(noisy) | set(leases) | set(quotas)):
            if tenant in self.protected:  # a lease on one (adopted, config changed): end it
                if tenant in leases:
                    out.append(Decision(tenant, RELEASE, None, RESERVED, None, {}))
                continue
            v = noisy.get(tenant)
            # Complete for this tenant: the node's window, and no loss charged to the tenant
            # (the verdict's evidence; docs/detection.md, "Completeness").
            complete = window_complete and (v is None or v.evidence.get("window_complete", True))
            d = self._one(tenant, v, leases.get(tenant), quotas.get(tenant),
                          usage.get(tenant), complete, now)
            out.extend(d)
        for tenant in [t for t in self._seen if t not in noisy and t not in leases]:
            del self._seen[tenant]  # forget tenants with neither a verdict nor a lease
        return tuple(out)

    def quotas(self) -> dict[str, float]:
        """The static quotas in force: the quota source's (floored), then the config's."""
        extra = self._quota_source() if self._quota_source is not None else {}
        return {**{t: max(self.settings.floor, c) for t, c in extra.items()},
                **self.settings.quotas}

    def _one(self, tenant: str, verdict: Verdict | None, lease: Lease | None,
             quota: float | None, usage: float | None, complete: bool,
             now: float) -> list[Decision]:
        s = self.settings
        ev: dict[str, Any] = dict(verdict.evidence) if verdict is not None else {}
        ev.update({"usage_cores": None if usage is None else round(usage, _DIGITS),
                   "current_cores": None if lease is None else lease.cores,
                   "quota_cores": quota, "floor_cores": s.floor, "max_step": s.max_step})
        if verdict is not None:
            if lease is None:
                if not complete:
                    return [_refuse(tenant, LOST_EVENTS, ev)]
                if quota is not None:  # not capped at the quota yet: that first
                    return [Decision(tenant, CAP, _round(quota), "static_quota", QUOTA, ev)]
                basis = usage if usage is not None else self.host_cores
                cores = _round(max(s.floor, basis * (1.0 - s.max_step)))
                return [Decision(tenant, CAP, cores, "noisy_neighbour", NOISY, ev)]
            stepped = _round(max(s.floor, lease.cores * (1.0 - s.max_step)))
            if stepped < lease.cores - _EPSILON and now - lease.changed_at >= s.cooldown_seconds:
                if not complete:
                    return [_refuse(tenant, LOST_EVENTS, ev)] + self._renew(lease, now, ev)
                return [Decision(tenant, STEP_DOWN, stepped, "verdict_holds", NOISY, ev)]
            return self._renew(lease, now, ev, "verdict_holds")
        if lease is None:
            if quota is not None:
                return [Decision(tenant, CAP, _round(quota), "static_quota", QUOTA, ev)]
            return []
        if lease.trigger == QUOTA:
            if quota is None:
                return [Decision(tenant, RELEASE, None, "quota_removed", None, ev)]
            if abs(quota - lease.cores) > _EPSILON:
                return [Decision(tenant, CAP, _round(quota), "quota_changed", QUOTA, ev)]
            return self._renew(lease, now, ev, "static_quota")
        # A noisy lease without a verdict: calm, or expired.
        last = self._seen.get(tenant, lease.renewed_at)
        calm = now - last
        ev["calm_seconds"] = round(calm, 3)
        if now >= lease.expires_at:
            return [Decision(tenant, RELEASE, quota, "lease_expired",
                             QUOTA if quota is not None else None, ev)]
        if calm >= s.calm_seconds and now - lease.changed_at >= s.cooldown_seconds:
            return [Decision(tenant, RELEASE, quota, "calm", QUOTA if quota is not None else None,
                             ev)]
        return []

    def _renew(self, lease: Lease, now: float, ev: Mapping[str, Any],
               reason: str = "verdict_holds") -> list[Decision]:
        if lease.expires_at - now > self.settings.lease_ttl_seconds / 2:
            return []
        return [Decision(lease.tenant, RENEW, lease.cores, reason, lease.trigger, ev)]


def _refuse(tenant: str, reason: str, evidence: Mapping[str, Any]) -> Decision:
    return Decision(tenant, "refuse", None, reason, None, evidence)


def _round(cores: float) -> float:
    return round(cores, _DIGITS)
