"""HTTP/1.1 client on raw sockets: keep-alive, one request at a time.

`Client` is what `tenantwatch demo` sends its traffic with. The tests' ground-truth client is its
subclass `WireClient` (harness/client.py, beside tests/), which adds what only they do on the wire
(the request bytes and the whole response, pipelined heads in one write, heads split across
writes, raw bytes, a reset). A tenant of None means the request carries no tenant header at all.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple, Union

if TYPE_CHECKING:
    from typing_extensions import Self

TENANT_HEADER = "X-Tenant-ID"

HeaderValue = Union[str, bytes]
Headers = Iterable[tuple[str, HeaderValue]]

MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024


class Response(NamedTuple):
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


class ProtocolError(Exception):
    """The server's bytes are not a valid HTTP/1.1 response (or the connection ended early)."""


class _Closed(ProtocolError):
    def __init__(self, got_bytes: bool) -> None:
        super().__init__("connection closed by peer" + (" mid-response" if got_bytes else ""))
        self.got_bytes = got_bytes


def _b(v: HeaderValue) -> bytes:
    return v if isinstance(v, bytes) else v.encode("latin-1")


class Client:
    """One persistent keep-alive connection to host:port (reconnects when the server closed it).

    `timeout` bounds every socket operation. A request that found its reused connection closed
    by the server before any response byte (idle keep-alive close, reload) is resent once on a new
    connection; nothing is resent once a response byte has been seen.
    """

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float = 5.0,
    ) -> None:
        self.host = host
        self.port = int(port)
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self._buf = bytearray()
        self._reused = False

    # ---------------------------------------------------------------- connection

    def connect(self) -> socket.socket:
        if self.sock is None:
            s = socket.create_connection((self.host, self.port), timeout=self.timeout)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.settimeout(self.timeout)
            self.sock = s
            self._buf.clear()
            self._reused = False
        return self.sock

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None
                self._buf.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- building requests

    def _build_request(
        self,
        tenant: str | None,
        path: str = "/",
        headers: Headers = (),
        method: str = "GET",
        body: bytes = b"",
    ) -> bytes:
        lines = [f"{method} {path} HTTP/1.1".encode("latin-1"),
                 f"Host: {self.host}:{self.port}".encode("latin-1")]
        if tenant is not None:
            lines.append(TENANT_HEADER.encode() + b": " + _b(tenant))
        for name, value in headers:
            lines.append(_b(name) + b": " + _b(value))
        if body or method.upper() in ("POST", "PUT", "PATCH"):
            lines.append(b"Content-Length: " + str(len(body)).encode())
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    # ---------------------------------------------------------------- reading responses

    def _fill(self, got_bytes: bool) -> None:
        assert self.sock is not None
        data = self.sock.recv(65536)
        if not data:
            raise _Closed(got_bytes)
        self._buf += data

    def read_response(self, method: str = "GET") -> Response:
        """Read one response (skipping 1xx interim responses) from the connection."""
        self.connect()
        got = bool(self._buf)
        while True:
            while True:
                end = self._buf.find(b"\r\n\r\n")
                if end >= 0:
                    break
                if len(self._buf) > MAX_HEAD:
                    raise ProtocolError("response head too large")
                self._fill(got)
                got = True
            head = bytes(self._buf[:end]).decode("latin-1")
            del self._buf[:end + 4]
            lines = head.split("\r\n")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                raise ProtocolError(f"bad status line {lines[0]!r}")
            status = int(parts[1])
            reason = parts[2] if len(parts) > 2 else ""
            headers = []
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep:
                    raise ProtocolError(f"bad header line {line!r}")
                headers.append((name.strip(), value.strip()))
            if 100 <= status < 200 and status != 101:
                continue
            break
        resp = Response(status, reason, headers, b"")
        te = (resp.header("Transfer-Encoding") or "").lower()
        clen = resp.header("Content-Length")
        to_close = False
        if method.upper() == "HEAD" or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif "chunked" in te:
            body = self._read_chunked()
        elif clen is not None:
            body = self._read_exact(int(clen))
        else:
            body = self._read_to_close()
            to_close = True
        resp = resp._replace(body=body)
        if to_close or "close" in (resp.header("Connection") or "").lower():
            self.close()
        return resp

    def _read_exact(self, n: int) -> bytes:
        if n > MAX_BODY:
            raise ProtocolError("response body too large")
        while len(self._buf) < n:
            self._fill(True)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def _read_line(self) -> bytes:
        while True:
            i = self._buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self._buf[:i])
                del self._buf[:i + 2]
                return line
            if len(self._buf) > MAX_HEAD:
                raise ProtocolError("chunk line too long")
            self._fill(True)

    def _read_chunked(self) -> bytes:
        out = bytearray()
        while True:
            line = self._read_line()
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size {line!r}") from None
            if size == 0:
                while self._read_line():
                    pass  # trailers up to the empty line
                return bytes(out)
            if len(out) + size > MAX_BODY:
                raise ProtocolError("response body too large")
            out += self._read_exact(size)
            if self._read_line():
                raise ProtocolError("missing CRLF after chunk")

    def _read_to_close(self) -> bytes:
        try:
            while len(self._buf) <= MAX_BODY:
                self._fill(True)
        except _Closed:
            pass
        data = bytes(self._buf)
        self._buf.clear()
        return data

    # ---------------------------------------------------------------- sending

    def _exchange(self, send, method: str = "GET") -> Response:
        """send(sock) then read one response; resend once on a reused connection that the server
        had closed before sending any byte back."""
        for attempt in (0, 1):
            sock = self.connect()
            reused = self._reused
            try:
                send(sock)
                resp = self.read_response(method)
                self._reused = self.sock is not None
                return resp
            except (_Closed, ConnectionResetError, BrokenPipeError) as e:
                self.close()
                got = isinstance(e, _Closed) and e.got_bytes
                if attempt == 0 and reused and not got:
                    continue
                raise
            except BaseException:
                self.close()
                raise
        raise AssertionError("unreachable")

    def request(
        self,
        tenant: str | None,
        path: str = "/",
        headers: Headers = (),
        method: str = "GET",
        body: bytes = b"",
    ) -> int:
        """One request on the keep-alive connection; returns the status code."""
        data = self._build_request(tenant, path, headers, method, body)
        return self._exchange(lambda s: s.sendall(data), method).status
