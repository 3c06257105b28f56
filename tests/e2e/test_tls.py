"""HTTPS through the real gateway: the daemon sees the plaintext through uprobes on nginx's libssl.

The module's nginx (Debian's, dynamically linked to libssl.so.3) listens on a plain port and on a
`listen ... ssl` port with a self-signed certificate made here with `openssl req -x509`; both have
the same locations, the same tenant map and the same plain-HTTP upstream (the Backend).  Clients:
Python's ssl module on keep-alive connections (`TlsClient`, the raw-socket ground-truth client
over TLS) and, when installed, curl (`--insecure`, several URLs on one reused connection).

Every count is exact, as in test_daemon_traffic: the server side (client -> nginx, inside TLS, by
X-Tenant-ID) against what the clients sent and got back, the client side (nginx -> Backend, plain,
by X-Tenant-Context) against what the Backend received, and both against nginx's access log; no
events lost (resync, tls_no_fd, ...), and `tenantwatch_probe_attached{probe="uprobe:libssl"} 1`.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from harness.client import WireClient
from harness.gateway import Gateway, GatewayError
from tests.conftest import _free_port, require
from tests.e2e.conftest import expected_counts, upstream_label, upstream_view

HOST = "127.0.0.1"
RX = "tenantwatch_http_server_received_bytes_total"


# ---------------------------------------------------------------------------- helpers


def make_cert(d: Path) -> tuple[Path, Path]:
    """A self-signed RSA-2048 certificate for localhost/127.0.0.1: (cert.pem, key.pem)."""
    require(shutil.which("openssl") is not None, "no openssl command")
    d.mkdir(parents=True, exist_ok=True)
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def start_tls_gateway(workdir: Path, upstream_port: int, nginx: str, cert: Path, key: Path,
                      workers: int = 2) -> Gateway:
    """Gateway with a plain and a TLS listener (retried: a free port can be taken)."""
    last: Exception = RuntimeError("no attempt")
    for attempt in range(3):
        gw = Gateway(workdir / f"nginx{attempt}", _free_port(), upstream_port,
                     workers=workers, nginx=nginx, tls_port=_free_port(),
                     ssl_certificate=cert, ssl_certificate_key=key)
        try:
            return gw.start()
        except GatewayError as e:
            gw.stop()
            last = e
    raise last


# After the handshake the client may wait before its first request; 0: the request can reach
# nginx with the client's Finished (test_first_request_sent_with_the_client_finished).
HANDSHAKE_PAUSE_S = 0.0


class TlsClient(WireClient):
    """The ground-truth keep-alive client over TLS (certificate pinned: the test's own)."""

    def __init__(self, host: str, port: int, cafile: Path,
                 pause: float = HANDSHAKE_PAUSE_S, **kw) -> None:
        super().__init__(host, port, **kw)
        self.pause = pause
        self.ctx = ssl.create_default_context(cafile=str(cafile))
        self.ctx.set_alpn_protocols(["http/1.1"])
        self.tls_versions: set[str] = set()

    def connect(self) -> socket.socket:
        if self.sock is None:
            raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s = self.ctx.wrap_socket(raw, server_hostname="localhost")
            s.settimeout(self.timeout)
            self.tls_versions.add(s.version() or "?")
            time.sleep(self.pause)
            self.sock = s
            self._buf.clear()
            self._reused = False
            self.connects += 1
        return self.sock


def log_counts(records: list[dict]) -> Counter:
    """{(tenant_root, status): n} of access-log records."""
    return Counter((r.get("tenant_root"), r.get("status")) for r in records)


def expected_log(results: Counter) -> Counter:
    out: Counter = Counter()
    for (tenant, status), n in results.items():
        out[(upstream_label(tenant), status)] += n
    return out


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory) -> tuple[Path, Path]:
    return make_cert(tmp_path_factory.mktemp("cert"))


@pytest.fixture(scope="module")
def e2e_gateway(tmp_path_factory, e2e_backend, nginx_binary, tls_cert):
    """This module's gateway: the standard one plus a TLS listener (overrides conftest's, so the
    module's `daemon` starts after it)."""
    cert, key = tls_cert
    gw = start_tls_gateway(tmp_path_factory.mktemp("gw"), e2e_backend.port, nginx_binary,
                           cert, key)
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def log_mark(e2e_gateway):
    """Number of access-log records before the test."""
    return len(e2e_gateway.access_log_records())


def new_log_records(gw: Gateway, mark: int, count: int) -> list[dict]:
    return gw.wait_access_log(mark + count)[mark:]


# ---------------------------------------------------------------------------- tests


def test_libssl_uprobes_attached(e2e_gateway, daemon):
    assert "/libssl.so" in Path(f"/proc/{e2e_gateway.worker_pids()[0]}/maps").read_text()
    m = daemon.wait_ticks(1)
    assert m.value("tenantwatch_probe_attached", probe="uprobe:libssl") == 1, \
        sorted(lab["probe"] for lab, v in m.samples("tenantwatch_probe_attached") if v)


def test_tls_keepalive_tenants_exact_both_sides(e2e_gateway, fresh_backend, tally, prefix,
                                                tls_cert, log_mark):
    a, b, c = f"{prefix}a", f"{prefix}b", f"{prefix}c"
    cert, _ = tls_cert
    results: Counter = Counter()
    sent: Counter = Counter()  # plaintext request bytes per X-Tenant-ID value
    with TlsClient(HOST, e2e_gateway.tls_port, cert) as c1, \
            TlsClient(HOST, e2e_gateway.tls_port, cert) as c2:
        for i in range(30):
            cl = c1 if i % 2 else c2
            t = (a, b, c)[i % 3]
            sent[t] += len(cl.build_request(t))
            results[(t, cl.request(t))] += 1
        # a request with a body, a 404 and a 503 from the upstream
        body = b"x" * 3000
        sent[a] += len(c1.build_request(a, "/upload", method="POST", body=body))
        resp = c1.exchange(a, "/upload", method="POST", body=body)
        results[(a, resp.status)] += 1
        sent[b] += len(c2.build_request(b, "/status/404"))
        results[(b, c2.request(b, "/status/404"))] += 1
        sent[c] += len(c2.build_request(c, "/status/503"))
        results[(c, c2.request(c, "/status/503"))] += 1
        # no tenant header; an invalid one (server __invalid__, nginx's map -> "common")
        results[(None, c1.request(None))] += 1
        results[("bad value!", c1.request("bad value!"))] += 1
        # two pipelined heads in one TLS record (one SSL_read: its bytes are charged to the
        # first request's tenant, as for a plain read)
        sent[a] += len(c2.build_request(a, "/")) + len(c2.build_request(b, "/"))
        statuses = c2.pipeline([(a, "/"), (b, "/")])
        results.update({(a, statuses[0]): 1, (b, statuses[1]): 1})
        assert c1.connects == 1 and c2.connects == 1, "keep-alive: one connection each"
        assert c1.tls_versions | c2.tls_versions <= {"TLSv1.2", "TLSv1.3"}
    assert results == Counter({(a, 200): 12, (b, 200): 11, (c, 200): 10, (b, 404): 1,
                               (c, 503): 1, (None, 200): 1, ("bad value!", 200): 1}), results

    expected = expected_counts(results)
    got = tally.settle(expected)
    assert got == expected
    assert upstream_view(got) == +Counter(fresh_backend.received)
    assert tally.lost() == Counter(), tally.lost()
    records = new_log_records(e2e_gateway, log_mark, sum(results.values()))
    assert log_counts(records) == expected_log(results)
    # bytes are plaintext: exactly the request bytes this test sent per tenant, no TLS record
    # overhead, no handshake
    rx = {t: int(tally.last.value(RX, tenant=t) - tally.before.value(RX, tenant=t))
          for t in sent}
    assert rx == dict(sent)


def test_tls_large_heads_split_reads(e2e_gateway, fresh_backend, tally, prefix, tls_cert,
                                     log_mark):
    """Heads larger than nginx's first SSL_read (1 KiB) and than one TLS record (16 KiB): the
    identity before, after and across the read boundaries."""
    cert, _ = tls_cert
    results: Counter = Counter()
    with TlsClient(HOST, e2e_gateway.tls_port, cert) as cl:
        t = f"{prefix}after"
        results[(t, cl.request(t, headers=[("X-Pad", "p" * 6000)]))] += 1
        t = f"{prefix}before"
        results[(t, cl.request(None, headers=[("X-Pad", "q" * 6000), ("X-Tenant-ID", t)]))] += 1
        t = f"{prefix}many"
        pads = [(f"X-Pad-{i}", "r" * 500) for i in range(8)]
        results[(t, cl.request(None, headers=pads[:4] + [("X-Tenant-ID", t)] + pads[4:]))] += 1
        t = f"{prefix}record"  # identity after the first 16 KiB TLS record
        pads = [(f"X-Pad-{i}", "s" * 3000) for i in range(6)]
        results[(t, cl.request(None, headers=pads + [("X-Tenant-ID", t)]))] += 1
        t = f"{prefix}then"
        results[(t, cl.request(t))] += 1
        assert cl.connects == 1
    assert {s for _, s in results} == {200}, results

    got = tally.settle(lambda d: d.get(("client", f"{prefix}then", "2xx"), 0) == 1)
    # the ~18 KB head is over the kernel's scan budget, as in plain HTTP
    # (test_request_head_over_scan_budget_does_not_swallow_next_request): its server side is
    # still exact, the client side may be cut; the other heads are exact on both sides
    expected = expected_counts(results)
    record = f"{prefix}record"
    assert got[("server", record, "2xx")] == 1, (got, tally.lost())
    rest = +Counter({k: n for k, n in got.items() if k[1] != record})
    assert rest == +Counter({k: n for k, n in expected.items() if k[1] != record}), \
        (got, tally.lost())
    assert set(tally.lost()) <= {"scan_budget"}, tally.lost()
    records = new_log_records(e2e_gateway, log_mark, sum(results.values()))
    assert log_counts(records) == expected_log(results)


def test_tls_direct_location_server_side_only(e2e_gateway, fresh_backend, tally, prefix,
                                              tls_cert):
    """/direct is answered by nginx itself: counted on the server side only."""
    cert, _ = tls_cert
    t = f"{prefix}d"
    with TlsClient(HOST, e2e_gateway.tls_port, cert) as cl:
        results = Counter((t, cl.request(t, "/direct")) for _ in range(9))
    assert results == Counter({(t, 200): 9})
    expected = expected_counts(results, proxied=False)
    got = tally.settle(expected)
    assert got == expected
    assert fresh_backend.received == Counter()
    assert tally.lost() == Counter()


def test_tls_and_plain_on_one_gateway(e2e_gateway, fresh_backend, tally, prefix, tls_cert):
    """The same tenants over both listeners at once: counts add up, nothing is counted twice."""
    cert, _ = tls_cert
    a, b = f"{prefix}a", f"{prefix}b"
    results: Counter = Counter()
    with TlsClient(HOST, e2e_gateway.tls_port, cert) as s, \
            WireClient(HOST, e2e_gateway.listen_port) as p:
        for i in range(24):
            t = (a, b)[i % 2]
            results[(t, (s if i % 3 else p).request(t))] += 1
    expected = expected_counts(results)
    got = tally.settle(expected)
    assert got == expected
    assert upstream_view(got) == +Counter(fresh_backend.received)
    assert tally.lost() == Counter()


def test_curl_over_tls_reuses_one_connection(e2e_gateway, fresh_backend, tally, prefix,
                                             log_mark):
    """curl --insecure (its own libssl calls: the untraced client) with keep-alive: several URLs
    on one connection, a POST with a body and a 404.  TLS 1.2: there the client sends its first
    request only after the server's Finished, so it is never read inside nginx's handshake (the
    TLS 1.3 race is test_first_request_sent_with_the_client_finished)."""
    curl = shutil.which("curl")
    require(curl is not None, "no curl command")
    t = f"{prefix}curl"
    base = f"https://127.0.0.1:{e2e_gateway.tls_port}"
    urls = [f"{base}/", f"{base}/a", f"{base}/status/404", f"{base}/b", f"{base}/c"]
    out = [a for u in urls for a in ("-o", "/dev/null", u)]
    r = subprocess.run([curl, "-sS", "--insecure", "--http1.1", "-H", f"X-Tenant-ID: {t}",
                        "-w", "%{http_code} %{num_connects}\\n"] + out,
                       capture_output=True, text=True, timeout=60, check=True)
    lines = [line.split() for line in r.stdout.splitlines()]
    assert [int(code) for code, _ in lines] == [200, 200, 404, 200, 200], r.stdout
    assert sum(int(n) for _, n in lines) == 1, f"curl should reuse one connection: {r.stdout}"
    r = subprocess.run([curl, "-sS", "--insecure", "--http1.1", "-H", f"X-Tenant-ID: {t}",
                        "--data-binary", "@-", "-o", "/dev/null", "-w", "%{http_code}",
                        f"{base}/post"], input="y" * 5000, capture_output=True, text=True,
                       timeout=60, check=True)
    assert r.stdout == "200", r.stdout
    results = Counter({(t, 200): 5, (t, 404): 1})
    expected = expected_counts(results)
    got = tally.settle(expected)
    assert got == expected
    assert upstream_view(got) == +Counter(fresh_backend.received)
    assert tally.lost() == Counter()
    records = new_log_records(e2e_gateway, log_mark, 6)
    assert log_counts(records) == expected_log(results)


def coalesced_request(port: int, cafile: Path, head: bytes) -> bytes:
    """One TLS 1.3 connection whose client Finished and first request leave in ONE segment
    (ssl.MemoryBIO: deterministic, what a fast client does by chance); returns the response."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="localhost")
    with socket.create_connection((HOST, port), timeout=5) as sock:
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(out.read())
                data = sock.recv(65536)
                assert data, "gateway closed during the handshake"
                inc.write(data)
        obj.write(head)
        sock.sendall(out.read())  # client Finished + the request's record together
        got = b""
        while b"\r\n\r\n" not in got:
            try:
                got += obj.read(65536)
            except ssl.SSLWantReadError:
                data = sock.recv(65536)
                assert data, "gateway closed before the response"
                inc.write(data)
                out.read()
        return got


def test_first_request_sent_with_the_client_finished(e2e_gateway, fresh_backend, tally, prefix,
                                                     tls_cert):
    """nginx's SSL_do_handshake reads the client Finished and the first request's record in one
    read(): the first SSL_read makes no syscall.  The fd comes from the SSL_set_fd uprobe."""
    cert, _ = tls_cert
    t = f"{prefix}first"
    head = (f"GET / HTTP/1.1\r\nHost: localhost\r\nX-Tenant-ID: {t}\r\n"
            "Connection: close\r\n\r\n").encode()
    for _ in range(5):
        assert coalesced_request(e2e_gateway.tls_port, cert, head).startswith(b"HTTP/1.1 200")
    expected = expected_counts(Counter({(t, 200): 5}))
    got = tally.settle(expected, timeout=5)
    assert got == expected
    assert tally.lost() == Counter()
