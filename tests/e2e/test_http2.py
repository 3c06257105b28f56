"""HTTP/2 and gRPC through a real nginx: h2c, h2 over TLS (ALPN), and grpc_pass.

nginx here has its own small configuration (three listeners) and proxies HTTP/2 requests to the
standard Backend over HTTP/1.1, and gRPC to a grpcio server over h2c (grpc_pass).  Several tenants
are interleaved as concurrent streams on one client connection.  Exact per-tenant counts are
checked on both sides: server side from the HTTP/2 connections the clients opened (the kernel
sends the frames without DATA payloads, tenantwatch/h2 decodes HPACK), client side from nginx's
HTTP/1.1 upstream connections (the kernel's own parser) or its h2c gRPC upstream (tenantwatch/h2
again, with the trusted X-Tenant-Context nginx sets).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections import Counter
from concurrent import futures
from pathlib import Path

import pytest

from tests.conftest import _free_port, require

h2_connection = pytest.importorskip("h2.connection")
h2_config = pytest.importorskip("h2.config")
h2_events = pytest.importorskip("h2.events")

NGINX_CONF = """\
daemon on;
worker_processes 2;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {work}/tmp;
    proxy_temp_path {work}/tmp;
    fastcgi_temp_path {work}/tmp;
    uwsgi_temp_path {work}/tmp;
    scgi_temp_path {work}/tmp;
    map $http_x_tenant_id $tenant_root {{
        default common;
        "~^[a-zA-Z0-9-]+$" $http_x_tenant_id;
    }}
    upstream backend {{ server 127.0.0.1:{backend}; keepalive 8; }}
    server {{
        listen 127.0.0.1:{h2c} http2;
        listen 127.0.0.1:{h2s} ssl http2;
        ssl_certificate {work}/cert.pem;
        ssl_certificate_key {work}/key.pem;
        location / {{
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Tenant-Context $tenant_root;
            proxy_pass http://backend;
        }}
        # the budget test's flood: answered by nginx itself, so that its thousands of streams
        # take no upstream connections (worker_connections would run out, and nginx would
        # drop the cheap tenant's connection too)
        location = /flood {{ return 204; }}
    }}
    server {{
        listen 127.0.0.1:{grpc} http2;
        location / {{
            grpc_set_header X-Tenant-Context $tenant_root;
            grpc_pass grpc://127.0.0.1:{grpc_backend};
        }}
    }}
}}
"""


class Nginx:
    def __init__(self, binary: str, work: Path, backend: int, grpc_backend: int) -> None:
        self.binary, self.work = binary, work
        self.h2c, self.h2s, self.grpc = _free_port(), _free_port(), _free_port()
        (work / "tmp").mkdir(parents=True, exist_ok=True)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=localhost", "-keyout", str(work / "key.pem"),
                        "-out", str(work / "cert.pem")], check=True, capture_output=True)
        (work / "nginx.conf").write_text(NGINX_CONF.format(
            work=work, backend=backend, h2c=self.h2c, h2s=self.h2s, grpc=self.grpc,
            grpc_backend=grpc_backend))

    def start(self) -> None:
        r = subprocess.run([self.binary, "-c", str(self.work / "nginx.conf"), "-p", str(self.work)],
                           capture_output=True, text=True, check=False)
        assert r.returncode == 0, r.stderr
        for port in (self.h2c, self.h2s, self.grpc):
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"nginx is not listening on {port}"
                    time.sleep(0.05)

    def stop(self) -> None:
        pid_file = self.work / "nginx.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text())
            try:
                os.kill(pid, signal.SIGQUIT)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.05)


# ----------------------------------------------------------------------------- gRPC backend

def _grpc_server(port: int):
    grpc = pytest.importorskip("grpc")

    def echo(request: bytes, context) -> bytes:
        return request

    def missing(request: bytes, context) -> bytes:
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")

    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Missing": grpc.unary_unary_rpc_method_handler(missing),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("tw.Test", handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


@pytest.fixture(scope="module")
def gateway(nginx_binary, e2e_backend, tmp_path_factory):
    require(shutil.which("openssl") is not None, "no openssl command")
    grpc_port = _free_port()
    grpc_server = _grpc_server(grpc_port)
    ng = Nginx(nginx_binary, tmp_path_factory.mktemp("nginx-h2"), e2e_backend.port, grpc_port)
    ng.start()
    try:
        yield ng
    finally:
        ng.stop()
        grpc_server.stop(0)


@pytest.fixture(scope="module")
def h2daemon(daemon_factory, gateway):
    return daemon_factory()


# ----------------------------------------------------------------------------- clients

def h2_requests(sock: socket.socket, requests: list[tuple[str, str, bytes]]) -> Counter:
    """All requests as concurrent streams on one connection; {(tenant, status)} of the answers."""
    c = h2_connection.H2Connection(h2_config.H2Configuration(client_side=True))
    c.initiate_connection()
    by_stream = {}
    for tenant, path, body in requests:
        sid = c.get_next_available_stream_id()
        by_stream[sid] = tenant
        headers = [(":method", "POST" if body else "GET"), (":path", path),
                   (":scheme", "https"), (":authority", "localhost"), ("x-tenant-id", tenant),
                   ("user-agent", "tw-h2-test")]
        c.send_headers(sid, headers, end_stream=not body)
        if body:
            c.send_data(sid, body, end_stream=True)
    sock.sendall(c.data_to_send())
    status: dict = {}
    answers: Counter = Counter()
    sock.settimeout(10)
    while sum(answers.values()) < len(requests):
        data = sock.recv(65536)
        assert data, "nginx closed the connection early"
        for ev in c.receive_data(data):
            if isinstance(ev, h2_events.ResponseReceived):
                status[ev.stream_id] = int(dict(ev.headers)[b":status"])
            elif isinstance(ev, h2_events.DataReceived):
                c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2_events.StreamEnded):
                answers[(by_stream[ev.stream_id], status[ev.stream_id])] += 1
        sock.sendall(c.data_to_send())
    c.close_connection()
    sock.sendall(c.data_to_send())
    sock.close()
    return answers


def tls_socket(port: int) -> ssl.SSLSocket:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
    assert s.selected_alpn_protocol() == "h2"
    return s


def workload(prefix: str) -> list[tuple[str, str, bytes]]:
    a, b, g = f"{prefix}alpha", f"{prefix}beta", f"{prefix}gamma"
    reqs = []
    for i in range(6):
        reqs += [(a, "/", b""), (b, "/status/404", b""), (g, "/", b"y" * 3000)]
    return reqs


def server_and_client(m, prefix: str) -> Counter:
    return Counter({(side, t, cls): n for (side, t, cls), n in m.table(prefix, ()).items()})


def expected(prefix: str, n: int) -> Counter:
    a, b, g = f"{prefix}alpha", f"{prefix}beta", f"{prefix}gamma"
    out: Counter = Counter()
    for side in ("server", "client"):
        out[(side, a, "2xx")] += n
        out[(side, b, "4xx")] += n
        out[(side, g, "2xx")] += n
    return out


# ----------------------------------------------------------------------------- tests

@pytest.mark.parametrize("transport", ["h2c", "h2-tls"])
def test_interleaved_tenants_on_one_http2_connection(gateway, h2daemon, e2e_backend, prefix,
                                                     transport):
    prefix = f"{prefix}{transport}-"
    before = h2daemon.metrics()
    if transport == "h2c":
        sock = socket.create_connection(("127.0.0.1", gateway.h2c))
    else:
        sock = tls_socket(gateway.h2s)
    answers = h2_requests(sock, workload(prefix))
    a, b, g = f"{prefix}alpha", f"{prefix}beta", f"{prefix}gamma"
    assert answers == Counter({(a, 200): 6, (b, 404): 6, (g, 200): 6}), answers
    want = expected(prefix, 6)
    m = h2daemon.wait_settled(lambda m: server_and_client(m, prefix) - server_and_client(
        before, prefix) == want, timeout=20)
    got = server_and_client(m, prefix) - server_and_client(before, prefix)
    assert got == want
    lost = m.lost() - before.lost()
    # read_fault and tls_no_fd: an SSL_read returning -1 (WANT_READ) once read as 4 GiB of data.
    assert not {r for r in lost if r.startswith("h2")
                or r in ("resync", "tls_no_fd", "read_fault", "scan_budget")}, lost
    assert m.rejected()["h2_lost"] == before.rejected()["h2_lost"]
    # Bytes per tenant from the frame headers (docs/http2.md): gamma's six 3000-byte bodies were
    # received, though the kernel never sent them to user space; every tenant got answers.
    def server_bytes(metrics, name: str, tenant: str) -> float:
        return metrics.value(f"tenantwatch_http_server_{name}_bytes_total", tenant=tenant)
    assert server_bytes(m, "received", g) - server_bytes(before, "received", g) >= 6 * 3000
    for t in (a, b, g):
        assert server_bytes(m, "sent", t) - server_bytes(before, "sent", t) > 0, t


def test_grpc_through_grpc_pass_maps_grpc_status(gateway, h2daemon, prefix):
    grpc = pytest.importorskip("grpc")
    ok, nf = f"{prefix}ok", f"{prefix}nf"
    before = h2daemon.metrics()
    with grpc.insecure_channel(f"127.0.0.1:{gateway.grpc}") as ch:
        echo = ch.unary_unary("/tw.Test/Echo")
        missing = ch.unary_unary("/tw.Test/Missing")
        for _ in range(5):
            assert echo(b"hi", metadata=(("x-tenant-id", ok),), timeout=10) == b"hi"
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as e:
                missing(b"x", metadata=(("x-tenant-id", nf),), timeout=10)
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
    want = Counter({("server", ok, "2xx"): 5, ("server", nf, "4xx"): 3,
                    ("client", ok, "2xx"): 5, ("client", nf, "4xx"): 3})
    m = h2daemon.wait_settled(lambda m: server_and_client(m, prefix) - server_and_client(
        before, prefix) == want, timeout=20)
    assert server_and_client(m, prefix) - server_and_client(before, prefix) == want


def test_a_connection_opened_before_the_daemon_is_unattributed_not_guessed(
        gateway, daemon_factory, prefix):
    """An HTTP/2 connection the daemon did not see start has no preface and no HPACK state:
    its streams must never be attributed to a guessed tenant.  The kernel takes it up at a frame
    boundary (bpf/http.c tw_looks_like_h2_frames): each later stream is counted once, by its
    request HEADERS frame, under __unattributed__ with reason h2_midstream."""
    sock = socket.create_connection(("127.0.0.1", gateway.h2c))
    c = h2_connection.H2Connection(h2_config.H2Configuration(client_side=True))
    c.initiate_connection()
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, [(":method", "GET"), (":path", "/"), (":scheme", "http"),
                         (":authority", "localhost"), ("x-tenant-id", f"{prefix}early")],
                   end_stream=True)
    sock.sendall(c.data_to_send())
    time.sleep(0.5)
    d = daemon_factory()
    before = d.metrics()
    for _ in range(3):  # more streams, same connection, after the daemon started
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, [(":method", "GET"), (":path", "/"), (":scheme", "http"),
                             (":authority", "localhost"), ("x-tenant-id", f"{prefix}late")],
                       end_stream=True)
        sock.sendall(c.data_to_send())
        time.sleep(0.1)
    m = d.wait_settled(lambda m: m.lost()["h2_midstream"] - before.lost()["h2_midstream"] >= 3,
                       timeout=20)
    sock.close()
    assert m.by_tenant("server", prefix) - before.by_tenant("server", prefix) == Counter()
    assert m.lost()["h2_midstream"] - before.lost()["h2_midstream"] == 3
    unattributed = (m.requests("server", "__unattributed__", "none")
                    - before.requests("server", "__unattributed__", "none"))
    assert unattributed == 3


# ----------------------------------------------------------------------------- the budget

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FLOOD_CONNECTIONS = 4
FLOOD_SECONDS = 6.0
FLOOD_BUDGET_MS = 20


def _frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") \
        + payload


def _flood(port: int, stop: float, sent: list) -> None:
    """One connection of huge, ever-new header blocks (3 x 3000-byte junk values: table churn),
    each split into HEADERS + CONTINUATION; responses read and dropped."""
    from hpack import Encoder

    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(PREFACE + _frame(0x4, 0, 0) + _frame(0x8, 0, 0, (1 << 30).to_bytes(4, "big")))

    def drain() -> None:
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass

    import threading

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    enc, sid, n = Encoder(), 1, 0
    try:
        while time.monotonic() < stop:
            for _ in range(20):
                junk = [(f"x-junk-{k}", os.urandom(1500).hex()) for k in range(3)]
                block = enc.encode([(":method", "GET"), (":path", "/flood"), (":scheme", "http"),
                                    (":authority", "localhost"), ("x-tenant-id", "mallory"),
                                    *junk], huffman=False)
                half = len(block) // 2
                sock.sendall(_frame(0x1, 0x1, sid, block[:half])
                             + _frame(0x9, 0x4, sid, block[half:]))
                sid += 2
                n += 1
            time.sleep(0.02)
    except OSError:
        pass  # nginx may close a connection that misbehaves; the flood goes on elsewhere
    finally:
        sent.append(n)
        sock.close()


def test_a_header_flood_is_shed_over_the_budget_and_a_cheap_tenant_stays_exact(
        gateway, daemon_factory, prefix):
    """capture.h2_budget_ms_per_tick: a flood of huge, churning, CONTINUATION-split header
    blocks on several connections beside a cheap tenant's connection.  The flood's connections
    are shed (h2_budget), the cheap tenant's requests are counted exactly on both sides, and the
    daemon's CPU and memory stay bounded."""
    import threading

    d = daemon_factory(f"capture: {{h2_budget_ms_per_tick: {FLOOD_BUDGET_MS}}}\n")
    before = d.metrics()
    pid = d.pid
    hz = os.sysconf("SC_CLK_TCK")

    def cpu() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / hz

    stop = time.monotonic() + FLOOD_SECONDS
    sent: list = []
    floods = [threading.Thread(target=_flood, args=(gateway.h2c, stop, sent))
              for _ in range(FLOOD_CONNECTIONS)]
    cpu0, t0 = cpu(), time.monotonic()
    for t in floods:
        t.start()
    good = f"{prefix}good"
    answers: Counter = Counter()
    sock = socket.create_connection(("127.0.0.1", gateway.h2c))
    c = h2_connection.H2Connection(h2_config.H2Configuration(client_side=True))
    c.initiate_connection()
    sock.sendall(c.data_to_send())
    sock.settimeout(10)
    requests = 0
    while time.monotonic() < stop:  # one request every 50 ms, each answered before the next
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, [(":method", "GET"), (":path", "/"), (":scheme", "http"),
                             (":authority", "localhost"), ("x-tenant-id", good)],
                       end_stream=True)
        sock.sendall(c.data_to_send())
        requests += 1
        done = False
        while not done:
            data = sock.recv(65536)
            assert data, ("nginx closed the cheap tenant's connection:\n"
                          + (gateway.work / "error.log").read_text()[-2000:])
            for ev in c.receive_data(data):
                if isinstance(ev, h2_events.DataReceived):
                    c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2_events.StreamEnded):
                    answers[good] += 1
                    done = True
            sock.sendall(c.data_to_send())
        time.sleep(0.05)
    for t in floods:
        t.join(30)
    cores = (cpu() - cpu0) / (time.monotonic() - t0)
    rss_mib = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf(
        "SC_PAGE_SIZE") / 2**20
    m = d.wait_settled(lambda m: m.requests("server", good) >= requests
                       and m.requests("client", good) >= requests, timeout=20)
    c.close_connection()
    sock.sendall(c.data_to_send())
    sock.close()
    shed = m.lost()["h2_budget"] - before.lost()["h2_budget"]
    print(f"flood: {sum(sent)} header blocks on {FLOOD_CONNECTIONS} connections in "
          f"{FLOOD_SECONDS:g} s; daemon {cores:.2f} cores, RSS {rss_mib:.0f} MiB; h2_budget "
          f"{shed}; good tenant {requests} requests")
    assert answers[good] == requests
    assert m.requests("server", good) == requests  # decoded (HTTP/2), exact
    assert m.requests("client", good) == requests  # the upstream leg (HTTP/1.1), exact
    assert shed >= 1, "the flood was never shed"
    assert m.requests("server", "mallory") < sum(sent)  # not all of the flood was decoded
    assert cores < 0.75, cores  # the budget (2 % of a core) plus event delivery
    assert rss_mib < 400, rss_mib
