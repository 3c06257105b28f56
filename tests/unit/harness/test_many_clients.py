"""harness.many_clients against a plain Python server on loopback (no nginx, no BPF):
the addresses, the tenants, the framing, the alive check and the fleet's sums."""

from __future__ import annotations

import socket
import sys
import threading
import time

from harness.many_clients import (
    ClientFleet,
    _response_done,
    source_address,
    tenant_name,
)


def test_addresses_and_tenants():
    assert source_address("127.100", 0) == "127.100.0.1"
    assert source_address("127.100", 3999) == "127.100.0.1"
    assert source_address("127.100", 4000) == "127.100.0.2"
    assert source_address("127.100", 250 * 4000) == "127.100.1.1"
    assert tenant_name(10001, 10000) == "t00001"


def test_response_framing():
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"
    assert _response_done(head + b"ok") == 0
    assert _response_done(head + b"ok\n") == len(head) + 3
    assert _response_done(head + b"ok\nHTTP/1.1") == len(head) + 3
    assert _response_done(b"HTTP/1.1 200 OK\r\n") == 0


class _Server:
    """Answers each request with "ok"; closes the connections listed in `close` after answering."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.tenants: list[str] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        buf = b""
        while True:
            try:
                chunk = c.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\r\n\r\n" in buf:
                head, buf = buf.split(b"\r\n\r\n", 1)
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"x-tenant-id:"):
                        self.tenants.append(line.split(b":", 1)[1].strip().decode())
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")


def test_a_fleet_opens_counts_and_sees_closed_connections():
    server = _Server()
    fleet = ClientFleet(server.port, 30, 7, 2, path="/x", requests=2, python=sys.executable)
    with fleet:
        got = fleet.open()
        assert got["open"] == 30 and got["ok"] == 30 and got["failed"] == 0, got
        assert fleet.alive() == 30
        for c in server.conns[:4]:  # the server closes four: the clients' check sees it
            c.shutdown(socket.SHUT_RDWR)
            c.close()
        deadline = time.monotonic() + 5  # the FINs cross loopback at once; bounded anyway
        while (alive := fleet.alive()) != 26 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert alive == 26
        assert fleet.close() == 30
    want = fleet.expected()
    assert sum(want.values()) == 60 and len(want) == 7
    assert sorted(server.tenants) == sorted(t for t, n in want.items() for _ in range(n))
    server.sock.close()
