"""Bearer tokens (jwt sources) reach user space whole: hashed whole in the kernel, sent once
per distinct token, up to TOKEN_MAX bytes, also when a token is split across syscalls.

The target is the same small traced HTTP server as test_counts.py; the probes here read
`Authorization` as a token source and `X-Tenant-ID` as a plain one.
"""

from __future__ import annotations

import secrets
import socket
import time

import pytest

from tests.conftest import require_root
from tests.kernel.test_counts import _exchange, server  # noqa: F401 - the fixture is used

TOKEN_MAX = 4096


@pytest.fixture(scope="module")
def probes():
    require_root()
    from tenantwatch.kernel.loader import HttpProbes, KernelSource
    from tenantwatch.kernel.records import Side

    p = HttpProbes(
        sources=[KernelSource("authorization", (Side.SERVER,), token=True),
                 KernelSource("x-tenant-id", (Side.SERVER,))],
        process_names=["python3-twsrv"],
        latency_bounds_seconds=(0.001, 0.01, 0.1, 1.0),
    )
    p.load()
    yield p
    p.close()


def token(n: int) -> bytes:
    """A bearer value of exactly n bytes, distinct every call."""
    body = secrets.token_urlsafe(n)[: n - len("Bearer ")]
    return b"Bearer " + body.encode()


def req(auth: bytes | None = None, tenant: str | None = None) -> bytes:
    h = b"GET / HTTP/1.1\r\nHost: t\r\n"
    if auth is not None:
        h += b"Authorization: " + auth + b"\r\n"
    if tenant is not None:
        h += f"X-Tenant-ID: {tenant}\r\n".encode()
    return h + b"\r\n"


def by_value(tick) -> dict:
    out: dict = {}
    for c in tick.identities:
        if c.side.value == "server" and c.requests_by_class[1]:
            out[c.raw_value] = out.get(c.raw_value, 0) + c.requests_by_class[1]
    return out


def test_long_tokens_arrive_whole_once_each(probes, server):  # noqa: F811
    # the limit counts the whitespace after "Authorization:" too: 1 + (TOKEN_MAX - 2) bytes fit
    tokens = [token(n) for n in (129, 900, 2000, TOKEN_MAX - 2)]
    before = probes.tokens_received
    with socket.create_connection(("127.0.0.1", server)) as s:
        for i in range(5):
            for t in tokens:
                _exchange(s, req(t), 1)
            _exchange(s, req(tenant="plain"), 1)
    time.sleep(0.1)
    counts = by_value(probes.drain())
    for t in tokens:
        assert counts.get(t) == 5, (len(t), {len(k or b""): v for k, v in counts.items()})
    assert counts[b"plain"] == 5
    assert probes.tokens_received - before == len(tokens)  # once per token, not per request


def test_a_token_split_across_syscalls_and_pipelined_tokens(probes, server):  # noqa: F811
    t1, t2, t3 = token(1500), token(1500), token(700)
    with socket.create_connection(("127.0.0.1", server)) as s:
        whole = req(t1)
        for cut in (whole.index(b"Bearer") - 1, whole.index(b"Bearer") + 300, len(whole) - 3):
            s.sendall(whole[:cut])
            time.sleep(0.05)
            _exchange(s, whole[cut:], 1)
        _exchange(s, req(t2) + req(t3) + req(t2), 3)  # one recv, three heads
    time.sleep(0.1)
    counts = by_value(probes.drain())
    assert counts.get(t1) == 3 and counts.get(t2) == 2 and counts.get(t3) == 1, \
        {len(k or b""): v for k, v in counts.items()}


def test_a_token_longer_than_the_limit_is_flagged_too_long(probes, server):  # noqa: F811
    from tenantwatch.kernel.records import ValueFlag

    with socket.create_connection(("127.0.0.1", server)) as s:
        _exchange(s, req(token(TOKEN_MAX + 500)), 1)
        _exchange(s, req(token(16 * 1024)), 1)
        _exchange(s, req(tenant="after"), 1)
    time.sleep(0.1)
    tick = probes.drain()
    flagged = sum(c.requests_by_class[1] for c in tick.identities
                  if c.flags & ValueFlag.TOO_LONG)
    assert flagged == 2
    assert by_value(tick)[b"after"] == 1
    assert "resync" not in tick.lost and "scan_budget" not in tick.lost
