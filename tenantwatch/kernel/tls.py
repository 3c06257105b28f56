"""TLS capture: which libssl each target process maps, and uprobes on it, per target process.

Takes: target pids and their /proc/PID/maps.  Gives: `TlsProbes.attach(pids)`, which attaches
the uprobes of bpf/tls.c to the libssl file each new target maps (read through /proc/PID/root,
so that a container's library is the container's own file), once per (process, file): never
twice; `detach(pids)` for processes that are gone; and `static_tls(pid)` for `doctor`: a target
that serves TLS without mapping libssl (statically linked OpenSSL or BoringSSL, e.g. Envoy) is
not supported and must be reported, not silently missed.

Why per process and not once per file: a uprobe attached for a process is armed only in that
process's memory, so every other user of the same libssl on the node (a load generator, curl,
a sidecar) pays nothing.  Attached once per file, each of their SSL calls would trap into the
kernel (~2 x 1-3 us) only for the probe to find they are not a target: on the bench that halved
the client's TLS throughput.  A restarted gateway is attached again at the next rescan (its new
processes), and so is a library upgraded in place.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

from tenantwatch.kernel.elf import ElfError, ElfImage
from tenantwatch.kernel.ssl_points import ProbePoint, probe_points

log = logging.getLogger(__name__)

SET_FD = ("SSL_set_fd", "tw_ssl_set_fd_enter")  # (symbol, entry program): entry only
# Every read/write probe point (kernel/ssl_points.py) also gets this at its return.
RETURN_PROGRAM = "tw_ssl_return"
# The longest /proc/PID/maps read per process (a gateway maps a few hundred files).
MAX_MAPS_BYTES = 4 << 20


@dataclass(frozen=True)
class SslLibrary:
    """One libssl file as the probes see it."""

    path: str  # as opened by the loader: /proc/PID/root/<path in the process>
    device: int
    inode: int


def mapped_paths(pid: int, proc_root: str = "/proc") -> set[str]:
    """The file paths a process maps (as the process sees them); empty when it is gone."""
    try:
        with open(f"{proc_root}/{pid}/maps", "rb") as f:
            raw = f.read(MAX_MAPS_BYTES)
    except OSError:
        return set()
    out = set()
    for line in raw.decode("utf-8", "replace").splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith("/"):
            out.add(parts[5].removesuffix(" (deleted)"))
    return out


def ssl_libraries(pid: int, proc_root: str = "/proc") -> set[SslLibrary]:
    """The libssl files a process maps, opened through its root (containers)."""
    out = set()
    for path in mapped_paths(pid, proc_root):
        if "/libssl.so" not in path:
            continue
        seen = f"{proc_root}/{pid}/root{path}"
        try:
            st = os.stat(seen)
        except OSError:
            continue
        out.add(SslLibrary(seen, st.st_dev, st.st_ino))
    return out


def static_tls(pid: int, proc_root: str = "/proc") -> str | None:
    """Why a process's TLS cannot be seen (statically linked), or None (no TLS, or libssl)."""
    paths = mapped_paths(pid, proc_root)
    if any("/libssl.so" in p for p in paths):
        return None
    try:
        exe = os.readlink(f"{proc_root}/{pid}/exe")
        with open(f"{proc_root}/{pid}/exe", "rb") as f:
            data = f.read(256 << 20)
    except OSError:
        return None
    for marker, what in ((b"BoringSSL", "BoringSSL"), (b"SSL_CTX_new", "OpenSSL")):
        if marker in data:
            return f"{exe} links {what} statically: its TLS traffic is not visible"
    return None


class TlsProbes:
    """Uprobes on the targets' libssl, per (process, file); attach() is cheap when nothing is new."""

    def __init__(self, bpf, proc_root: str = "/proc") -> None:
        self._bpf = bpf
        self._proc_root = proc_root
        # pid -> {libssl path probed for it: its probe points}
        self._attached: dict[int, dict[str, tuple[ProbePoint, ...]]] = {}
        self._events: dict[int, list[bytes]] = {}  # pid -> bcc's uprobe event names for it
        self._failed: set[tuple[int, int, int]] = set()  # (pid, device, inode) that failed
        self._points: dict[tuple[int, int], tuple[ProbePoint, ...]] = {}  # by (device, inode)

    @property
    def libraries(self) -> tuple[str, ...]:
        """The library files probed, as the processes see them."""
        return tuple(sorted({p.split("/root", 1)[-1] for paths in self._attached.values()
                             for p in paths}))

    @property
    def processes(self) -> int:
        return len(self._attached)

    @property
    def internal_points(self) -> bool | None:
        """True when every probed library is probed at its internal functions (no single-step
        per call), False when one is probed at the public functions, None before any."""
        kinds = {p.internal for points in self._points.values() for p in points}
        return None if not kinds else kinds == {True}

    def points_of(self, lib: SslLibrary) -> tuple[ProbePoint, ...]:
        """The read/write probe points of a library file, worked out once per file."""
        key = (lib.device, lib.inode)
        if key not in self._points:
            try:
                points = probe_points(ElfImage.open(lib.path))
            except (OSError, ElfError) as e:
                raise ElfError(f"cannot read {lib.path}: {e}") from e
            if not points:
                raise ElfError(f"{lib.path} exports neither SSL_read nor SSL_write")
            self._points[key] = points
            log.info("TLS: %s probed at %s", lib.path, ", ".join(
                f"{p.stands_for}@{p.vaddr:#x}{' (internal)' if p.internal else ''}"
                for p in points))
        return self._points[key]

    def attach(self, pids: Iterable[int]) -> tuple[str, ...]:
        """Probe the libssl of each pid not probed yet; gives the paths newly probed."""
        new = []
        for pid in pids:
            if pid in self._attached:
                continue
            done: dict[str, tuple[ProbePoint, ...]] = {}
            for lib in ssl_libraries(pid, self._proc_root):
                ident = (pid, lib.device, lib.inode)
                if ident in self._failed:
                    continue
                try:
                    points = self.points_of(lib)
                    self._attach(lib.path, pid, points)
                except Exception as e:  # noqa: BLE001 - bcc raises bare Exception
                    log.warning("TLS: cannot attach uprobes to %s for pid %d: %s", lib.path, pid,
                                e)
                    self._failed.add(ident)
                    continue
                done[lib.path] = points
                new.append(lib.path)
                log.debug("TLS: uprobes on %s for pid %d", lib.path, pid)
            self._attached[pid] = done  # also when empty: its maps are read once
        return tuple(new)

    def pids(self) -> set[int]:
        """The processes probed (or tried)."""
        return set(self._attached) | set(self._events)

    def detach(self, pids: Iterable[int]) -> None:
        """Remove the probes of processes that are gone (or no longer targets), and close
        their perf event fds."""
        gone = set(pids)
        for pid in gone:
            self._attached.pop(pid, None)
            self._detach(self._events.pop(pid, []))
        self._failed = {f for f in self._failed if f[0] not in gone}

    def _attach(self, path: str, pid: int, points: tuple[ProbePoint, ...]) -> None:
        b, name = self._bpf, path.encode()
        before = set(b.uprobe_fds)
        try:  # bcc wants bytes; an address is the ELF virtual address (bcc maps it to the file)
            b.attach_uprobe(name=name, sym=SET_FD[0].encode(), fn_name=SET_FD[1].encode(),
                            pid=pid)
            for p in points:
                b.attach_uprobe(name=name, addr=p.vaddr, fn_name=p.program.encode(), pid=pid)
                b.attach_uretprobe(name=name, addr=p.vaddr, fn_name=RETURN_PROGRAM.encode(),
                                   pid=pid)
        except Exception:
            self._detach([e for e in b.uprobe_fds if e not in before])  # all or none
            raise
        finally:
            # bcc's names of the events made here: detach by name, never by resolving the
            # path and symbol again (bcc reads /proc/PID/maps for that, which fails once the
            # process is gone, and the event's fd then stayed open: 5 fds per nginx worker
            # at every reload, bench/soak.py)
            made = [e for e in b.uprobe_fds if e not in before]
            self._events.setdefault(pid, []).extend(made)

    def _detach(self, events: Iterable[bytes]) -> None:
        for ev in events:
            try:
                self._bpf.detach_uprobe_event(ev)
            except Exception:  # noqa: BLE001, S110 - detached already (a failed attach)
                pass
