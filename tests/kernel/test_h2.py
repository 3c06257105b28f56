"""HTTP/2 on a traced server: the kernel sends the frames (DATA payloads left out), user space
decodes HPACK (tenantwatch/h2): exact per-tenant counts for streams of several tenants
interleaved on one connection, with large bodies that never leave the kernel.

The target is a small HTTP/2 server (the `h2` library over a plain socket, h2c with prior
knowledge) named "python3-twh2"; the client is this test process (not traced).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import require_root

h2_connection = pytest.importorskip("h2.connection")
h2_config = pytest.importorskip("h2.config")
h2_events = pytest.importorskip("h2.events")

SERVER = r"""
import ctypes, socket, sys, threading
import h2.connection, h2.config, h2.events
ctypes.CDLL(None).prctl(15, b"python3-twh2", 0, 0, 0)  # PR_SET_NAME
BODY = b"x" * 10000  # 5 of them fit the connection window; never sent to user space
def serve(c):
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    c.sendall(conn.data_to_send())
    while True:
        data = c.recv(65536)
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                h = dict(ev.headers)
                status = b"404" if h[b":path"] == b"/missing" else b"200"
                body = BODY if h[b":path"] == b"/big" else b"ok\n"
                conn.send_headers(ev.stream_id, [(":status", status),
                                                 ("content-length", str(len(body)))])
                while body:
                    n = min(len(body), conn.local_flow_control_window(ev.stream_id),
                            conn.max_outbound_frame_size)
                    if n <= 0:
                        break
                    conn.send_data(ev.stream_id, body[:n], end_stream=(n == len(body)))
                    body = body[n:]
            elif isinstance(ev, h2.events.WindowUpdated):
                pass
        c.sendall(conn.data_to_send())
    c.close()
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


@pytest.fixture(scope="module")
def probes():
    require_root()
    from tenantwatch.kernel.loader import HttpProbes, KernelSource
    from tenantwatch.kernel.records import Side

    p = HttpProbes(sources=[KernelSource("x-tenant-id", (Side.SERVER,))],
                   process_names=["python3-twh2"], latency_bounds_seconds=(0.001, 0.01, 0.1, 1.0))
    p.load()
    yield p
    p.close()


@pytest.fixture()
def h2_server(probes):
    proc = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    probes.set_targets({proc.pid})
    probes.drain()
    yield port
    proc.kill()
    proc.wait(5)
    probes.set_targets(set())


def run_client(port: int, requests: list[tuple[str, str]]) -> int:
    """Send all requests as concurrent streams on ONE connection; returns responses read."""
    c = h2_connection.H2Connection(h2_config.H2Configuration(client_side=True))
    s = socket.create_connection(("127.0.0.1", port))
    c.initiate_connection()
    for tenant, path in requests:
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, [(":method", "GET"), (":path", path), (":scheme", "http"),
                             (":authority", "t"), ("x-tenant-id", tenant)], end_stream=True)
    s.sendall(c.data_to_send())
    done = 0
    s.settimeout(5)
    while done < len(requests):
        data = s.recv(65536)
        assert data, "server closed early"
        for ev in c.receive_data(data):
            if isinstance(ev, h2_events.StreamEnded):
                done += 1
            elif isinstance(ev, h2_events.DataReceived):
                c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        s.sendall(c.data_to_send())
    s.close()
    return done


def test_interleaved_tenants_on_one_connection_are_counted_exactly(probes, h2_server):
    from tenantwatch.config import Source
    from tenantwatch.h2 import H2Tracker
    from tenantwatch.kernel.records import Side

    tracker = H2Tracker([Source("header", "x-tenant-id", Side.SERVER, False)],
                        (0.001, 0.01, 0.1, 1.0))
    reqs = [("alpha", "/"), ("beta", "/missing"), ("alpha", "/big"), ("gamma", "/")] * 5
    assert run_client(h2_server, reqs) == len(reqs)
    time.sleep(0.2)
    raw = probes.drain()
    sent = sum(len(e.data) for e in raw.h2)
    tick = tracker.merge(raw)
    counts: dict = {}
    for c in tick.identities:
        if c.side is Side.SERVER and sum(c.requests_by_class):
            row = counts.setdefault(c.raw_value, [0] * 6)
            for i, n in enumerate(c.requests_by_class):
                row[i] += n
    assert counts[b"alpha"] == [0, 10, 0, 0, 0, 0]
    assert counts[b"beta"] == [0, 0, 0, 5, 0, 0]
    assert counts[b"gamma"] == [0, 5, 0, 0, 0, 0]
    assert not {k for k in tick.lost if k.startswith(("h2", "scan"))}, tick.lost
    # The bodies (5 x 10 KB) never reached user space: only frame headers and HPACK blocks did.
    assert sent < 5 * 10000, sent
    assert tracker.connections == 0  # the close event freed it
