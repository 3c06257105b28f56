"""The lease state file, and the restore that works without the daemon (`release-caps`).

Takes: leases in force.  Gives: a JSON file (``{"version": 1, "boot_id": ..., "leases": [...]}``,
each entry a ``Lease.as_dict()``: tenant, path, inode, original and written limits,
lease_expires_unix),
replaced atomically (temporary file, fsync, rename) so that a crash leaves the old file or the
new one, never half of one.  The entry is saved *before* a cap is written: a daemon killed
between the two leaves an entry whose original is the value in force, which a restore puts back
unchanged.

The file records the kernel's boot id.  Caps do not survive a reboot, and cgroups created after
one may get the inode numbers of those before it: entries of an earlier boot are never adopted
nor restored, only dropped (``from_earlier_boot``).

``release_all(state_path, root)`` restores every entry whose cgroup still exists with the same
inode and empties the file.  It is what `tenantwatch release-caps` runs, e.g. from systemd's
ExecStopPost= after a SIGKILL; running it twice is harmless (the second run finds nothing).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable

from tenantwatch.enforcement.cgroupfs import CgroupWriter
from tenantwatch.enforcement.errors import (
    CgroupMissing,
    EnforcementError,
    NoCpuController,
    OutsideRoot,
    StateFileError,
)
from tenantwatch.enforcement.records import Lease

log = logging.getLogger(__name__)

STATE_VERSION = 1
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"


def boot_id(path: str = BOOT_ID_FILE) -> str | None:
    """This boot's id (a UUID), None when the kernel does not say."""
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


class StateStore:
    """The JSON state file at ``path`` (enforcement.state_file; its default is
    config.Enforcement's)."""

    def __init__(self, path: str,
                 current_boot: Callable[[], str | None] = boot_id) -> None:
        self.path = path
        self._current_boot = current_boot
        self.loaded_boot_id: str | None = None  # the boot id of the file last loaded

    def from_earlier_boot(self) -> bool:
        """The file last loaded was written during another boot (False when either is unknown:
        files written before the boot id was recorded)."""
        now = self._current_boot()
        return bool(self.loaded_boot_id and now and self.loaded_boot_id != now)

    def load(self) -> dict[str, Lease]:
        """Leases by tenant; {} when there is no file.  Raises StateFileError when it cannot be
        read or parsed (the caller decides: the daemon moves it aside, release-caps fails)."""
        try:
            with open(self.path, encoding="utf-8") as f:
                doc = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise StateFileError(f"{self.path}: {e}") from e
        if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION \
                or not isinstance(doc.get("leases"), list):
            raise StateFileError(f"{self.path}: not a version {STATE_VERSION} state file")
        boot = doc.get("boot_id")
        self.loaded_boot_id = boot if isinstance(boot, str) else None
        out: dict[str, Lease] = {}
        for i, entry in enumerate(doc["leases"]):
            try:
                lease = Lease.from_dict(entry)
            except (KeyError, TypeError, ValueError) as e:
                raise StateFileError(f"{self.path}: leases[{i}]: {e!r}") from e
            out[lease.tenant] = lease
        return out

    def save(self, leases: Mapping[str, Lease]) -> None:
        doc = {"version": STATE_VERSION, "boot_id": self._current_boot(),
               "leases": [leases[t].as_dict() for t in sorted(leases)]}
        directory = os.path.dirname(self.path) or "."
        tmp = f"{self.path}.tmp.{os.getpid()}"
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=1, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            dfd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise StateFileError(f"{self.path}: cannot write: {e.strerror or e}") from e

    def set_aside(self) -> str | None:
        """Rename an unreadable file to PATH.bad.<pid> so that it is kept for a human; gives the
        new name, or None when nothing was moved."""
        bad = f"{self.path}.bad.{os.getpid()}"
        try:
            os.replace(self.path, bad)
        except OSError:
            return None
        return bad


@dataclass(frozen=True)
class ReleaseReport:
    """What ``release_all`` did, by tenant.  ``failed`` entries stay in the state file."""

    restored: tuple[str, ...] = ()
    gone: tuple[str, ...] = ()  # the cgroup (or its cpu controller) no longer exists
    replaced: tuple[str, ...] = ()  # another cgroup (other inode) now has that path: not ours
    failed: tuple[tuple[str, str], ...] = ()  # (tenant, why)
    error: str | None = None  # the state file itself could not be read or written

    @property
    def exit_code(self) -> int:
        """0: nothing of ours is left in force (or there was nothing); 1: something is (an entry
        could not be restored, or the state file is unreadable): see the messages."""
        return 1 if self.failed or self.error else 0


def restore_lease(lease: Lease, root: str,
                  writer_factory: Callable[[str, str], CgroupWriter] = CgroupWriter.for_path,
                  ) -> str:
    """Put a lease's original limit back.  Gives "restored", "gone" or "replaced"; raises
    EnforcementError when it cannot (outside the root, a write refused)."""
    try:
        writer = writer_factory(lease.path, root)
    except (CgroupMissing, NoCpuController):
        return "gone"
    if writer.inode() != lease.inode or writer.version != lease.version:
        return "replaced"
    writer.restore(lease.original)
    return "restored"


def why_not_adopt(lease: Lease, path: str, root: str, now: float,
                  writer_factory: Callable[[str, str], CgroupWriter] = CgroupWriter.for_path,
                  ) -> str | None:
    """None when a restarted daemon may adopt ``lease`` as it stands: the tenant still maps to
    ``path``, the cgroup is the same (inode, version) and holds exactly what was written, and
    the lease has not expired.  Otherwise the reason, for the audit line."""
    if now >= lease.expires_at:
        return "lease_expired"
    if lease.path != path:
        return "mapping_changed"
    if lease.written is None:
        return "never_written"
    try:
        writer = writer_factory(lease.path, root)
        if writer.inode() != lease.inode or writer.version != lease.version:
            return "cgroup_recreated"
        if not writer.read_limit().same_bandwidth(lease.written):
            return "limit_changed"
    except OutsideRoot:
        return "outside_root"
    except EnforcementError:
        return "cgroup_unreadable"
    return None


def release_all(state_path: str, root: str,
                writer_factory: Callable[[str, str], CgroupWriter] = CgroupWriter.for_path,
                ) -> ReleaseReport:
    """Restore every lease in the state file at ``state_path`` whose cgroup is still the one we
    capped, then rewrite the file with only the entries that failed (none: an empty list)."""
    store = StateStore(state_path)
    try:
        leases = store.load()
    except StateFileError as e:
        return ReleaseReport(error=str(e))
    if store.from_earlier_boot():
        # Nothing of ours survived the reboot; the cgroups there now are not the ones we capped.
        log.info("release-caps: %s is from an earlier boot: %d entries dropped, nothing restored",
                 state_path, len(leases))
        try:
            store.save({})
        except StateFileError as e:
            return ReleaseReport(error=str(e))
        return ReleaseReport(replaced=tuple(sorted(leases)))
    done: dict[str, list[str]] = {"restored": [], "gone": [], "replaced": []}
    failed: list[tuple[str, str]] = []
    left: dict[str, Lease] = {}
    for tenant, lease in sorted(leases.items()):
        try:
            done[restore_lease(lease, root, writer_factory)].append(tenant)
        except EnforcementError as e:
            failed.append((tenant, str(e)))
            left[tenant] = lease
    error = None
    if leases or os.path.exists(state_path):
        try:
            store.save(left)
        except StateFileError as e:
            error = str(e)
    for tenant in done["restored"]:
        log.info("release-caps: %s restored to %s", tenant, leases[tenant].original.as_dict())
    for tenant, why in failed:
        log.error("release-caps: %s NOT restored: %s", tenant, why)
    return ReleaseReport(tuple(done["restored"]), tuple(done["gone"]), tuple(done["replaced"]),
                         tuple(failed), error)
