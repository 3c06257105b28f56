"""capture.sides: a leg left out is never followed, and the traced leg counts exactly.

The probes are loaded with only the server side traced (`capture.sides: [server]`).  One
traced process serves requests (server side); another traced process sends requests to an
untraced listener, on a connection it opens while traced (connect seen) and on one it opened
before (which the kernel would otherwise adopt from its first request head), and reads HTTP/2
frames from an untraced HTTP/2 listener (frames read on an unknown fd were adopted as a server
leg, whatever the sides: a gRPC upstream's calls were counted twice).  The server side must
count exactly; the client side must hold no connection and count nothing, on every path.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import require_root
from tests.kernel.test_counts import SERVER, _answer_forever, _exchange, _req

# Traced once listed: one connection opened before ("old"), one after ("go"), 3 requests each.
CLIENT = r"""
import ctypes, socket, sys
ctypes.CDLL(None).prctl(15, b"python3-twsrv", 0, 0, 0)  # PR_SET_NAME: a target once listed
port = int(sys.argv[1])
old = socket.create_connection(("127.0.0.1", port))  # before it is traced: adoption's path
print("connected", flush=True)
sys.stdin.readline()  # traced from now on
new = socket.create_connection(("127.0.0.1", port))  # connect seen while traced
for s in (old, new):
    for _ in range(3):
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Tenant-Context: leg\r\n\r\n")
        assert s.recv(4096)
h2 = socket.create_connection(("127.0.0.1", int(sys.argv[2])))  # an HTTP/2 upstream (grpc_pass)
assert len(h2.recv(64)) == 9  # its SETTINGS frame: HTTP/2 frames read on an unknown fd
print("done", flush=True)
sys.stdin.readline()
"""


@pytest.fixture(scope="module")
def server_only():
    require_root()
    from tenantwatch.kernel.loader import HttpProbes, KernelSource
    from tenantwatch.kernel.records import Side

    p = HttpProbes(
        sources=[KernelSource("x-tenant-id", (Side.SERVER,))],
        process_names=["python3-twsrv"],
        latency_bounds_seconds=(0.001, 0.01, 0.1, 1.0),
        sides=(Side.SERVER,),
    )
    p.load()
    yield p
    p.close()


def test_an_untraced_leg_holds_no_connection_and_counts_nothing(server_only):
    from tenantwatch.kernel.records import Side

    srv = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    listener = socket.create_server(("127.0.0.1", 0))
    for _ in range(2):
        threading.Thread(target=_answer_forever,
                         args=(listener, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"),
                         daemon=True).start()
    h2_listener = socket.create_server(("127.0.0.1", 0))

    def h2_upstream() -> None:  # sends its SETTINGS frame (empty) and holds the connection
        conn, _ = h2_listener.accept()
        conn.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        conn.recv(1)

    threading.Thread(target=h2_upstream, daemon=True).start()
    cli = subprocess.Popen([sys.executable, "-c", CLIENT, str(listener.getsockname()[1]),
                            str(h2_listener.getsockname()[1])],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(srv.stdout.readline())
        assert cli.stdout.readline().strip() == "connected"
        server_only.set_targets({srv.pid, cli.pid})
        server_only.drain()
        with socket.create_connection(("127.0.0.1", port)) as s:
            for _ in range(5):
                _exchange(s, _req("srv"), 1)
            cli.stdin.write("go\n")
            cli.stdin.flush()
            assert cli.stdout.readline().strip() == "done"
            time.sleep(0.1)
            tick = server_only.drain()
            # the server's one accepted connection; none of the client's
            assert tick.tables["connections"][0] == 1
            assert tick.h2 == ()
        client_side = [c for c in tick.identities if c.side is Side.CLIENT]
        assert client_side == []
        srv_counts = [c for c in tick.identities if c.side is Side.SERVER]
        assert sum(c.request_heads for c in srv_counts if c.raw_value == b"srv") == 5
        assert sum(c.request_heads for c in srv_counts) == 5
        assert sum(tick.lost.values()) == 0
    finally:
        for proc in (srv, cli):
            proc.kill()
            proc.wait(5)
        server_only.set_targets(set())
        listener.close()
        h2_listener.close()
