"""Base of the collectors that export one stage's published state (detection, enforcement)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, Callable

from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


class StateCollector(Collector):
    """A collector whose families are built at each scrape from one document a stage
    publishes (a DetectionResult, the enforcer's payload); a failed read exports the
    families without samples, never an exception in the scrape."""

    def __init__(self, get_state: Callable[[], Any]) -> None:
        self._get_state = get_state

    def describe(self) -> list:
        return self._families(None)

    def collect(self) -> Iterator:
        try:
            state = self._get_state()
        except Exception:  # a scrape must not fail because a stage did
            log.exception("cannot read the state for %s", type(self).__name__)
            state = None
        yield from self._families(state)

    @staticmethod
    def _families(state: Any) -> list:
        raise NotImplementedError
