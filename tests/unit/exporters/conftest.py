"""Fixture: a live ApiServer on port 0 (see live.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.exporters.live import LiveApi


@pytest.fixture
def live_api() -> Iterator[LiveApi]:
    api = LiveApi()
    api.server.start()
    try:
        yield api
    finally:
        api.server.stop()
