"""Fixture cgroup trees (v2 and v1 with split cpu/cpuacct mounts), settings, clock and verdicts.

A fixture tree is plain files in tmp_path: the writers cannot tell, which is the point; what
the kernel would do on a write (reject, clamp) is not modelled here (tests/kernel does that).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tenantwatch.config import Enforcement
from tenantwatch.detection.records import DetectionResult, Verdict

TEMPLATE_V2 = "cg/tenants.slice/tenant-{tenant}.slice"
TEMPLATE_V1 = "sys/fs/cgroup/cpu/tenants/{tenant}"


class Clock:
    """Wall-clock stand-in: starts at ``t``, moves only when told."""

    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def v2_cgroup(path: Path, quota: str = "max", period: int = 100_000, weight: int = 100,
              procs: tuple[int, ...] = (), usage_usec: int = 0) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "cpu.max").write_text(f"{quota} {period}\n")
    (path / "cpu.weight").write_text(f"{weight}\n")
    (path / "cgroup.procs").write_text("".join(f"{p}\n" for p in procs))
    (path / "cpu.stat").write_text(f"usage_usec {usage_usec}\nuser_usec 0\nsystem_usec 0\n")
    return path


def v1_cgroup(cpu: Path, quota: int = -1, period: int = 100_000, shares: int = 1024,
              procs: tuple[int, ...] = (), usage_ns: int | None = 0) -> Path:
    """``cpu`` under a …/cgroup/cpu/… mount; usage goes to the cpuacct sibling."""
    cpu.mkdir(parents=True, exist_ok=True)
    (cpu / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (cpu / "cpu.cfs_period_us").write_text(f"{period}\n")
    (cpu / "cpu.shares").write_text(f"{shares}\n")
    (cpu / "cgroup.procs").write_text("".join(f"{p}\n" for p in procs))
    if usage_ns is not None:
        acct = Path(str(cpu).replace("/cgroup/cpu/", "/cgroup/cpuacct/"))
        acct.mkdir(parents=True, exist_ok=True)
        (acct / "cpuacct.usage").write_text(f"{usage_ns}\n")
    return cpu


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its contents, and every directory (as None-less b"<dir>")."""
    out: dict[str, bytes] = {}
    for top, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(top, d), root) + "/"] = b"<dir>"
        for f in files:
            p = os.path.join(top, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


def settings(tmp_path: Path, template: str = TEMPLATE_V2, **kw: Any) -> Enforcement:
    kw.setdefault("mode", "enforce")
    kw.setdefault("state_file", str(tmp_path / "state" / "caps.json"))
    kw.setdefault("audit_log", str(tmp_path / "state" / "audit.jsonl"))
    kw.setdefault("kill_switch", str(tmp_path / "state" / "enforcement-off"))
    return Enforcement(cgroup=f"{tmp_path}/{template}", **kw)


def verdict(tenant: str, trusted: bool = True, **evidence: Any) -> Verdict:
    ev = {"share": 0.6, "window_complete": True, "trusted": trusted, **evidence}
    return Verdict(tenant, since=1.0, evidence=ev)


def result(*verdicts: Verdict, complete: bool = True,
           shares: dict[str, float] | None = None) -> DetectionResult:
    if shares is None:
        shares = {v.tenant: 0.6 for v in verdicts}
    return DetectionResult(at=1.0, window_seconds=5.0, window_complete=complete, shares=shares,
                           noisy=tuple(verdicts), hotspots=(), changes=(), contention={})
