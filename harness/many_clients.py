"""Many keep-alive client connections from one process, for the scale test and bench/scale.py.

    python -m harness.many_clients --port 8080 --connections 12500 --first 0 \\
        --tenants 10000 --source 127.101

opens ``--connections`` connections to ``--host:--port``, each from its own loopback source
address group (``<source>.X.Y``, 4000 connections per address, so that ephemeral ports never
run out), and on each sends ``--requests`` requests one after the other (keep-alive), naming
tenant ``t<NNNNN>`` = (``--first`` + connection index) % ``--tenants`` in X-Tenant-ID.  At most
``--in-flight`` connects are pending at once (within nginx's listen backlog).

Prints one JSON line when every connection has its responses (or failed): ``{"open": ...,
"ok": ..., "failed": ..., "errors": {...}, "seconds": ...}``, then holds the connections open
until a line other than "alive" arrives on stdin (or stdin closes), closes them all and prints
``{"closed": N}``; "alive" prints ``{"alive": N}``, the connections the server has not closed.
The per-tenant requests it sent are in the first line's ``"sent"`` map only with ``--report``.
Nothing here is tenantwatch: it is a load generator, used by tests/e2e/test_scale.py and
bench/scale.py.  An open-file limit below the connections asked for is an error before any
connection is made.
"""

from __future__ import annotations

import argparse
import errno
import json
import resource
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path

# The directory holding harness/: the client processes run `python -m harness.many_clients`
# from there, whatever the caller's working directory.
ROOT = Path(__file__).resolve().parent.parent
CONNECTIONS_PER_ADDRESS = 4000
IP_BIND_ADDRESS_NO_PORT = 24  # linux/in.h: the port is chosen at connect(), per 4-tuple


def tenant_name(index: int, tenants: int) -> str:
    return f"t{index % tenants:05d}"


def source_address(prefix: str, i: int) -> str:
    group = i // CONNECTIONS_PER_ADDRESS
    return f"{prefix}.{group // 250}.{group % 250 + 1}"


class _Conn:
    __slots__ = ("buf", "left", "sock", "state", "tenant")

    def __init__(self, sock: socket.socket, tenant: str, requests: int) -> None:
        self.sock = sock
        self.tenant = tenant
        self.left = requests
        self.buf = b""
        self.state = "connecting"


def _request(path: str, host: str, tenant: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nX-Tenant-ID: {tenant}\r\n"
            f"User-Agent: tenantwatch-many-clients\r\n\r\n").encode()


def _response_done(buf: bytes) -> int:
    """Bytes of the first complete response in buf (Content-Length framing), or 0."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return 0
    length = 0
    for line in buf[:end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    total = end + 4 + length
    return total if len(buf) >= total else 0


def run(args: argparse.Namespace) -> dict:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.connections + 64
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise SystemExit(f"many_clients: {args.connections} connections need {need} open "
                             f"files; the hard limit is {hard} (use more processes)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    sel = selectors.DefaultSelector()
    conns: list[_Conn] = []
    errors: dict[str, int] = {}
    sent: dict[str, int] = {}
    ok = failed = pending = 0
    started = time.monotonic()
    deadline = started + args.timeout
    next_index = 0

    def fail(c: _Conn, why: str) -> None:
        nonlocal failed, pending
        errors[why] = errors.get(why, 0) + 1
        failed += 1
        pending -= 1
        c.state = "failed"
        try:
            sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass

    while (next_index < args.connections or pending) and time.monotonic() < deadline:
        while next_index < args.connections and pending < args.in_flight:
            i = next_index
            next_index += 1
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.bind((source_address(args.source, args.first + i), 0))
            c = _Conn(s, tenant_name(args.first + i, args.tenants), args.requests)
            conns.append(c)
            pending += 1
            err = s.connect_ex((args.host, args.port))
            if err not in (0, errno.EINPROGRESS):
                fail(c, errno.errorcode.get(err, str(err)))
                continue
            sel.register(s, selectors.EVENT_WRITE, c)
        for key, _ in sel.select(timeout=0.05):
            c = key.data
            s = c.sock
            try:
                if c.state == "connecting":
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        fail(c, errno.errorcode.get(err, str(err)))
                        continue
                    s.sendall(_request(args.path, args.host_header, c.tenant))
                    sent[c.tenant] = sent.get(c.tenant, 0) + 1
                    c.state = "reading"
                    sel.modify(s, selectors.EVENT_READ, c)
                    continue
                chunk = s.recv(65536)
                if not chunk:
                    fail(c, "closed")
                    continue
                c.buf += chunk
                n = _response_done(c.buf)
                while n:
                    if not c.buf.startswith(b"HTTP/1.1 200"):
                        errors["status " + c.buf[9:12].decode(errors="replace")] = \
                            errors.get("status " + c.buf[9:12].decode(errors="replace"), 0) + 1
                    c.buf = c.buf[n:]
                    c.left -= 1
                    if c.left == 0:
                        ok += 1
                        pending -= 1
                        c.state = "open"
                        sel.unregister(s)
                        break
                    s.sendall(_request(args.path, args.host_header, c.tenant))
                    sent[c.tenant] = sent.get(c.tenant, 0) + 1
                    n = _response_done(c.buf)
            except OSError as e:
                fail(c, type(e).__name__)
    if pending:
        errors["timeout"] = errors.get("timeout", 0) + pending
        failed += pending
    result = {"open": sum(1 for c in conns if c.state == "open"), "ok": ok, "failed": failed,
              "errors": errors, "seconds": round(time.monotonic() - started, 3)}
    if args.report:
        result["sent"] = sent
    run.conns = conns  # type: ignore[attr-defined]  # held until the close command
    return result


class ClientFleet:
    """``processes`` many_clients processes sharing ``connections`` between them (the open-file
    limit is per process): ``open()`` waits for every process's first line and returns the sums,
    ``close()`` closes every connection and waits for the processes to exit."""

    def __init__(self, port: int, connections: int, tenants: int, processes: int,
                 path: str = "/direct", requests: int = 1, timeout: float = 120.0,
                 python: str = sys.executable) -> None:
        self.port = port
        self.connections = connections
        self.tenants = tenants
        self.processes = processes
        self.path = path
        self.requests = requests
        self.timeout = timeout
        self.python = python
        self.procs: list[subprocess.Popen] = []

    def expected(self) -> dict[str, int]:
        """Requests per tenant label the fleet sends when every connection succeeds."""
        out: dict[str, int] = {}
        for i in range(self.connections):
            t = tenant_name(i, self.tenants)
            out[t] = out.get(t, 0) + self.requests
        return out

    def open(self) -> dict:
        per = -(-self.connections // self.processes)
        for p in range(self.processes):
            first = p * per
            n = min(per, self.connections - first)
            if n <= 0:
                break
            self.procs.append(subprocess.Popen(
                [self.python, "-m", "harness.many_clients", "--port", str(self.port),
                 "--path", self.path, "--connections", str(n), "--first", str(first),
                 "--tenants", str(self.tenants), "--requests", str(self.requests),
                 "--source", f"127.{100 + p}", "--timeout", str(self.timeout)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT))
        total = {"open": 0, "ok": 0, "failed": 0, "errors": {}, "seconds": 0.0}
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"many_clients pid {proc.pid} exited {proc.wait()} early")
            r = json.loads(line)
            for k in ("open", "ok", "failed"):
                total[k] += r[k]
            for k, v in r["errors"].items():
                total["errors"][k] = total["errors"].get(k, 0) + v
            total["seconds"] = max(total["seconds"], r["seconds"])
        return total

    def alive(self) -> int:
        """Connections still open, summed over the processes (the ground truth for a gauge of
        open connections: a server may close idle keep-alive ones)."""
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write("alive\n")
            proc.stdin.flush()
        total = 0
        for proc in self.procs:
            assert proc.stdout is not None
            total += json.loads(proc.stdout.readline())["alive"]
        return total

    def close(self) -> int:
        closed = 0
        for proc in self.procs:
            if proc.poll() is None and proc.stdin is not None:
                try:
                    proc.stdin.write("close\n")
                    proc.stdin.flush()
                except OSError:
                    pass
        for proc in self.procs:
            try:
                out, _ = proc.communicate(timeout=60)
                for line in out.splitlines():
                    if line.startswith('{"closed"'):
                        closed += json.loads(line)["closed"]
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []
        return closed

    def __enter__(self) -> ClientFleet:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        self.procs = []


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.many_clients",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/direct")
    p.add_argument("--host-header", default="gw")
    p.add_argument("--connections", type=int, required=True)
    p.add_argument("--first", type=int, default=0, help="index of this process's first connection")
    p.add_argument("--tenants", type=int, default=10000)
    p.add_argument("--requests", type=int, default=1, help="requests per connection [1]")
    p.add_argument("--source", default="127.100",
                   help="first two octets of the loopback source addresses [127.100]")
    p.add_argument("--in-flight", type=int, default=400, help="pending connects at once [400]")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--report", action="store_true", help="add the requests sent per tenant")
    args = p.parse_args(argv)
    if args.connections < 1 or args.tenants < 1 or args.requests < 1:
        p.error("--connections, --tenants and --requests must be positive")
    print(json.dumps(run(args)), flush=True)
    conns = run.conns  # type: ignore[attr-defined]
    for line in sys.stdin:  # "alive": how many are still open; anything else (or EOF): close
        if line.strip() != "alive":
            break
        print(json.dumps({"alive": alive(conns)}), flush=True)
    for c in conns:
        c.sock.close()
    print(json.dumps({"closed": len(conns)}), flush=True)
    return 0


def alive(conns: list[_Conn]) -> int:
    """Connections answered and not closed by the server since (a server may close idle
    keep-alive connections: nginx does when it runs short of worker_connections)."""
    n = 0
    for c in conns:
        if c.state != "open":
            continue
        try:
            if c.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                c.state = "closed by server"
                continue
        except BlockingIOError:
            pass  # nothing to read: still open
        except OSError:
            c.state = "closed by server"
            continue
        n += 1
    return n


if __name__ == "__main__":
    sys.exit(main())
