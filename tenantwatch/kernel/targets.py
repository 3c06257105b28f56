"""Find target processes by name (comm) in /proc.

The kernel adds children of targets (fork) and processes that exec a configured
name by itself; this scan covers processes that existed before the daemon started
and removes ones that are gone.  /proc is a constructor parameter so tests can use
a fixture tree.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


class ProcessScanner:
    """Lists the tgids whose comm is one of the configured names."""

    def __init__(self, names: Iterable[str], proc: str = "/proc") -> None:
        self.names = {n[:15] for n in names}  # comm is at most 15 bytes (TASK_COMM_LEN - 1)
        self.proc = Path(proc)

    def scan(self) -> set[int]:
        out: set[int] = set()
        try:
            entries = os.listdir(self.proc)
        except OSError:
            return out
        for e in entries:
            if not e.isdigit():
                continue
            try:
                comm = (self.proc / e / "comm").read_text().rstrip("\n")
            except OSError:
                continue  # exited while we looked
            if comm in self.names:
                out.add(int(e))
        return out

    def alive(self, tgid: int) -> bool:
        return (self.proc / str(tgid)).exists()

    def is_process(self, tgid: int) -> bool:
        """The kernel's fork hook may add thread ids; only thread-group leaders are processes."""
        try:
            with open(self.proc / str(tgid) / "status") as f:
                for line in f:
                    if line.startswith("Tgid:"):
                        return int(line.split()[1]) == tgid
        except OSError:
            return False
        return False

    def live_processes(self, tgids: Iterable[int]) -> set[int]:
        """Those of `tgids` that are still alive processes (what the kernel added by fork or
        exec keeps being traced while it lives)."""
        return {t for t in tgids if self.alive(t) and self.is_process(t)}
