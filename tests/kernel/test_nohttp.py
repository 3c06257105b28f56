"""Fds that carry no HTTP (an access log) stop at syscall entry, for one tick, per direction.

A traced process writes lines to a log file: after the first write the fd is marked in
tw_nohttp (its writes then cost a bitmap test at entry, not an exit that looks at the bytes).
The marks must never hide HTTP for longer than that tick:

- a connection older than the daemon whose first bytes seen are a body is marked too; a
  request on it in the same tick is not seen (docs/limits.md), and the first one after the
  tick is adopted and counted;
- the log file closed, a new connection on the same fd number is followed from its connect;
- a marked read direction leaves the fd's writes alone.
"""

from __future__ import annotations

import ctypes as ct
import os
import socket
import subprocess
import sys
import tempfile
import threading

from tests.kernel.test_counts import _answer_forever

# Steps on stdin; the process prints each fd it is told about.
CLIENT = r"""
import ctypes, os, socket, sys
ctypes.CDLL(None).prctl(15, b"python3-twsrv", 0, 0, 0)  # PR_SET_NAME: a target once listed
port, path = int(sys.argv[1]), sys.argv[2]
old = socket.create_connection(("127.0.0.1", port))  # before it is traced: adoption's path
print("connected", flush=True)
req = b"GET / HTTP/1.1\r\nHost: t\r\nX-Tenant-Context: %s\r\n\r\n"
log = None
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "log":  # three access-log lines
        log = log or os.open(path, os.O_WRONLY | os.O_APPEND)
        for _ in range(3):
            os.write(log, b'127.0.0.1 - - "GET / HTTP/1.1" 200 3\n')
        print(log, flush=True)
    elif cmd[0] == "body":  # the middle of a request body on the old connection
        old.sendall(b"0123456789abcdef" * 4)
        assert old.recv(4096)  # the test's listener answers whatever it reads
        print(old.fileno(), flush=True)
    elif cmd[0] == "req":  # one request and its response on the old connection
        old.sendall(req % cmd[1].encode())
        assert old.recv(4096)
        print(old.fileno(), flush=True)
    elif cmd[0] == "reuse":  # the log closed; a new connection gets its fd number
        os.close(log)
        s = socket.socket()
        assert s.fileno() == log, (s.fileno(), log)
        s.connect(("127.0.0.1", port))
        for _ in range(2):
            s.sendall(req % cmd[1].encode())
            assert s.recv(4096)
        print(s.fileno(), flush=True)
    elif cmd[0] == "quit":
        break
old.shutdown(socket.SHUT_WR)
old.recv(1)
"""

REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"


def _marked(probes, tgid: int, fd: int, is_write: int) -> bool:
    """The fd's bit in tw_nohttp, for the tick the probes write now."""
    table = probes._bpf[b"tw_nohttp"]
    m = table[ct.c_int(tgid & (len(table) - 1))]  # TW_FILE_SLOTS slots
    if m.tgid != tgid or m.gen != probes._ctl.active:
        return False
    words = len(m.bits) // 2  # TW_FILE_FDS / 64 a direction
    word = m.bits[is_write * words + fd // 64]
    return bool((word >> (fd % 64)) & 1)


def _client_counts(tick, tenant: bytes) -> int:
    from tenantwatch.kernel.records import Side

    return sum(c.request_heads for c in tick.identities
               if c.side is Side.CLIENT and c.raw_value == tenant)


def test_a_log_fd_is_marked_and_never_hides_a_connection_past_its_tick(probes):
    listener = socket.create_server(("127.0.0.1", 0))
    for _ in range(2):
        threading.Thread(target=_answer_forever, args=(listener, REPLY), daemon=True).start()
    fd_log, path = tempfile.mkstemp(prefix="tw-access-")
    os.close(fd_log)
    cli = subprocess.Popen([sys.executable, "-c", CLIENT, str(listener.getsockname()[1]), path],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def step(cmd: str) -> int:
        cli.stdin.write(cmd + "\n")
        cli.stdin.flush()
        return int(cli.stdout.readline())

    try:
        assert cli.stdout.readline().strip() == "connected"
        probes.set_targets({cli.pid})
        probes.drain()

        log = step("log")
        assert _marked(probes, cli.pid, log, 1)
        assert not _marked(probes, cli.pid, log, 0)
        assert os.path.getsize(path) > 0

        # The old connection: a body first (marked), then a request in the same tick (not
        # seen), then, after a tick, a request that is adopted and counted.
        old = step("body")
        assert _marked(probes, cli.pid, old, 1)
        step("req hidden")
        tick = probes.drain()
        assert _client_counts(tick, b"hidden") == 0
        assert not _marked(probes, cli.pid, old, 1)  # a new tick: nothing is marked
        step("req seen")
        step("req seen")
        tick = probes.drain()
        assert _client_counts(tick, b"seen") == 2

        # The log again (marked in this tick), then its fd number reused by a connection.
        assert step("log") == log and _marked(probes, cli.pid, log, 1)
        assert step("reuse again") == log
        assert not _marked(probes, cli.pid, log, 1)
        tick = probes.drain()
        assert _client_counts(tick, b"again") == 2
        assert sum(tick.lost.values()) == 0
    finally:
        try:
            cli.stdin.write("quit\n")
            cli.stdin.close()
            cli.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            cli.kill()
            cli.wait(5)
        probes.set_targets(set())
        listener.close()
        os.unlink(path)
