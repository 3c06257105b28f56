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

log = logging.getLogger(__name__)

# (symbol, entry program); every one also gets tw_ssl_return at its return.
SET_FD = ("SSL_set_fd", "tw_ssl_set_fd_enter")  # entry only
SSL_FUNCTIONS = (
    ("SSL_read", "tw_ssl_read_enter"),
    ("SSL_read_ex", "tw_ssl_read_ex_enter"),
    ("SSL_write", "tw_ssl_write_enter"),
    ("SSL_write_ex", "tw_ssl_write_ex_enter"),
)
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
        self._attached: dict[int, set[str]] = {}  # pid -> libssl paths probed for it
        self._failed: set[tuple[int, int, int]] = set()  # (pid, device, inode) that failed

    @property
    def libraries(self) -> tuple[str, ...]:
        """The library files probed, as the processes see them."""
        return tuple(sorted({p.split("/root", 1)[-1] for paths in self._attached.values()
                             for p in paths}))

    @property
    def processes(self) -> int:
        return len(self._attached)

    def attach(self, pids: Iterable[int]) -> tuple[str, ...]:
        """Probe the libssl of each pid not probed yet; gives the paths newly probed."""
        new = []
        for pid in pids:
            if pid in self._attached:
                continue
            done = set()
            for lib in ssl_libraries(pid, self._proc_root):
                ident = (pid, lib.device, lib.inode)
                if ident in self._failed:
                    continue
                try:
                    self._attach(lib.path, pid)
                except Exception as e:  # noqa: BLE001 - bcc raises bare Exception
                    log.warning("TLS: cannot attach uprobes to %s for pid %d: %s", lib.path, pid,
                                e)
                    self._failed.add(ident)
                    continue
                done.add(lib.path)
                new.append(lib.path)
                log.debug("TLS: uprobes on %s for pid %d", lib.path, pid)
            self._attached[pid] = done  # also when empty: its maps are read once
        return tuple(new)

    def detach(self, pids: Iterable[int]) -> None:
        """Remove the probes of processes that are gone (or no longer targets)."""
        for pid in pids:
            for path in self._attached.pop(pid, ()):
                self._detach(path, pid, [("u", SET_FD[0])]
                             + [(k, sym) for sym, _ in SSL_FUNCTIONS for k in ("u", "r")])
        self._failed = {f for f in self._failed if f[0] not in set(pids)}

    def _attach(self, path: str, pid: int) -> None:
        done: list[tuple[str, str]] = []
        b, name = self._bpf, path.encode()
        try:  # bcc wants bytes
            b.attach_uprobe(name=name, sym=SET_FD[0].encode(), fn_name=SET_FD[1].encode(),
                            pid=pid)
            done.append(("u", SET_FD[0]))
            for sym, enter in SSL_FUNCTIONS:
                b.attach_uprobe(name=name, sym=sym.encode(), fn_name=enter.encode(), pid=pid)
                done.append(("u", sym))
                b.attach_uretprobe(name=name, sym=sym.encode(), fn_name=RETURN_PROGRAM.encode(),
                                   pid=pid)
                done.append(("r", sym))
        except Exception:
            self._detach(path, pid, done)  # all or none
            raise

    def _detach(self, path: str, pid: int, which: list[tuple[str, str]]) -> None:
        for kind, sym in which:
            try:
                if kind == "u":
                    self._bpf.detach_uprobe(name=path.encode(), sym=sym.encode(), pid=pid)
                else:
                    self._bpf.detach_uretprobe(name=path.encode(), sym=sym.encode(), pid=pid)
            except Exception:  # noqa: BLE001, S110 - the process may be gone already
                pass
