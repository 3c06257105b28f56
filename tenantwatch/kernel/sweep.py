"""When to walk the connection table for processes that left.

The kernel drops a connection's state when it is closed.  A target process that exits with
connections open leaves them in tw_conns; they are closed in the counts by a sweep
(KernelProbes.forget_connections).  A sweep walks the whole table (~0.2 s at 50k connections,
bench/scale.py), so it runs every EVERY_TICKS ticks only when a target seen since the last
sweep is gone, and every BACKSTOP_TICKS ticks anyway (a process the kernel traced from its fork
and that exited before a rescan saw it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from tenantwatch.kernel.interface import KernelProbes

log = logging.getLogger(__name__)

EVERY_TICKS = 10
BACKSTOP_TICKS = 60


class ConnectionSweeper:
    """Counts ticks; tick() sweeps when a target left or the backstop is due."""

    def __init__(self, probes: KernelProbes) -> None:
        self._probes = probes
        self._ticks = 0
        self._seen: set[int] = set()  # targets seen since the last sweep

    def saw(self, tgids: Iterable[int]) -> None:
        """Targets added or removed by a rescan: a sweep checks whether they are gone."""
        self._seen.update(tgids)

    def tick(self) -> int:
        """One tick; gives the connections the sweep closed (0 when it did not walk)."""
        self._ticks += 1
        if self._ticks % EVERY_TICKS:
            return 0
        live = self._probes.targets()
        gone = self._seen - live
        n = 0
        if gone or self._ticks % BACKSTOP_TICKS == 0:
            n = self._probes.forget_connections(live)
            if n:
                log.info("sweep: %d connections of exited targets closed (gone: %s)", n,
                         ", ".join(str(t) for t in sorted(gone)) or "none seen")
        self._seen = set(live)
        return n
