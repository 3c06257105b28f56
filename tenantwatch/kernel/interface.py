"""What the daemon needs of the kernel side: the KernelProbes protocol.

kernel/loader.py HttpProbes is the implementation (bcc, BPF programs and maps); tests hand the
Daemon a fake through its constructor (tests/unit/test_sd_notify.py FakeProbes).  Nothing
outside tenantwatch/kernel/ reaches into the BPF object itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol, runtime_checkable

from tenantwatch.kernel.records import H2Event, KernelTick


@runtime_checkable
class KernelProbes(Protocol):
    """Load the probes, choose the traced processes, drain a tick's counts, close."""

    @property
    def loaded(self) -> bool:
        """Between load() and close()."""
        ...

    @property
    def probes(self) -> Mapping[str, bool]:
        """Attach point -> attached, for /metrics and /healthz."""
        ...

    @property
    def drain_path(self) -> str:
        """How maps are read ("batch" or "per-key"), for the start-up log line."""
        ...

    def print_bpf(self) -> str:
        """The BPF C text and compiler flags as load() would compile them (--print-bpf)."""
        ...

    def load(self) -> None:
        """Compile, load and attach; raises KernelSupportError or PermissionProblem."""
        ...

    def targets(self) -> set[int]:
        """The traced process ids."""
        ...

    def set_targets(self, tgids: Iterable[int]) -> tuple[set[int], set[int]]:
        """Trace exactly these processes; gives (added, removed)."""
        ...

    def forget_connections(self, live_tgids: set[int]) -> int:
        """Drop the connection state of processes that left; gives how many entries."""
        ...

    def drain(self) -> KernelTick:
        """This tick's counts, losses and tables (the kernel's maps swap generations)."""
        ...

    def poll_h2(self) -> tuple[H2Event, ...]:
        """HTTP/2 events read between ticks."""
        ...

    def close(self) -> None:
        """Detach everything (idempotent)."""
        ...
