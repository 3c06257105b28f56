"""capture.sides: a leg left out is never followed, and the traced leg counts exactly.

The probes are loaded with only the server side traced (`capture.sides: [server]`).  One
traced process serves requests (server side); another traced process sends requests to an
untraced listener, on a connection it opens while traced (connect seen) and on one it opened
before (which the kernel would otherwise adopt from its first request head).  The server side
must count exactly; the client side must hold no connection and count nothing, on both paths.
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
    cli = subprocess.Popen([sys.executable, "-c", CLIENT, str(listener.getsockname()[1])],
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
            # the server's one accepted connection; neither of the client's
            assert tick.tables["connections"][0] == 1
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
