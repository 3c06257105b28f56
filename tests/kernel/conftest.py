"""Kernel tier: root and a real kernel with BPF; probes are loaded once per module."""

from __future__ import annotations

import pytest

from tests.conftest import require_root


@pytest.fixture(scope="module")
def probes():
    require_root()
    from tenantwatch.kernel.loader import HttpProbes, KernelSource
    from tenantwatch.kernel.records import Side

    p = HttpProbes(
        sources=[KernelSource("x-tenant-context", (Side.CLIENT,)),
                 KernelSource("x-tenant-id", (Side.SERVER,))],
        process_names=["python3-twsrv"],
        latency_bounds_seconds=(0.001, 0.01, 0.1, 1.0),
        slow_request_seconds=0.05,
        slow_requests_per_cpu_per_second=5,
    )
    p.load()
    yield p
    p.close()
