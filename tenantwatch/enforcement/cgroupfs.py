"""Reading and writing one cgroup's CPU bandwidth limit, cgroup v2 or v1.

Takes: a cgroup directory and the root every path must stay under.  Gives: a writer chosen by the
files present (``cpu.max`` -> v2; ``cpu.cfs_quota_us`` -> v1) with ``read_limit``, ``write_cap``,
``restore``, ``procs`` (the pids of the whole subtree), ``inode`` and ``usage_seconds``.  An
OSError becomes an EnforcementError naming the file; a vanished directory a CgroupMissing.

v2: ``cpu.max`` is "QUOTA PERIOD" (QUOTA "max" = no limit), ``cpu.weight`` 1..10000.
v1: ``cpu.cfs_quota_us`` (-1 = no limit), ``cpu.cfs_period_us``, ``cpu.shares``.  Hosts mount
cpu and cpuacct separately (this VM) or together: usage is read from ``cpuacct.usage`` in the
same directory or the same relative path under the sibling mounts (as aggregation/backends.py).
"""

from __future__ import annotations

import errno
import os
from abc import ABC, abstractmethod

from tenantwatch.cgroups import v1_siblings
from tenantwatch.enforcement.errors import (
    CgroupMissing,
    EnforcementError,
    NoCpuController,
    OutsideRoot,
)
from tenantwatch.enforcement.records import CpuLimit

# The kernel refuses a CFS quota below 1 ms (sched/core.c min_cfs_quota_period / min quota).
MIN_QUOTA_US = 1000
# v1 and v2 share the default period.
DEFAULT_PERIOD_US = 100_000
# Subtree walks for procs(): a tenant's slice holds services, rarely deeper than a few levels;
# the bound keeps a pathological tree from stalling a tick.
MAX_PROCS_DIRS = 4096


def within_root(path: str, root: str) -> bool:
    """True when ``path``, symlinks and ``..`` resolved, lies strictly below ``root``."""
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    return real != real_root and os.path.commonpath([real, real_root]) == real_root


class CgroupWriter(ABC):
    """One cgroup directory.  Construct with ``CgroupWriter.for_path``."""

    version: int = 0

    def __init__(self, path: str) -> None:
        self.path = path

    @staticmethod
    def for_path(path: str, root: str) -> CgroupWriter:
        """The writer for ``path``; raises OutsideRoot, CgroupMissing or NoCpuController."""
        if not within_root(path, root):
            raise OutsideRoot(f"{path} resolves to {os.path.realpath(path)}, outside {root}")
        if not os.path.isdir(path):
            raise CgroupMissing(f"{path}: no such cgroup")
        if os.path.exists(os.path.join(path, "cpu.max")):
            return V2Writer(path)
        if os.path.exists(os.path.join(path, "cpu.cfs_quota_us")):
            return V1Writer(path)
        raise NoCpuController(f"{path}: neither cpu.max nor cpu.cfs_quota_us (is the cpu "
                              "controller enabled for this cgroup?)")

    # ------------------------------------------------------------------ common

    def inode(self) -> int:
        """The directory's inode: a cgroup created again under the same path has another one
        (on cgroup v2 it is the cgroup id)."""
        try:
            return os.stat(self.path).st_ino
        except FileNotFoundError as e:
            raise CgroupMissing(f"{self.path}: no such cgroup") from e
        except OSError as e:
            raise _error(e, self.path) from e

    def exists(self) -> bool:
        return os.path.isdir(self.path)

    def procs(self) -> set[int]:
        """Pids of every process in the cgroup and its descendants."""
        pids: set[int] = set()
        walked = 0
        for top, _dirs, files in os.walk(self.path, onerror=None):
            walked += 1
            if walked > MAX_PROCS_DIRS:
                raise EnforcementError(f"{self.path}: more than {MAX_PROCS_DIRS} cgroups below")
            if "cgroup.procs" in files:
                text = self._read(os.path.join(top, "cgroup.procs"), missing_ok=True)
                pids.update(int(x) for x in text.split() if x.isdigit())
        if walked == 0:
            raise CgroupMissing(f"{self.path}: no such cgroup")
        return pids

    def write_cap(self, cores: float) -> CpuLimit:
        """Set the quota to ``cores`` at the current period; gives the limit now in force.  A
        burst larger than the new quota is set to 0 first (the kernel refuses a quota under the
        burst); the lease's original keeps the burst, and a restore puts it back."""
        current = self.read_limit()
        quota = quota_us(cores, current.period_us)
        if current.burst_us and current.burst_us > quota:
            self._write_burst(0)
        self._write_bandwidth(quota, current.period_us)
        return self.read_limit()

    @abstractmethod
    def read_limit(self) -> CpuLimit: ...

    @abstractmethod
    def restore(self, limit: CpuLimit) -> None:
        """Put back quota, period and (when it differs and was read) the weight."""

    @abstractmethod
    def usage_seconds(self) -> float | None:
        """Cumulative CPU time of the subtree, None when unreadable."""

    @abstractmethod
    def _write_bandwidth(self, quota_us: int | None, period_us: int) -> None: ...

    burst_file = ""  # the hierarchy's burst file

    def _read_burst(self) -> int | None:
        """The burst in microseconds, None where the kernel has none (before 5.14)."""
        return self._read_int(self.burst_file)

    def _write_burst(self, burst_us: int) -> None:
        self._write(self._file(self.burst_file), f"{burst_us}\n")

    def _restore_burst(self, limit: CpuLimit) -> None:
        """After the bandwidth (a burst may not exceed the quota): the saved burst, if any."""
        if limit.burst_us is not None and self._read_burst() not in (None, limit.burst_us):
            self._write_burst(limit.burst_us)

    # ------------------------------------------------------------------ file helpers

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @staticmethod
    def _read(path: str, missing_ok: bool = False) -> str:
        try:
            with open(path) as f:
                return f.read()
        except FileNotFoundError as e:
            if missing_ok:
                return ""
            raise _error(e, path) from e
        except OSError as e:
            raise _error(e, path) from e

    @staticmethod
    def _write(path: str, text: str) -> None:
        # No O_CREAT: a cgroup file that is not there is not ours to create (and on a real
        # cgroup fs, open(..., "w") of a missing file fails anyway).
        try:
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        except OSError as e:
            raise _error(e, path) from e
        try:
            os.write(fd, text.encode())
        except OSError as e:
            raise _error(e, path) from e
        finally:
            os.close(fd)

    def _read_int(self, name: str) -> int | None:
        text = self._read(self._file(name), missing_ok=True).strip()
        if not text:
            return None
        try:
            return int(text)
        except ValueError:
            raise EnforcementError(f"{self._file(name)}: not an integer: {text!r}") from None


class V2Writer(CgroupWriter):
    version = 2
    burst_file = "cpu.max.burst"

    def read_limit(self) -> CpuLimit:
        path = self._file("cpu.max")
        parts = self._read(path).split()
        try:
            quota = None if parts[0] == "max" else int(parts[0])
            period = int(parts[1]) if len(parts) > 1 else DEFAULT_PERIOD_US
        except (IndexError, ValueError):
            raise EnforcementError(f"{path}: expected \"QUOTA PERIOD\", got "
                                   f"{' '.join(parts)!r}") from None
        return CpuLimit(quota, period, self._read_int("cpu.weight"), self._read_burst())

    def restore(self, limit: CpuLimit) -> None:
        self._write_bandwidth(limit.quota_us, limit.period_us)
        self._restore_burst(limit)
        if limit.weight is not None and self._read_int("cpu.weight") not in (None, limit.weight):
            self._write(self._file("cpu.weight"), f"{limit.weight}\n")

    def _write_bandwidth(self, quota_us: int | None, period_us: int) -> None:
        quota = "max" if quota_us is None else str(quota_us)
        self._write(self._file("cpu.max"), f"{quota} {period_us}\n")

    def usage_seconds(self) -> float | None:
        for line in self._read(self._file("cpu.stat"), missing_ok=True).splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec" and value.strip().isdigit():
                return int(value) / 1e6
        return None


class V1Writer(CgroupWriter):
    version = 1
    burst_file = "cpu.cfs_burst_us"

    def read_limit(self) -> CpuLimit:
        quota = self._read_int("cpu.cfs_quota_us")
        period = self._read_int("cpu.cfs_period_us")
        if quota is None or period is None or period <= 0:
            raise EnforcementError(f"{self.path}: unreadable cpu.cfs_quota_us/cpu.cfs_period_us")
        return CpuLimit(None if quota < 0 else quota, period, self._read_int("cpu.shares"),
                        self._read_burst())

    def restore(self, limit: CpuLimit) -> None:
        self._write_bandwidth(limit.quota_us, limit.period_us)
        self._restore_burst(limit)
        if limit.weight is not None and self._read_int("cpu.shares") not in (None, limit.weight):
            self._write(self._file("cpu.shares"), f"{limit.weight}\n")

    def _write_bandwidth(self, quota_us: int | None, period_us: int) -> None:
        # The kernel checks quota against period at each write: lift the quota first, then set
        # the period, then the new quota, so that no intermediate pair is rejected.
        current = self._read_int("cpu.cfs_period_us")
        if current != period_us:
            self._write(self._file("cpu.cfs_quota_us"), "-1\n")
            self._write(self._file("cpu.cfs_period_us"), f"{period_us}\n")
        self._write(self._file("cpu.cfs_quota_us"), f"{-1 if quota_us is None else quota_us}\n")

    def usage_seconds(self) -> float | None:
        for candidate in [self.path, *v1_siblings(self.path)]:
            text = self._read(os.path.join(candidate, "cpuacct.usage"), missing_ok=True).strip()
            if text.isdigit():
                return int(text) / 1e9
        return None


def quota_us(cores: float, period_us: int) -> int:
    """The CFS quota for ``cores`` at ``period_us``, never below the kernel's minimum."""
    return max(MIN_QUOTA_US, round(cores * period_us))


def _error(e: OSError, path: str) -> EnforcementError:
    if e.errno == errno.ENOENT and not os.path.isdir(os.path.dirname(path) or "/"):
        return CgroupMissing(f"{os.path.dirname(path)}: no such cgroup")
    return EnforcementError(f"{path}: {e.strerror or e}")
