"""The daemon's metrics about itself that no collector builds from a snapshot: the tick
duration histogram and the errors of each tick stage (the process_* families come from
prometheus_client's ProcessCollector)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Histogram

TICK_DURATION = "tenantwatch_tick_duration_seconds"
STAGE_ERRORS = "tenantwatch_stage_errors"
# from 5 ms (a quiet node) to 5 s (a tick that overran; alert TenantwatchTickSlow)
TICK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def tick_duration() -> Histogram:
    """A new, unregistered histogram of tick durations (register it where /metrics reads)."""
    return Histogram(TICK_DURATION, "Time one tick took: kernel drain, identity resolution, "
                     "aggregation, detection and enforcement", buckets=TICK_BUCKETS,
                     registry=None)


def stage_errors(stages: Iterable[str]) -> Counter:
    """A new, unregistered counter of tick stages that raised, by stage; every stage's series
    exists from the start, at 0."""
    c = Counter(STAGE_ERRORS, "Tick stages that raised (logged with the traceback); the tick "
                "went on without them", ["stage"], registry=None)
    for stage in stages:
        c.labels(stage=stage)
    return c
