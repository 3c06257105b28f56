"""Processes and endpoints of the benchmarks: the daemon as a child process (`Daemon`:
`tenantwatch run --config CFG`, ready on /readyz, stopped by its pid), a free loopback port, a GET,
and a process's CPU time from /proc."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from harness.bench import BenchError
from harness.metrics import Counts

REPO = Path(__file__).resolve().parent.parent

READY_TIMEOUT_S = 60.0  # BPF compile is ~4 s on this VM class; leave room for a slow, busy box
STOP_TIMEOUT_S = 15.0  # SIGTERM -> exit (detach probes, final flush), then SIGKILL
METRICS_SETTLE_S = 10.0  # after wrk, wait at most this long for the daemon's counters to settle
METRICS_POLL_S = 0.5


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_ticks(pid: int) -> int:
    """utime + stime of pid (all its threads), in clock ticks."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rfind(b")") + 2:].split()  # comm may contain spaces: split after ')'
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5), 0-based after comm


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, ""


class Daemon:
    """`tenantwatch run --config CFG` as a child process; only this pid is ever signalled."""

    def __init__(self, binary: str, config: Path, port: int, log: Path) -> None:
        self.binary = binary
        self.config = config
        self.port = port
        self.log = log
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "run", "--config", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                raise BenchError(f"daemon exited {rc} before /readyz said 200:\n{self.log_tail()}")
            try:
                if http_get(self.url + "/readyz", timeout=1.0)[0] == 200:
                    return
            except OSError:
                pass  # not listening yet
            time.sleep(0.2)
        raise BenchError(f"daemon not ready within {READY_TIMEOUT_S:g}s:\n{self.log_tail()}")

    def counts(self) -> Counts:
        status, body = http_get(self.url + "/metrics", timeout=5.0)
        if status != 200:
            raise BenchError(f"GET /metrics -> {status}")
        return Counts.from_metrics(body)

    def settled_counts(self, at_least: int) -> Counts:
        """Counters after the run: the daemon reads the kernel once per tick, so poll until the
        count reaches `at_least` and stops moving across a tick (bounded)."""
        deadline = time.monotonic() + METRICS_SETTLE_S
        last = self.counts()
        while time.monotonic() < deadline:
            time.sleep(METRICS_POLL_S)
            now = self.counts()
            if now.server >= at_least and now.server == last.server and now.ticks > last.ticks:
                return now
            last = now
        return last

    def cpu_ticks(self) -> int:
        assert self.proc is not None
        return proc_cpu_ticks(self.proc.pid)

    def stop(self) -> int | None:
        """SIGTERM, wait (bounded), SIGKILL. Idempotent; returns the exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                print(f"  daemon pid {proc.pid} ignored SIGTERM for {STOP_TIMEOUT_S:g}s; SIGKILL",
                      file=sys.stderr)
                proc.kill()
                return proc.wait(timeout=STOP_TIMEOUT_S)
        return proc.returncode


def default_tenantwatch() -> str | None:
    cand = REPO / ".venv" / "bin" / "tenantwatch"
    if os.access(cand, os.X_OK):
        return str(cand)
    return shutil.which("tenantwatch")
