"""Small pieces the benchmarks share: their error, the median they report, and the kernel's
BPF run-time statistics switched on for the duration of a run."""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator
from pathlib import Path


class BenchError(RuntimeError):
    """A run could not be carried out (wrk, nginx or the daemon misbehaved); the message says how."""


BPF_STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")


@contextlib.contextmanager
def bpf_stats(enabled: bool) -> Iterator[None]:
    """kernel.bpf_stats_enabled as asked for during the block, restored after.  Off unless
    asked for: left on (by an interrupted run), it adds two clock reads to every program
    run, so to the runs with probes and to none of the runs without."""
    was = BPF_STATS_SYSCTL.read_text().strip() if BPF_STATS_SYSCTL.exists() else None
    if was is not None:
        BPF_STATS_SYSCTL.write_text("1\n" if enabled else "0\n")
    try:
        yield
    finally:
        if was is not None:
            BPF_STATS_SYSCTL.write_text(was + "\n")


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None
