"""Known workloads give exact counts: a traced Python HTTP server, 23 + 7 + 3 requests.

The target is a small threaded HTTP/1.1 server run as a separate process whose comm
is set to "python3-twsrv"; the client is this test process (not traced).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

# argv: [name (default python3-twsrv) [cert key: serve HTTPS]]
SERVER = r"""
import ctypes, ssl, sys
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
name = sys.argv[1] if len(sys.argv) > 1 else "python3-twsrv"
ctypes.CDLL(None).prctl(15, name.encode(), 0, 0, 0)  # PR_SET_NAME
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        code = 404 if self.path == "/missing" else 200
        body = b"ok\n"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.do_GET()
    def log_message(self, *a):
        pass
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
if len(sys.argv) > 3:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[2], sys.argv[3])
    s.socket = ctx.wrap_socket(s.socket, server_side=True)
print(s.server_address[1], flush=True)
s.serve_forever()
"""


@pytest.fixture()
def server(probes):
    proc = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    probes.set_targets({proc.pid})
    probes.drain()  # start from zero
    yield port
    proc.kill()
    proc.wait(5)
    probes.set_targets(set())


def _exchange(sock: socket.socket, data: bytes, responses: int) -> bytes:
    sock.sendall(data)
    got = b""
    deadline = time.monotonic() + 5
    while got.count(b"HTTP/1.1 ") < responses or not got.endswith(b"ok\n"):
        assert time.monotonic() < deadline, got
        chunk = sock.recv(65536)
        assert chunk
        got += chunk
    return got


def _req(tenant: str | None, path: str = "/") -> bytes:
    h = f"GET {path} HTTP/1.1\r\nHost: t\r\n"
    if tenant:
        h += f"X-Tenant-ID: {tenant}\r\n"
    return (h + "\r\n").encode()


def _by_value(tick):
    out = {}
    for c in tick.identities:
        if c.side.value != "server":
            continue
        key = c.raw_value.decode() if c.raw_value is not None else None
        cls = out.setdefault(key, [0] * 6)
        for i, n in enumerate(c.requests_by_class):
            cls[i] += n
    return out


def test_23_7_3_on_keepalive_connections(probes, server):
    with socket.create_connection(("127.0.0.1", server)) as a, \
            socket.create_connection(("127.0.0.1", server)) as b:
        for i in range(23):
            _exchange(a if i % 2 else b, _req("alpha"), 1)
        for _ in range(7):
            _exchange(a, _req("beta", "/missing"), 1)
        for _ in range(3):
            _exchange(b, _req(None), 1)
    time.sleep(0.1)
    counts = _by_value(probes.drain())
    assert counts["alpha"] == [0, 23, 0, 0, 0, 0]
    assert counts["beta"] == [0, 0, 0, 7, 0, 0]
    assert counts[""] == [0, 3, 0, 0, 0, 0]  # no identity: empty value, NO_IDENTITY flag


def test_pipelined_and_split_heads(probes, server):
    with socket.create_connection(("127.0.0.1", server)) as s:
        _exchange(s, _req("p1") + _req("p2") + _req("p1"), 3)
        whole = _req("splitvalue")
        for cut in (whole.index(b"Tenant"), whole.index(b"value"), len(whole) - 1):
            s.sendall(whole[:cut])
            time.sleep(0.05)
            _exchange(s, whole[cut:], 1)
    time.sleep(0.1)
    counts = _by_value(probes.drain())
    assert counts["p1"][1] == 2 and counts["p2"][1] == 1
    assert counts["splitvalue"][1] == 3


def test_body_is_skipped_not_parsed(probes, server):
    body = _req("inbody")  # a request head inside a body must not count
    head = (f"POST / HTTP/1.1\r\nHost: t\r\nX-Tenant-ID: poster\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server)) as s:
        _exchange(s, head + body, 1)
        _exchange(s, _req("after"), 1)
    time.sleep(0.1)
    counts = _by_value(probes.drain())
    assert counts["poster"][1] == 1 and counts["after"][1] == 1
    assert "inbody" not in counts


def test_a_body_in_many_reads_is_skipped_and_its_bytes_charged(probes, server):
    """Each later read is all body (tw_job_start skips it by arithmetic, no parser run): the
    request heads inside it never count, and its bytes go to the request's tenant."""
    chunk = _req("inbody").ljust(4000, b"x")
    head = (f"POST / HTTP/1.1\r\nHost: t\r\nX-Tenant-ID: poster\r\n"
            f"Content-Length: {3 * len(chunk)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server)) as s:
        s.sendall(head)
        for _ in range(3):
            time.sleep(0.05)  # separate reads on the server
            s.sendall(chunk)
        _exchange(s, b"", 1)
        _exchange(s, _req("after"), 1)
    time.sleep(0.1)
    tick = probes.drain()
    counts = _by_value(tick)
    assert counts["poster"][1] == 1 and counts["after"][1] == 1
    assert "inbody" not in counts
    poster = next(c for c in tick.identities if c.raw_value == b"poster")
    assert poster.rx_bytes == len(head) + 3 * len(chunk)


def test_a_closed_connection_counts_its_lifetime(probes, server):
    """conn_dur_ns: accept to close, under the connection's tenant.  Ground truth: the client
    holds it open at least HOLD seconds, and the whole exchange fits in its own window."""
    hold = 0.3
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", server)) as s:
        _exchange(s, _req("lifetime"), 1)
        time.sleep(hold)
    time.sleep(0.2)  # the server sees EOF and closes its side
    window = time.monotonic() - t0
    c = [c for c in probes.drain().identities if c.raw_value == b"lifetime"]
    assert sum(x.connections_closed for x in c) == 1
    seconds = sum(x.connections_duration_ns for x in c) / 1e9
    assert hold <= seconds <= window, (seconds, window)


def test_non_http_bytes_are_never_a_tenant(probes, server):
    for blob in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(40)),
                 b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", server)) as s:
            s.sendall(blob)
            s.settimeout(2)
            try:
                s.recv(1024)
            except OSError:
                pass
    time.sleep(0.1)
    tick = probes.drain()
    assert all(c.raw_value in (None, b"") for c in tick.identities)
    assert "resync" not in tick.lost


def test_connections_of_an_exited_process_are_closed_by_the_sweep(probes):
    proc = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    probes.set_targets({proc.pid})
    probes.drain()
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    try:
        for s in socks:
            _exchange(s, _req("sweep"), 1)
        time.sleep(0.1)
        opened = sum(c.connections_opened for c in probes.drain().identities)
        proc.kill()  # its sockets close without a close() the probes could see
        proc.wait(5)
        assert probes.forget_connections(set()) >= 3
        closed = sum(c.connections_closed for c in probes.drain().identities)
    finally:
        for s in socks:
            s.close()
        probes.set_targets(set())
    assert opened >= 3  # our three (another traced connection may have come along)
    assert closed == opened  # every connection it had open is closed by the sweep


CLIENT = r"""
import ctypes, socket, sys
ctypes.CDLL(None).prctl(15, b"python3-twsrv", 0, 0, 0)  # PR_SET_NAME: a target once listed
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))  # before it is traced
print("connected", flush=True)
sys.stdin.readline()  # traced from now on
for _ in range(3):
    s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Tenant-Context: " + sys.argv[2].encode()
              + b"\r\n\r\n")
    assert s.recv(4096)  # one small answer per request, in one segment on loopback
print("done", flush=True)
"""


def _answer_forever(listener: socket.socket, reply: bytes) -> None:
    conn, _ = listener.accept()
    with conn:
        while True:
            data = conn.recv(4096)
            if not data:
                return
            conn.sendall(reply)


def _adopted_flags(probes, reply: bytes, tenant: str) -> list:
    """A traced client connected before it was traced sends 3 requests; the untraced server
    answers each with `reply`.  Gives [(requests, flags)] of the tenant's client-side entries."""
    import threading

    from tenantwatch.kernel.records import Side

    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=_answer_forever, args=(listener, reply), daemon=True).start()
    proc = subprocess.Popen([sys.executable, "-c", CLIENT, str(listener.getsockname()[1]),
                             tenant], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "connected"
        probes.set_targets({proc.pid})
        probes.drain()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "done"
        time.sleep(0.1)
        tick = probes.drain()
    finally:
        proc.kill()
        proc.wait(5)
        probes.set_targets(set())
        listener.close()
    return sorted((c.request_heads, c.flags) for c in tick.identities
                  if c.side is Side.CLIENT and c.raw_value == tenant.encode())


def test_a_connection_first_seen_mid_stream_is_adopted_until_it_answers_http(probes):
    """A connection whose connect (or accept) was not seen is tracked from its first request
    head, flagged ADOPTED: that value is never trusted (it may be a WebSocket frame or a body
    that looks like a request).  Once the connection answers with an HTTP response head, the
    requests that follow are ordinary."""
    from tenantwatch.kernel.records import ValueFlag

    http = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"
    assert _adopted_flags(probes, http, "adoptee") == [(1, ValueFlag.ADOPTED),
                                                        (2, ValueFlag.NONE)]
    frames = b"\x81\x05hello"  # a WebSocket text frame: never an HTTP answer
    assert _adopted_flags(probes, frames, "framed") == [(3, ValueFlag.ADOPTED)]


def _h2_frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") \
        + payload


# A server that accepts `n` connections, then waits for "go" before its first read on each (so
# every read is made while it is traced: none was entered before), then reads each once.
READ_ONCE = r"""
import ctypes, socket, sys
ctypes.CDLL(None).prctl(15, b"python3-twsrv", 0, 0, 0)  # PR_SET_NAME
n = int(sys.argv[1])
ls = socket.create_server(("127.0.0.1", 0))
print(ls.getsockname()[1], flush=True)
conns = [ls.accept()[0] for _ in range(n)]
print("accepted", flush=True)
sys.stdin.readline()
for c in conns:
    print(len(c.recv(65536)), flush=True)
"""


def test_a_connection_older_than_the_daemon_is_taken_up_as_http2_only_at_real_frames(probes):
    """An unknown connection whose bytes are HTTP/2 frames (a HEADERS frame, a WINDOW_UPDATE)
    is followed as HTTP/2 mid-stream: its events carry the midstream flag, so user space never
    decodes them.  Bytes that only look binary (an unknown frame type, a TLS record, a frame
    header whose length runs past the bytes) are never taken up."""
    samples = {
        "h2": _h2_frame(1, 0x05, 3, b"\x82\x84\x86\x41\x01a") + _h2_frame(8, 0, 0, b"\0\0\1\0"),
        "unknown type": _h2_frame(0x0A, 0, 0, b"xx"),
        "tls record": b"\x17\x03\x03\x00\x20" + bytes(32),
        "cut": _h2_frame(1, 0x05, 3, b"\x82" * 40)[:20],
    }
    proc = subprocess.Popen([sys.executable, "-c", READ_ONCE, str(len(samples))],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    conns = []
    try:
        port = int(proc.stdout.readline())
        for data in samples.values():
            conns.append(socket.create_connection(("127.0.0.1", port)))
            conns[-1].sendall(data)  # accepted (and sent) before the process is a target
        assert proc.stdout.readline().strip() == "accepted"
        probes.set_targets({proc.pid})
        probes.drain()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        got = [int(proc.stdout.readline()) for _ in samples]
        assert got == [len(d) for d in samples.values()]
        time.sleep(0.1)
        tick = probes.drain()
    finally:
        for s in conns:
            s.close()
        proc.kill()
        proc.wait(5)
        probes.set_targets(set())
    data = [e for e in tick.h2 if e.data]
    assert data and all(e.midstream and e.seq == 0 and e.is_request for e in data), data
    assert b"".join(e.data for e in data) == samples["h2"]
    assert len({e.conn for e in data}) == 1


def _losses_by_value(tick) -> dict[str | None, int]:
    out: dict[str | None, int] = {}
    for c in tick.identities:
        if c.losses:
            key = c.raw_value.decode() if c.raw_value is not None else None
            out[key] = out.get(key, 0) + c.losses
    return out


def test_losses_are_charged_to_the_identity_they_may_have_raised(probes, server):
    """A client that breaks the parser on its own connection (conflicting Content-Length: where
    its body ends is unknown) or overflows its pipeline: the losses are counted by reason and
    charged to that client's own identity, never to a tenant on another connection
    (docs/detection.md, "Completeness")."""
    bad = (b"POST / HTTP/1.1\r\nHost: t\r\nX-Tenant-ID: breaker\r\nContent-Length: 3\r\n"
           b"Content-Length: 4\r\n\r\nabc")
    pipeline = b"".join(_req("piper") for _ in range(20))
    with socket.create_connection(("127.0.0.1", server)) as victim, \
            socket.create_connection(("127.0.0.1", server)) as breaker, \
            socket.create_connection(("127.0.0.1", server)) as piper:
        _exchange(victim, _req("victim"), 1)
        _exchange(breaker, _req("breaker"), 1)
        _exchange(breaker, bad, 1)
        _exchange(piper, pipeline, 20)
        for _ in range(5):
            _exchange(victim, _req("victim"), 1)
    time.sleep(0.1)
    tick = probes.drain()
    assert tick.lost.get("resync", 0) >= 1 and tick.lost.get("pipeline_overflow", 0) >= 1
    losses = _losses_by_value(tick)
    assert losses.get("breaker", 0) >= 1, losses
    assert losses.get("piper", 0) == tick.lost["pipeline_overflow"], losses
    assert "victim" not in losses
    assert _by_value(tick)["victim"][1] == 6


ONE_READ_SERVER = r"""
import ctypes, socket, time
ctypes.CDLL(None).prctl(15, b"python3-twsrv", 0, 0, 0)  # PR_SET_NAME
ls = socket.create_server(("127.0.0.1", 0))
print(ls.getsockname()[1], flush=True)
c, _ = ls.accept()
for _ in range(2):  # the oversized exchange, then one ordinary request
    time.sleep(0.3)  # everything the client sent is in the socket: one recv takes it all
    data = c.recv(1 << 20)
    if not data:
        break
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
time.sleep(1)
"""


def test_a_body_after_a_head_too_large_to_parse_never_becomes_a_request(probes):
    """The attack of the trust issue: a request head larger than one syscall's parse budget
    (32 runs of 2 KiB) whose Content-Length comes after the cut, and a body that is a forged
    request naming another tenant.  The cut request counts under the identity seen before the
    cut; the body never counts, whatever it names; the next real request does."""
    proc = subprocess.Popen([sys.executable, "-c", ONE_READ_SERVER], stdout=subprocess.PIPE,
                            text=True)
    try:
        port = int(proc.stdout.readline())
        probes.set_targets({proc.pid})
        probes.drain()
        forged = b"GET /x HTTP/1.1\r\nHost: t\r\nX-Tenant-ID: victim\r\n\r\n"
        head = (b"POST / HTTP/1.1\r\nHost: t\r\nX-Tenant-ID: attacker\r\nX-Pad: "
                + b"a" * 90_000 + b"\r\nContent-Length: " + str(len(forged)).encode()
                + b"\r\n\r\n")
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(head + forged)
            assert s.recv(100).startswith(b"HTTP/1.1 200")
            s.sendall(_req("after"))
            assert s.recv(100).startswith(b"HTTP/1.1 200")
        time.sleep(0.2)
        tick = probes.drain()
    finally:
        proc.kill()
        proc.wait(5)
        probes.set_targets(set())
    heads = {}
    for c in tick.identities:
        if c.side.value == "server" and c.raw_value is not None:
            heads[c.raw_value.decode()] = heads.get(c.raw_value.decode(), 0) + c.request_heads
    assert tick.lost.get("scan_budget", 0) >= 1, tick.lost  # the cut really happened
    assert heads.get("attacker") == 1 and heads.get("after") == 1, heads
    assert "victim" not in heads, heads
    assert _losses_by_value(tick).get("attacker", 0) >= 1
