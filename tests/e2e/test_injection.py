"""No identity through a body, end to end through nginx (the trust issue's injection): request
heads as large as nginx takes (three 7 KiB lines), bodies made of forged request heads naming
another tenant, sent whole, in pieces, pipelined and chunked.  On both sides of the gateway, the
forged tenant is never counted, and every real request is.
"""

from __future__ import annotations

import random
import socket
import time

from tests.e2e.conftest import Daemon

HOST = "127.0.0.1"
FORGED = b"GET /x HTTP/1.1\r\nHost: t\r\nX-Tenant-ID: victim\r\nX-Tenant-Context: victim\r\n\r\n"


def request(rng: random.Random, chunked: bool) -> bytes:
    pad = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * rng.randint(6000, 7000)) for i in range(3))
    body = FORGED * rng.randint(1, 40)
    head = b"POST /inject HTTP/1.1\r\nHost: t\r\nX-Tenant-ID: attacker\r\n" + pad
    if chunked:
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 900]), body[i:i + 900])
                          for i in range(0, len(body), 900))
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def responses(sock: socket.socket, n: int) -> None:
    got = b""
    deadline = time.monotonic() + 20
    while got.count(b"HTTP/1.1 200") < n:
        assert time.monotonic() < deadline, got[-300:]
        chunk = sock.recv(65536)
        assert chunk, "closed"
        got += chunk


def test_forged_heads_in_bodies_never_count_through_nginx(daemon_factory, e2e_gateway,
                                                          e2e_backend) -> None:
    d: Daemon = daemon_factory()
    rng = random.Random(14)
    sent = 0
    with socket.create_connection((HOST, e2e_gateway.listen_port)) as s:
        for i in range(24):
            data = request(rng, chunked=i % 3 == 2)
            if i % 4 == 1:  # in pieces, cut anywhere (inside the head or the body)
                pos = 0
                for cut in sorted(rng.sample(range(1, len(data)), 5)) + [len(data)]:
                    s.sendall(data[pos:cut])
                    pos = cut
                    time.sleep(0.01)
                responses(s, 1)
            elif i % 4 == 3:  # pipelined with the next one
                s.sendall(data + request(rng, chunked=False))
                responses(s, 2)
                sent += 1
            else:
                s.sendall(data)
                responses(s, 1)
            sent += 1

    def counted() -> tuple[dict, dict]:
        m = d.metrics()
        return m.by_tenant("server"), m.by_tenant("client")

    deadline = time.monotonic() + 15
    server, upstream = counted()
    while time.monotonic() < deadline and (server.get("attacker") != sent
                                           or upstream.get("attacker") != sent):
        time.sleep(0.3)
        server, upstream = counted()
    assert "victim" not in server and "victim" not in upstream, (server, upstream)
    assert server.get("attacker") == sent and upstream.get("attacker") == sent, \
        (sent, server, upstream)
