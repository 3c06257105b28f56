"""Processes and endpoints of the tests and benchmarks: the daemon as a child process (`Daemon`:
`tenantwatch run --config CFG`, ready on /readyz, read through /metrics and its API, stopped by its
pid), a free loopback port, a GET, and a process's CPU time from /proc."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from harness.bench import BenchError
from harness.metrics import Counts, Metrics

if TYPE_CHECKING:
    from typing_extensions import Self

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
    """`tenantwatch run --config CONFIG` as a child process; only its pid is ever signalled.

    `binary` is the tenantwatch command (a path, or an argv such as [python, -m, tenantwatch.cli]);
    `config` the file it reads, written from `config_text` at every start() when that is set;
    `log` takes its stdout and stderr (appended, a line `=== start HH:MM:SS` before each start).
    `cwd` is its working directory and `environment()` its environment (this one's by default).

    A daemon that exits before it is ready, or is not ready in time, is a `fail()`: BenchError with
    the log's tail here; the end-to-end tests' subclass (tests/e2e/conftest.py) fails the test.
    """

    def __init__(self, binary: str | Sequence[str], config: Path, port: int, log: Path, *,
                 config_text: str | None = None, cwd: Path | None = None) -> None:
        self.binary = binary
        self.config = config
        self.port = port
        self.log = log
        self.config_text = config_text
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self.returncodes: list[int] = []  # of every stop() and kill() that ended it

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def command(self) -> list[str]:
        binary = [self.binary] if isinstance(self.binary, str) else list(self.binary)
        return binary + ["run", "--config", str(self.config)]

    def environment(self) -> dict[str, str] | None:
        """The daemon's environment (None: this process's)."""
        return None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def fail(self, msg: str) -> None:
        raise BenchError(f"{msg}:\n{self.log_tail()}")

    # -- lifecycle

    def start(self, ready_timeout: float = READY_TIMEOUT_S, wait: bool = True) -> Self:
        """Start the daemon; with `wait` (the default) until /readyz answers 200."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        if self.config_text is not None:
            self.config.parent.mkdir(parents=True, exist_ok=True)
            self.config.write_text(self.config_text)
        with open(self.log, "ab") as log:
            log.write(f"=== start {time.strftime('%H:%M:%S')}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self.environment(), cwd=None if self.cwd is None else str(self.cwd),
            )
        if wait:
            self.wait_ready(ready_timeout)
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                self.fail(f"tenantwatch exited with {rc} before it was ready")
            try:
                status, _ = self.get("/readyz", timeout=1.0)
                if status == 200:
                    return
            except OSError:
                pass  # not listening yet
            time.sleep(0.1)
        self.fail(f"tenantwatch not ready on {self.url} within {timeout:g}s")

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, wait up to `timeout`, SIGKILL if still running. Returns the exit code of the
        SIGTERM (None when it had to be killed, or when nothing was running). Idempotent."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"  daemon pid {self.proc.pid} ignored SIGTERM for {timeout:g}s; SIGKILL",
                  file=sys.stderr)
            self.kill()
            return None
        self.returncodes.append(rc)
        return rc

    def kill(self) -> int:
        """SIGKILL (only our own child, by its pid) and reap it."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        rc = self.proc.wait(timeout=10)
        self.returncodes.append(rc)
        return rc

    def cpu_ticks(self) -> int:
        assert self.proc is not None
        return proc_cpu_ticks(self.proc.pid)

    # -- HTTP

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get_json(self, path: str) -> tuple[int, Any]:
        status, body = self.get(path)
        return status, json.loads(body)

    def metrics(self) -> Metrics:
        status, body = self.get("/metrics")
        assert status == 200, body
        return Metrics.parse(body.decode())

    def requests(self, side: str, tenant: str | None = None,
                 status_class: str | None = None) -> int:
        return self.metrics().requests(side, tenant, status_class)

    def tenants_json(self) -> dict:
        status, doc = self.get_json("/api/v1/tenants")
        assert status == 200, doc
        return doc

    def healthz(self) -> dict:
        _, doc = self.get_json("/healthz")
        return doc

    # -- the benchmarks' counters

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

    # -- waiting for the tick loop (the tests)

    def wait_ticks(self, n: int = 2, timeout: float = 15.0) -> Metrics:
        """Wait until `n` more ticks completed: every kernel count made before this call was then
        drained (the drain of the 2nd tick after a read starts after that read)."""
        start = self.metrics().ticks
        deadline = time.monotonic() + timeout
        while True:
            m = self.metrics()
            if m.ticks >= start + n or time.monotonic() >= deadline:
                return m
            time.sleep(0.1)

    def wait_settled(
        self,
        expected: Callable[[Metrics], bool] | Mapping | None = None,
        timeout: float = 15.0,
        view: Callable[[Metrics], Mapping] | None = None,
    ) -> Metrics:
        """Poll /metrics (bounded by `timeout`) until `expected` holds -- a predicate on Metrics,
        or a mapping compared with view(metrics), by default the whole table {(side, tenant,
        status_class): requests} -- then wait two more ticks so that nothing counted late is
        missed, and return that last scrape.  The caller asserts on it (a
        timeout is not an error here, so the assertion shows the difference)."""
        if expected is None:
            return self.wait_ticks(2, timeout)
        if callable(expected):
            pred = expected
        else:
            see = view or (lambda m: m.table(""))  # every (side, tenant, status_class)
            want = +Counter(expected)

            def pred(m: Metrics) -> bool:
                return +Counter(see(m)) == want

        deadline = time.monotonic() + timeout
        while True:
            m = self.metrics()
            if pred(m) or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        return self.wait_ticks(2, timeout=max(3.0, deadline - time.monotonic()))

    # -- BPF objects owned by the process

    def bpf_ids(self) -> dict[str, set[int]]:
        """{"prog": ids, "map": ids} of the BPF objects the daemon holds fds to."""
        out: dict[str, set[int]] = {"prog": set(), "map": set()}
        fdinfo = Path(f"/proc/{self.pid}/fdinfo")
        for entry in fdinfo.iterdir():
            try:
                text = entry.read_text()
            except OSError:
                continue
            for line in text.splitlines():
                key, _, value = line.partition(":")
                if key in ("prog_id", "map_id"):
                    out[key[:-3]].add(int(value))
        return out


def default_tenantwatch() -> str | None:
    cand = REPO / ".venv" / "bin" / "tenantwatch"
    if os.access(cand, os.X_OK):
        return str(cand)
    return shutil.which("tenantwatch")
