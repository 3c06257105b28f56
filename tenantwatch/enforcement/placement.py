"""Placement (hosts without systemd slices): per-tenant cgroups under a delegated root, with the
selected worker processes moved in, each process once.

Takes: ``enforcement.placement`` (delegated_root, selectors by process name and/or command-line
regex, the tenant fixed or from the regex's ``tenant`` group), the cgroup template, /proc.  Gives:
``place()`` creating ``template(tenant)`` below the delegated root when needed and writing each
newly seen matching process to its ``cgroup.procs`` (a process, identified by pid and start time,
is placed once: never again, even if something moves it back, and never per request);
``tenant_of_pid(pid)``, which the enforcer uses to refuse a cgroup holding another tenant's
processes.  Gateway processes, tenantwatch itself and pid 1 are never placed.  With
``dry_run`` nothing is created or moved; the moves are only logged (and returned).

On cgroup v2 the cpu controller is enabled on the way down (``+cpu`` in cgroup.subtree_control);
on a v1 host with cpu and cpuacct mounted apart, the same cgroup is made under the sibling mount
too (when its delegated root exists) so that usage can be read.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Callable

from tenantwatch.cgroups import v1_siblings
from tenantwatch.config import Placement
from tenantwatch.enforcement.cgroupfs import within_root
from tenantwatch.identity.records import RESERVED_LABELS

log = logging.getLogger(__name__)

_RESERVED = frozenset(RESERVED_LABELS)
# The longest command line read per process: selectors look at how a worker was started, which
# is in the first few hundred bytes; the bound keeps a scan of /proc cheap.
MAX_CMDLINE = 4096


class Placer:
    def __init__(self, placement: Placement, template: str, *, proc_root: str = "/proc",
                 gateway_pids: Callable[[], Iterable[int]] = set,
                 valid_tenant: Callable[[str], bool] = lambda t: True,
                 dry_run: bool = False) -> None:
        self.placement = placement
        self.dry_run = dry_run  # decide and log, create and move nothing
        self.template = template
        self.proc_root = proc_root
        self._gateway_pids = gateway_pids
        self._valid_tenant = valid_tenant
        self._placed: dict[tuple[int, str], str] = {}  # (pid, start time) -> tenant
        self._bad: set[tuple[int, str]] = set()  # processes that could not be placed, once
        self.placed_total = 0

    def path_for(self, tenant: str) -> str:
        return self.template.replace("{tenant}", tenant)

    def tenant_of_pid(self, pid: int) -> str | None:
        """The tenant the selectors give this process, or None (not selected, or gone)."""
        comm, cmdline = self._read(pid)
        if comm is None:
            return None
        for sel in self.placement.selectors:
            if sel.process is not None and sel.process != comm:
                continue
            tenant = sel.tenant
            regex = sel.regex
            if regex is not None:
                m = regex.search(cmdline or "")
                if m is None:
                    continue
                if tenant is None:
                    tenant = m.group("tenant")
            if tenant and tenant not in _RESERVED and self._valid_tenant(tenant):
                return tenant
            return None  # the first matching selector decides
        return None

    def scan(self) -> dict[int, str]:
        """Selected processes now: pid -> tenant."""
        out = {}
        skip = set(self._gateway_pids()) | {os.getpid(), 1}
        try:
            names = os.listdir(self.proc_root)
        except OSError as e:
            log.error("placement: cannot list %s: %s", self.proc_root, e.strerror or e)
            return {}
        for name in names:
            if not name.isdigit() or int(name) in skip:
                continue
            tenant = self.tenant_of_pid(int(name))
            if tenant is not None:
                out[int(name)] = tenant
        return out

    def place(self) -> tuple[tuple[int, str, str], ...]:
        """Move newly selected processes into their tenant's cgroup; gives (pid, tenant, path)
        for each one moved by this call."""
        moved = []
        seen = set()
        for pid, tenant in sorted(self.scan().items()):
            key = (pid, self._start_time(pid))
            seen.add(key)
            if key in self._placed or key in self._bad:
                continue
            path = self.path_for(tenant)
            if not within_root(path, self.placement.delegated_root):
                log.error("placement: %s for tenant %s is outside %s; not placing pid %d",
                          path, tenant, self.placement.delegated_root, pid)
                self._bad.add(key)
                continue
            try:
                if not self.dry_run:
                    self._ensure(path)
                    self._move(pid, path)
            except OSError as e:
                log.warning("placement: cannot move pid %d (tenant %s) to %s: %s", pid, tenant,
                            path, e.strerror or e)
                self._bad.add(key)
                continue
            self._placed[key] = tenant
            self.placed_total += 1
            moved.append((pid, tenant, path))
            log.info("placement: %spid %d -> %s (tenant %s)",
                     "dry-run, would move " if self.dry_run else "", pid, path, tenant)
        for gone in set(self._placed) - seen:
            del self._placed[gone]
        self._bad &= seen
        return tuple(moved)

    def _ensure(self, path: str) -> None:
        root = self.placement.delegated_root
        os.makedirs(path, exist_ok=True)
        # cgroup v2: the cpu controller must be enabled in every parent's subtree_control.
        rel = os.path.relpath(path, root).split(os.sep)
        parent = root
        for part in rel:
            control = os.path.join(parent, "cgroup.subtree_control")
            if os.path.exists(control):
                with open(control) as f:
                    enabled = f.read().split()
                if "cpu" not in enabled:
                    with open(control, "w") as f:
                        f.write("+cpu\n")
            parent = os.path.join(parent, part)
        for sibling_root, sibling in zip(v1_siblings(root), v1_siblings(path)):
            if os.path.isdir(sibling_root):
                os.makedirs(sibling, exist_ok=True)

    def _move(self, pid: int, path: str) -> None:
        targets = [path] + [s for s in v1_siblings(path) if os.path.isdir(s)]
        for target in targets:
            fd = os.open(os.path.join(target, "cgroup.procs"),
                         os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{pid}\n".encode())
            finally:
                os.close(fd)

    def _read(self, pid: int) -> tuple[str | None, str | None]:
        base = os.path.join(self.proc_root, str(pid))
        try:
            with open(os.path.join(base, "comm"), "rb") as f:
                comm = f.read().decode("utf-8", "replace").rstrip("\n")
            with open(os.path.join(base, "cmdline"), "rb") as f:
                raw = f.read(MAX_CMDLINE)
        except OSError:
            return None, None
        if not raw:
            return None, None  # kernel threads: nothing to place
        return comm, raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")

    def _start_time(self, pid: int) -> str:
        """Field 22 of /proc/PID/stat: tells a reused pid from the process placed before."""
        try:
            with open(os.path.join(self.proc_root, str(pid), "stat")) as f:
                stat = f.read()
        except OSError:
            return ""
        fields = stat.rpartition(")")[2].split()
        return fields[19] if len(fields) > 19 else ""
