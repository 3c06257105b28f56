"""Shared fixtures: free loopback ports, a real Backend and a real nginx gateway.

Root-only tests call `require_root()`: on a developer machine without root they skip with the
reason; when the environment variable CI is set they fail loudly instead (docs/testing.md).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Callable

import pytest

from harness.backend import RecordingBackend
from harness.gateway import Gateway, GatewayError, find_nginx


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def require(condition: bool, reason: str) -> None:
    """Skip with `reason` when `condition` is false, or fail when CI is set."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def require_root() -> None:
    require(os.geteuid() == 0, "needs root (real nginx, BPF)")


def require_nginx() -> str:
    try:
        return find_nginx()
    except GatewayError as e:
        require(False, str(e))
        raise


@pytest.fixture
def free_port() -> Callable[[], int]:
    """Call it to get a currently free TCP port on 127.0.0.1."""
    return _free_port


@pytest.fixture
def backend() -> Iterator[RecordingBackend]:
    b = RecordingBackend(port=0).start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def gateway(tmp_path, backend: RecordingBackend) -> Iterator[Gateway]:
    """nginx (2 workers) on a free loopback port proxying to `backend`; stopped (by pid) after."""
    require_root()
    require_nginx()
    gw = None
    last: Exception = RuntimeError("no attempt")
    for attempt in range(3):  # the free port can be taken between probing and nginx's bind
        gw = Gateway(tmp_path / f"nginx{attempt}", _free_port(), backend.port, workers=2)
        try:
            gw.start()
            break
        except GatewayError as e:
            gw.stop()
            last = e
            gw = None
    if gw is None:
        raise last
    try:
        yield gw
    finally:
        gw.stop()
