"""Client-side ground truth for the tests: an exact number of requests per tenant, counted by
(tenant, status) as the client saw them.

Status 0 means "no HTTP response" (error, timeout or overall deadline). A tenant of None means
the request carries no tenant header at all. The client is `WireClient`, the product's
`tenantwatch.demo.traffic.Client` (what `tenantwatch demo` sends with) plus the tests' methods.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

from harness.client import ProtocolError, WireClient


def drive(
    host: str,
    port: int,
    tenants: dict[str | None, int],
    connections: int = 4,
    seed: int = 0,
    path: str = "/",
    timeout: float = 5.0,
    deadline: float = 60.0,
) -> Counter:
    """Send exactly `tenants[t]` requests for each tenant t over `connections` keep-alive
    connections, in a seeded shuffled interleaving (so each connection carries several tenants).

    Returns Counter{(tenant, status): n}; status 0 = no response (error, per-request `timeout`, or
    the overall `deadline` in seconds passed before the request was sent)."""
    work: list[str | None] = [t for t, n in tenants.items() for _ in range(int(n))]
    random.Random(seed).shuffle(work)
    connections = max(1, min(connections, len(work) or 1))
    lanes = [work[i::connections] for i in range(connections)]
    result: Counter = Counter()
    lock = threading.Lock()
    end = time.monotonic() + deadline

    def lane(items: list[str | None]) -> None:
        local: Counter = Counter()
        with WireClient(host, port, timeout=timeout) as client:
            for tenant in items:
                if time.monotonic() >= end:
                    local[(tenant, 0)] += 1
                    continue
                try:
                    local[(tenant, client.request(tenant, path))] += 1
                except (OSError, ProtocolError):
                    local[(tenant, 0)] += 1
        with lock:
            result.update(local)

    threads = [threading.Thread(target=lane, args=(items,), daemon=True, name=f"tw-drive-{i}")
               for i, items in enumerate(lanes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.0, end - time.monotonic()) + 2 * timeout + 1)
    return result
