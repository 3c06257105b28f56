"""TLS capture: which libssl each target process maps, and uprobes on it, once per file.

Takes: target pids and their /proc/PID/maps.  Gives: `TlsProbes.attach(pids)`, which attaches
the entry and return uprobes of bpf/tls.c to every libssl file a target maps that has no
probes yet (a file is identified by device and inode, read through /proc/PID/root so that a
container's library is the container's file), and `static_tls(pid)` for `doctor`: a target
that serves TLS without mapping libssl (statically linked OpenSSL or BoringSSL, e.g. Envoy) is
not supported and must be reported, not silently missed.

A uprobe is per file, not per process: a gateway restart that maps the same file needs nothing
new; a library upgraded in place (a new inode) is attached again at the next rescan.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)

# (symbol, entry program); every one also gets tw_ssl_return at its return.
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
    """Uprobes on the targets' libssl files; attach() is cheap when nothing is new."""

    def __init__(self, bpf, proc_root: str = "/proc") -> None:
        self._bpf = bpf
        self._proc_root = proc_root
        self._attached: dict[tuple[int, int], str] = {}  # (device, inode) -> path
        self._failed: set[tuple[int, int]] = set()

    @property
    def libraries(self) -> tuple[str, ...]:
        return tuple(sorted(self._attached.values()))

    def attach(self, pids: Iterable[int]) -> tuple[str, ...]:
        """Attach to each new libssl file the pids map; gives the paths newly attached."""
        new = []
        for pid in pids:
            for lib in ssl_libraries(pid, self._proc_root):
                ident = (lib.device, lib.inode)
                if ident in self._attached or ident in self._failed:
                    continue
                try:
                    self._attach(lib.path)
                except Exception as e:  # noqa: BLE001 - bcc raises bare Exception
                    log.warning("TLS: cannot attach uprobes to %s: %s", lib.path, e)
                    self._failed.add(ident)
                    continue
                self._attached[ident] = lib.path
                new.append(lib.path)
                log.info("TLS: uprobes on %s (pid %d)", lib.path, pid)
        return tuple(new)

    def _attach(self, path: str) -> None:
        done = []
        try:
            for sym, enter in SSL_FUNCTIONS:  # bcc wants bytes
                self._bpf.attach_uprobe(name=path.encode(), sym=sym.encode(),
                                        fn_name=enter.encode())
                done.append(("u", sym))
                self._bpf.attach_uretprobe(name=path.encode(), sym=sym.encode(),
                                           fn_name=RETURN_PROGRAM.encode())
                done.append(("r", sym))
        except Exception:
            for kind, sym in done:  # all four or none
                try:
                    if kind == "u":
                        self._bpf.detach_uprobe(name=path.encode(), sym=sym.encode())
                    else:
                        self._bpf.detach_uretprobe(name=path.encode(), sym=sym.encode())
                except Exception:  # noqa: BLE001, S110 - best effort
                    pass
            raise
