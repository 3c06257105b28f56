"""HTTP/2 on a traced server: the kernel sends the frames (DATA payloads left out), user space
decodes HPACK (tenantwatch/h2): exact per-tenant counts for streams of several tenants
interleaved on one connection, with large bodies that never leave the kernel.

The target is a small HTTP/2 server (the `h2` library over a plain socket, h2c with prior
knowledge) named "python3-twh2"; the client is this test process (not traced).
"""

from __future__ import annotations

import contextlib
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


def loaded_probes():
    require_root()
    from tenantwatch.kernel.loader import HttpProbes, KernelSource
    from tenantwatch.kernel.records import Side

    p = HttpProbes(sources=[KernelSource("x-tenant-id", (Side.SERVER,))],
                   process_names=["python3-twh2"], latency_bounds_seconds=(0.001, 0.01, 0.1, 1.0))
    p.load()
    return p


@contextlib.contextmanager
def traced_server(probes):
    """SERVER running, traced by ``probes`` (their counts so far drained); yields its port."""
    proc = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        probes.set_targets({proc.pid})
        probes.drain()
        yield port
    finally:
        proc.kill()
        proc.wait(5)
        probes.set_targets(set())


@pytest.fixture(scope="module")
def probes():
    p = loaded_probes()
    yield p
    p.close()


@pytest.fixture()
def h2_server(probes):
    with traced_server(probes) as port:
        yield port


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
    _interleaved_tenants_are_counted_exactly(probes, h2_server)


def test_the_perf_buffer_path_of_kernels_before_5_8_counts_the_same(monkeypatch):
    """Kernels before 5.8 have no ring buffer: the HTTP/2 events come through a perf buffer
    and bcc's callback (loader._callback, then HttpProbes._h2_record), whose records are
    padded; forced here."""
    from tenantwatch.kernel import loader

    monkeypatch.setattr(loader, "kernel_version", lambda release=None: (5, 7))
    p = loaded_probes()
    try:
        assert p.event_path == "perf buffer" and not p._rings
        with traced_server(p) as port:
            _interleaved_tenants_are_counted_exactly(p, port)
    finally:
        p.close()


def _interleaved_tenants_are_counted_exactly(probes, port: int) -> None:
    from tenantwatch.config import Source
    from tenantwatch.h2 import H2Tracker
    from tenantwatch.kernel.records import Side

    tracker = H2Tracker([Source("header", "x-tenant-id", Side.SERVER, False)],
                        (0.001, 0.01, 0.1, 1.0))
    reqs = [("alpha", "/"), ("beta", "/missing"), ("alpha", "/big"), ("gamma", "/")] * 5
    assert run_client(port, reqs) == len(reqs)
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


def test_the_event_ring_read_from_its_memory_wraps_around_without_losing_a_frame(
        probes, h2_server):
    """tw_h2_events is read from its memory map (kernel/ringbuf.py), not through a callback.
    About 6 MB of header blocks (an 8000-byte header no HPACK table can hold, sent whole on
    every request) go through its 4 MiB: the reading wraps past the end of the data area, and
    every request is still counted, under its tenant, with nothing lost."""
    import random

    from tenantwatch.config import Source
    from tenantwatch.h2 import H2Tracker
    from tenantwatch.kernel.records import Side

    assert probes.event_path == "ring memory"  # this kernel (5.8+, x86-64)
    ring = next(r for r, handler in probes._rings if handler == probes._h2_record)
    start = ring.consumed
    tracker = H2Tracker([Source("header", "x-tenant-id", Side.SERVER, False)],
                        (0.001, 0.01, 0.1, 1.0))
    rng = random.Random(11)
    c = h2_connection.H2Connection(h2_config.H2Configuration(client_side=True))
    s = socket.create_connection(("127.0.0.1", h2_server))
    s.settimeout(5)
    c.initiate_connection()
    sent: dict = {}
    for _batch in range(15):  # 50 streams at a time, the events read after each batch
        for _ in range(50):
            tenant = rng.choice(("alpha", "beta", "gamma"))
            sent[tenant] = sent.get(tenant, 0) + 1
            pad = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=8000))
            c.send_headers(c.get_next_available_stream_id(),
                           [(":method", "GET"), (":path", "/"), (":scheme", "http"),
                            (":authority", "t"), ("x-tenant-id", tenant), ("x-pad", pad)],
                           end_stream=True)
        s.sendall(c.data_to_send())
        done = 0
        while done < 50:
            data = s.recv(65536)
            assert data, "server closed early"
            done += sum(isinstance(ev, h2_events.StreamEnded) for ev in c.receive_data(data))
            s.sendall(c.data_to_send())
        time.sleep(0.05)
        tracker.feed(probes.poll_h2())
    s.close()
    time.sleep(0.2)
    tick = tracker.merge(probes.drain())
    counted: dict = {}
    for row in tick.identities:
        if row.side is Side.SERVER and sum(row.requests_by_class):
            key = row.raw_value.decode()
            counted[key] = counted.get(key, 0) + sum(row.requests_by_class)
    assert counted == sent
    assert not {k for k in tick.lost if k.startswith(("h2", "scan"))}, tick.lost
    assert ring.consumed - start > 4 << 20  # more than the ring's data area went through it


# ----------------------------------------------------------------------------- CPU per stream

# A server that burns a known CPU time per request, by tenant (the ground truth), in the thread
# serving the connection, between reading the request and writing its response.
# The HTTP/2 work itself (0.3-0.6 ms a request; the first stream of a batch also pays for
# parsing the batch's read) is charged to its stream too: the burn must dwarf it (at 5 ms the
# cheap tenant ran 10-12 % over its burn, at the test's bound).  Two burns in a row must stay
# well under the 50 ms of open and pending CPU at which a context switch charges a thread's
# piece to its current stream (bpf/cpu.c TW_CPU_OPEN_MAX_NS): at 25 + 35 ms, the dear tenant's
# CPU went to the one before it.
BURN_MS = {"cheap": 15.0, "mid": 18.0, "dear": 21.0}
CPU_SERVER = SERVER.replace(
    'ctypes.CDLL(None).prctl(15, b"python3-twh2", 0, 0, 0)  # PR_SET_NAME',
    'ctypes.CDLL(None).prctl(15, b"python3-twh2", 0, 0, 0)  # PR_SET_NAME\n'
    'import time\nBURN = ' + repr({k.encode(): v for k, v in BURN_MS.items()}) + '\n'
    'def burn(ms):\n    t0 = time.thread_time()\n    while time.thread_time() - t0 < ms / 1000:\n'
    '        pass\n').replace(
    '                h = dict(ev.headers)\n',
    '                h = dict(ev.headers)\n                burn(BURN.get(h.get(b"x-tenant-id"), 0))\n')
# The same, answering each stream as soon as its work is done (one write per stream), as a
# proxying gateway hands each stream upstream in turn.
CPU_SERVER_EACH = CPU_SERVER.replace(
    '                    body = body[n:]\n',
    '                    body = body[n:]\n                c.sendall(conn.data_to_send())\n')
assert CPU_SERVER_EACH != CPU_SERVER
ROUNDS = 30  # requests per tenant


def _cpu_by_tenant(tick) -> dict:
    names = {c.key: c.raw_value for c in tick.identities if c.raw_value}
    out: dict = {}
    for c in tick.cpu:
        t = names.get(c.key, b"?").decode()
        out[t] = out.get(t, 0) + c.ns / 1e9
    return out


def _run(probes, batch: int, server: str = CPU_SERVER) -> tuple[dict, dict]:
    """ROUNDS requests per tenant on one connection, `batch` streams at a time (1: each
    answered before the next is sent), tenants interleaved; (measured, ground truth) seconds."""
    from tenantwatch.config import Source
    from tenantwatch.h2 import H2Tracker
    from tenantwatch.kernel.records import Side

    proc = subprocess.Popen([sys.executable, "-c", server], stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    try:
        probes.set_targets({proc.pid})
        probes.drain()
        tracker = H2Tracker([Source("header", "x-tenant-id", Side.SERVER, False)],
                            (0.001, 0.01, 0.1, 1.0))
        c = h2_connection.H2Connection(h2_config.H2Configuration(client_side=True))
        s = socket.create_connection(("127.0.0.1", port))
        c.initiate_connection()
        order = [t for _ in range(ROUNDS) for t in BURN_MS]
        s.settimeout(10)
        for i in range(0, len(order), batch):
            for tenant in order[i:i + batch]:
                sid = c.get_next_available_stream_id()
                c.send_headers(sid, [(":method", "GET"), (":path", "/"), (":scheme", "http"),
                                     (":authority", "t"), ("x-tenant-id", tenant)],
                               end_stream=True)
            s.sendall(c.data_to_send())
            done = 0
            while done < len(order[i:i + batch]):
                for ev in c.receive_data(s.recv(65536)):
                    if isinstance(ev, h2_events.StreamEnded):
                        done += 1
                s.sendall(c.data_to_send())
        s.close()
        time.sleep(0.3)
        measured = _cpu_by_tenant(tracker.merge(probes.drain()))
    finally:
        proc.kill()
        proc.wait(5)
        probes.set_targets(set())
    truth = {t: ROUNDS * ms / 1000 for t, ms in BURN_MS.items()}
    return measured, truth


def test_cpu_of_sequential_streams_goes_to_their_tenants_within_ten_percent(probes):
    """Three tenants of different cost multiplexed on one connection, one stream at a time:
    the thread's CPU after a frame of stream S is S's (bpf/cpu.c tw_thread_set_h2)."""
    measured, truth = _run(probes, batch=1)
    print({t: (round(measured.get(t, 0), 4), truth[t]) for t in truth})
    for t, want in truth.items():
        assert abs(measured.get(t, 0) - want) <= 0.10 * want, (t, measured, truth)


def test_cpu_of_concurrent_streams_answered_in_turn_goes_to_their_tenants(probes):
    """Three streams at a time, read at once, each answered when its work is done: the work
    before a write goes to the stream the write answers (writes charge backward, bpf/cpu.c
    tw_cpu_mark), so each tenant is within 10 % although one read brought all three."""
    measured, truth = _run(probes, batch=3, server=CPU_SERVER_EACH)
    print({t: (round(measured.get(t, 0), 4), truth[t]) for t in truth})
    for t, want in truth.items():
        assert abs(measured.get(t, 0) - want) <= 0.10 * want, (t, measured, truth)


def test_cpu_of_concurrent_streams_is_split_by_the_last_frame_rule(probes):
    """Three streams at a time: the CPU after one read holding three requests goes to the last
    stream's tenant, so per-tenant error grows (docs/http2.md gives the measured figures);
    nothing is lost: the three together stay within 10 % of the truth."""
    measured, truth = _run(probes, batch=3)
    errors = {t: round((measured.get(t, 0) - want) / want, 3) for t, want in truth.items()}
    print(f"concurrent streams, relative error by tenant: {errors}")
    total = sum(measured.get(t, 0) for t in truth)
    assert abs(total - sum(truth.values())) <= 0.10 * sum(truth.values()), (measured, truth)
