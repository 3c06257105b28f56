"""The daemon's metrics about itself that no collector builds from a snapshot: the tick
duration histogram and the errors of each tick stage (the process_* families come from
prometheus_client's ProcessCollector)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Histogram

from tenantwatch.exporters.catalog import STAGE_ERRORS, TICK_DURATION

# from 5 ms (a quiet node) to 5 s (a tick that overran; alert TenantwatchTickSlow)
TICK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def tick_duration() -> Histogram:
    """A new, unregistered histogram of tick durations (register it where /metrics reads)."""
    return Histogram(TICK_DURATION.name, TICK_DURATION.help, TICK_DURATION.labels,
                     buckets=TICK_BUCKETS, registry=None)


def stage_errors(stages: Iterable[str]) -> Counter:
    """A new, unregistered counter of tick stages that raised, by stage; every stage's series
    exists from the start, at 0."""
    c = Counter(STAGE_ERRORS.name, STAGE_ERRORS.help, STAGE_ERRORS.labels, registry=None)
    for stage in stages:
        c.labels(stage=stage)
    return c


def stage_error_counts(counter: Counter) -> dict[str, int]:
    """{stage: errors so far} of a stage_errors() counter (for /healthz)."""
    return {s.labels["stage"]: int(s.value) for m in counter.collect() for s in m.samples
            if s.name.endswith("_total")}
