"""Errors of the enforcement stage; an OSError from the cgroup tree becomes one of these."""

from __future__ import annotations

from tenantwatch.errors import TenantwatchError


class EnforcementError(TenantwatchError):
    """A cgroup could not be read or written; the message names the file."""


class CgroupMissing(EnforcementError):
    """The cgroup directory does not exist (never created, or removed since)."""


class NoCpuController(EnforcementError):
    """The cgroup has neither cpu.max (v2) nor cpu.cfs_quota_us (v1): no CPU quota to set."""


class OutsideRoot(EnforcementError):
    """The path, symlinks and `..` resolved, is not strictly below the configured root."""


class StateFileError(EnforcementError):
    """The lease state file cannot be read, parsed or written."""
