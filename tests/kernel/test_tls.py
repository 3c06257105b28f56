"""HTTP inside TLS: uprobes on libssl give the same exact counts as plain HTTP.

The target is test_counts.py's threaded server serving HTTPS (Python's ssl module: OpenSSL's SSL_read_ex and
SSL_write_ex) run as a separate process named "python3-twtls"; its certificate is made here
with the openssl command.  The client is this test process (not traced).
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import require, require_root
from tests.kernel.test_counts import SERVER, _exchange, _req


def make_cert(d: Path) -> tuple[Path, Path]:
    require(shutil.which("openssl") is not None, "no openssl command")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def probes():
    require_root()
    from tenantwatch.kernel.loader import HttpProbes, KernelSource
    from tenantwatch.kernel.records import Side

    p = HttpProbes(
        sources=[KernelSource("x-tenant-id", (Side.SERVER,)),
                 KernelSource("authorization", (Side.SERVER,), token=True)],
        process_names=["python3-twtls"],
        latency_bounds_seconds=(0.001, 0.01, 0.1, 1.0),
        tls=True,
    )
    p.load()
    yield p
    p.close()


@pytest.fixture()
def tls_server(probes, tmp_path):
    cert, key = make_cert(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", SERVER, "python3-twtls", str(cert), str(key)],
                            stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    probes.set_targets({proc.pid})
    probes.drain()
    yield port
    proc.kill()
    proc.wait(5)
    probes.set_targets(set())


def connect(port: int) -> ssl.SSLSocket:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)),
                           server_hostname="localhost")


def by_value(tick) -> dict:
    out: dict = {}
    for c in tick.identities:
        if c.side.value == "server":
            row = out.setdefault(c.raw_value, [0] * 6)
            for i, n in enumerate(c.requests_by_class):
                row[i] += n
    return out


def test_https_requests_are_counted_exactly_per_tenant(probes, tls_server):
    assert probes.probes.get("uprobe:libssl") is True
    with connect(tls_server) as a, connect(tls_server) as b:
        for i in range(23):
            _exchange(a if i % 2 else b, _req("alpha"), 1)
        for _ in range(7):
            _exchange(a, _req("beta", "/missing"), 1)
        _exchange(b, _req("p1") + _req("p2"), 2)  # pipelined in one TLS record
    time.sleep(0.1)
    tick = probes.drain()
    counts = by_value(tick)
    assert counts[b"alpha"] == [0, 23, 0, 0, 0, 0]
    assert counts[b"beta"] == [0, 0, 0, 7, 0, 0]
    assert counts[b"p1"][1] == 1 and counts[b"p2"][1] == 1
    assert not {"resync", "tls_no_fd", "scan_budget"} & set(tick.lost), tick.lost
    # Bytes are plaintext bytes: at least the request heads, never the TLS records' overhead
    # counted twice.
    alpha = next(c for c in tick.identities if c.raw_value == b"alpha")
    assert alpha.rx_bytes == 23 * len(_req("alpha"))


def test_a_bearer_token_inside_tls_arrives_whole(probes, tls_server):
    token = b"Bearer " + b"x" * 1500
    head = b"GET / HTTP/1.1\r\nHost: t\r\nAuthorization: " + token + b"\r\n\r\n"
    with connect(tls_server) as s:
        for _ in range(3):
            _exchange(s, head, 1)
    time.sleep(0.1)
    assert by_value(probes.drain()).get(token, [0] * 6)[1] == 3


def test_this_libssl_is_probed_inside_its_wrappers(probes, tls_server):
    """Debian's OpenSSL: one probe per direction on the internal function (a push, which the
    kernel emulates), not a single-stepped probe on each public function (kernel/ssl_points.py).
    The counts above then come from those probes."""
    tls = probes._tls
    assert tls is not None and tls.processes >= 1
    assert tls.internal_points is True
    points = [p for pts in tls._points.values() for p in pts]
    assert sorted(p.stands_for for p in points) == ["SSL_read+SSL_read_ex",
                                                     "SSL_write+SSL_write_ex"]


def test_the_uprobes_of_an_exited_process_are_closed(probes, tmp_path):
    """Each traced process with libssl gets its own uprobes (5 perf events); when it exits,
    they are detached and their fds closed, also though its /proc entry is gone (nginx reloads
    replace every worker: 10 fds leaked per reload before)."""
    cert, key = make_cert(tmp_path)

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = None
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", SERVER, "python3-twtls", str(cert),
                                 str(key)], stdout=subprocess.PIPE, text=True)
        int(proc.stdout.readline())
        probes.set_targets({proc.pid})
        if before is not None:
            assert fds() >= before + 5  # its uprobes are attached
        proc.kill()
        proc.wait(5)
        proc.stdout.close()
        probes.set_targets(set())  # gone: detached (its maps cannot be read any more)
        if before is None:  # after the first: the uprobe programs are loaded once, and kept
            before = fds()
    assert fds() == before
