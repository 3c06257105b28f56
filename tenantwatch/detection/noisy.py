"""The noisy-neighbour rule: a heavy tenant while there is contention or there are victims.

Takes the ``WindowStats`` of the current window and the latency ``Baseline``; gives the tenants
currently flagged and the flags raised or cleared by this evaluation, each a ``Verdict`` with its
evidence.  Reserved labels (``ignore``) are never flagged and never victims.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from tenantwatch.config import DetectionSettings
from tenantwatch.detection.records import Verdict
from tenantwatch.detection.window import Baseline, Hysteresis, Latch, WindowStats, p99

# A verdict lists at most this many victims (the worst first), so that one log line stays one
# readable line on a node with hundreds of tenants; victims_total has the full count.
MAX_VICTIMS_IN_EVIDENCE = 10
_DIGITS = 6  # rounding of shares and seconds in evidence: microseconds, 1e-6 of a share


@dataclass(frozen=True)
class Victim:
    """A tenant whose p99 over the window is well above its own calm baseline."""

    tenant: str
    p99_before: float  # baseline p99, seconds
    p99_now: float  # p99 over the window, seconds
    requests: int  # requests in the window

    def as_dict(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "p99_before": self.p99_before, "p99_now": self.p99_now,
                "requests": self.requests}


@dataclass(frozen=True)
class Contention:
    """Node-wide signals of one window, and the victims."""

    psi: bool  # latest PSI "some avg10" at or above the threshold
    runq: bool  # run-queue p99 at or above the threshold in at least half of the window's ticks
    runq_ticks_over: int
    victims: Mapping[str, Victim]

    def reasons(self, tenant: str) -> list[str]:
        """Why there is contention as far as ``tenant`` is concerned (it is not its own victim)."""
        out = [name for name, on in (("psi", self.psi), ("runq", self.runq)) if on]
        if any(v != tenant for v in self.victims):
            out.append("victims")
        return out

    def victims_of(self, tenant: str) -> list[Victim]:
        """Victims other than ``tenant``, the worst (highest p99 ratio) first."""
        others = [v for v in self.victims.values() if v.tenant != tenant]
        return sorted(others, key=lambda v: (-v.p99_now / v.p99_before, v.tenant))


def assess_contention(stats: WindowStats, baseline: Baseline, settings: DetectionSettings,
                      ignore: frozenset[str], scale: float = 1.0) -> Contention:
    """PSI, run-queue delay and victims of the window, judged against ``settings``.

    ``scale`` (the release factor, for flags already raised) lowers the PSI, run-queue and
    victim-factor thresholds; the victim factor never goes below 1.
    """
    psi = (stats.psi_some_avg10 is not None
           and stats.psi_some_avg10 >= scale * settings.psi_threshold_percent)
    over = sum(1 for r in stats.runq_p99_seconds
               if r is not None and r >= scale * settings.runq_p99_threshold_seconds)
    factor = max(1.0, scale * settings.victim_p99_factor)
    victims: dict[str, Victim] = {}
    for tenant in sorted(stats.tenants):
        w = stats.tenants[tenant]
        if tenant in ignore or w.requests < settings.victim_min_requests:
            continue
        # the window's own p99 first: most tenants are under victim_min_p99_seconds, and then
        # the baseline is not read (every test below only skips: their order does not matter)
        now = p99(stats.bounds, w.buckets)
        if now is None or now < settings.victim_min_p99_seconds:
            continue
        if baseline.requests(tenant) < settings.victim_min_requests:
            continue  # too few calm requests for a baseline p99 to mean anything
        before = baseline.p99(stats.bounds, tenant)
        if before is None or before <= 0:
            continue
        if now >= factor * before:
            victims[tenant] = Victim(tenant, before, now, w.requests)
    return Contention(psi, 2 * over >= stats.ticks and over > 0, over, victims)


@dataclass(frozen=True)
class NoisyOutcome:
    """What one evaluation of the rule found."""

    contention: Contention  # at the raise thresholds
    flagged: tuple[Verdict, ...]  # active flags, by tenant
    changes: tuple[Verdict, ...]  # raised or cleared now
    pending: Mapping[str, int]  # tenant -> consecutive heavy-and-contended evaluations so far
    blocked: tuple[str, ...]  # onsets complete but not raised: the window lost events


class NoisyNeighbours:
    """Per-tenant hysteresis over "heavy and contended".

    A tenant already flagged is judged at its thresholds times ``release_factor``, so that a
    share or a PSI hovering at the threshold does not raise and clear the flag in turn.
    """

    def __init__(self, settings: DetectionSettings, ignore: frozenset[str]) -> None:
        self.settings = settings
        self.ignore = ignore
        self._latches: Hysteresis[str] = Hysteresis(settings.onset_windows, settings.clear_windows)

    @property
    def calm(self) -> bool:
        """No tenant is flagged and none is on its way to be."""
        return not any(True for _ in self._latches.active()) and \
            not any(True for _ in self._latches.pending())

    def evaluate(self, stats: WindowStats, baseline: Baseline) -> NoisyOutcome:
        s = self.settings
        shares = _Shares(stats, s, self.ignore)
        strict = assess_contention(stats, baseline, s, self.ignore)
        held = {t for t, _ in self._latches.active()}
        lenient = assess_contention(stats, baseline, s, self.ignore, s.release_factor) \
            if held else strict

        def suspect(tenant: str) -> bool:
            if tenant in held:
                return shares.heavy(tenant, s.release_factor) and bool(lenient.reasons(tenant))
            return shares.heavy(tenant) and bool(strict.reasons(tenant))

        suspects = [t for t in sorted(shares.may_be_heavy(held))
                    if t not in self.ignore and suspect(t)]
        moved = self._latches.update(suspects, stats.at, may_raise=stats.complete_for)

        def verdict(tenant: str, latch: Latch, active: bool) -> Verdict:
            scale = s.release_factor if tenant in held else 1.0
            evidence = self._evidence(tenant, stats, shares, lenient if tenant in held else strict,
                                      latch, scale)
            if not active:
                evidence["duration_seconds"] = round(stats.at - latch.since, _DIGITS)
            return Verdict(tenant, active=active, since=latch.since if active else stats.at,
                           evidence=evidence)

        active = sorted(self._latches.active(), key=_first)
        flagged = [verdict(t, latch, True) for t, latch in active]
        changes = [v for v in flagged if v.tenant in moved.raised]
        changes += [verdict(t, latch, False) for t, latch in moved.cleared]
        pending = {t: latch.true_run for t, latch in sorted(self._latches.pending(), key=_first)}
        return NoisyOutcome(strict, tuple(flagged),
                            tuple(sorted(changes, key=lambda v: v.tenant)), pending, moved.blocked)

    def _evidence(self, tenant: str, stats: WindowStats, shares: _Shares, contention: Contention,
                  latch: Latch, scale: float) -> dict[str, Any]:
        """``contention`` and ``scale`` are the ones the tenant was judged by in this update."""
        victims = contention.victims_of(tenant)
        latest_runq = stats.runq_p99_seconds[-1] if stats.runq_p99_seconds else None
        w = stats.tenants.get(tenant)
        trusted_share = shares.share(tenant) * (w.trusted_cpu_seconds / w.cpu_seconds) \
            if w and w.cpu_seconds > 0 else 0.0
        return {
            "share": round(shares.share(tenant), _DIGITS),
            "request_share": round(shares.request_share(tenant), _DIGITS),
            "fair_share": round(shares.fair_share(tenant), _DIGITS),
            "quota": self.settings.quotas.get(tenant),
            "threshold": round(shares.threshold(tenant), _DIGITS),
            "hold_threshold": round(self.settings.release_factor * shares.threshold(tenant),
                                    _DIGITS),
            "heavy": shares.heavy(tenant, scale),
            "contention": contention.reasons(tenant),
            "window_seconds": round(stats.seconds, _DIGITS),
            # complete for this tenant (what raising and capping wait for); the node's own
            # completeness and the losses charged to the tenant say why not
            "window_complete": stats.complete_for(tenant),
            "node_window_complete": stats.complete,
            "incomplete_ticks": stats.incomplete_ticks,
            "tenant_losses": w.losses if w else 0,
            "psi_some_avg10": stats.psi_some_avg10,
            "runq_p99_seconds": latest_runq,
            "runq_ticks_over": contention.runq_ticks_over,
            "victims": [v.as_dict() for v in victims[:MAX_VICTIMS_IN_EVIDENCE]],
            "victims_total": len(victims),
            "consecutive": latch.true_run,
            "calm": latch.false_run,
            # Enforcement may act only when the tenant is heavy on trusted CPU alone: forged
            # load under a claimed header naming the tenant must not make it cappable.
            "trusted_share": round(trusted_share, _DIGITS),
            "trusted": bool(w and w.trusted) and trusted_share >= shares.threshold(tenant),
            "raised_at": latch.since,
        }


class _Shares:
    """CPU shares of one window, fair shares and heavy thresholds."""

    def __init__(self, stats: WindowStats, settings: DetectionSettings,
                 ignore: frozenset[str]) -> None:
        self._stats = stats
        self._settings = settings
        active = [t for t, w in stats.tenants.items()
                  if t not in ignore and (w.requests > 0 or w.cpu_seconds > 0)]
        self.active_tenants = len(active)

    def share(self, tenant: str) -> float:
        total = self._stats.total_cpu_seconds
        w = self._stats.tenants.get(tenant)
        return w.cpu_seconds / total if w and total > 0 else 0.0

    def request_share(self, tenant: str) -> float:
        total = self._stats.total_requests
        w = self._stats.tenants.get(tenant)
        return w.requests / total if w and total > 0 else 0.0

    def fair_share(self, tenant: str) -> float:
        quota = self._settings.quotas.get(tenant)
        if quota is not None:
            return quota
        return 1.0 / self.active_tenants if self.active_tenants else 1.0

    def threshold(self, tenant: str) -> float:
        """A quota is the operator's own statement of what is fair: no min_share floor on it."""
        s = self._settings
        if tenant in s.quotas:
            return s.share_factor * s.quotas[tenant]
        return self._threshold_without_quota()

    def _threshold_without_quota(self) -> float:
        s = self._settings
        return max(s.min_share, s.share_factor * (1.0 / self.active_tenants
                                                  if self.active_tenants else 1.0))

    def may_be_heavy(self, held: Collection[str]) -> list[str]:
        """The tenants heavy() may say yes to: those with a quota or in ``held`` (judged at
        their own threshold or times release_factor), and those whose CPU reaches half the
        threshold without a quota (half: a margin for the rounding of share's division).  A
        superset, so the caller still asks heavy(); at 10,000 tenants, a few instead of all."""
        total = self._stats.total_cpu_seconds
        if total <= 0:
            return []  # every share is 0: nobody is heavy
        cut = 0.5 * self._threshold_without_quota() * total
        quotas = self._settings.quotas
        return [t for t, w in self._stats.tenants.items()
                if w.cpu_seconds >= cut or t in held or t in quotas]

    def heavy(self, tenant: str, scale: float = 1.0) -> bool:
        share = self.share(tenant)
        return share > 0 and share >= scale * self.threshold(tenant)


def _first(item: tuple[str, Latch]) -> str:
    return item[0]
