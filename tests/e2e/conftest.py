"""End-to-end tier: the daemon as a user runs it (`tenantwatch run --config FILE`) against a real
nginx proxying to a real Backend.

Fixtures
- `daemon_factory` (module): start more `tenantwatch run` daemons with their own config.
- `daemon` (module): one daemon with the standard config (CONFIG_TEMPLATE) per test module.  Module
  scope, not session: a test module may flood the label set (max_tenants) or kill daemons, and a
  fresh daemon per module keeps the modules independent; the BPF compile costs ~4 s per module.
- `e2e_backend`, `e2e_gateway` (module): RecordingBackend + nginx (2 workers, harness `Gateway`)
  shared by a module's tests.
- `make_gateway` (function): extra nginx gateways (reload, fd reuse), stopped after the test.

Isolation on a shared machine: the gateway runs the Debian nginx through a symlink named
NGINX_COMM (tw-e2e-<pid of pytest>), so its processes' comm is NGINX_COMM and the daemon's
`targets: [{process: ...}]` selects exactly the nginx processes this test run started (other nginx
instances on the host, a benchmark or a concurrent test run, are neither traced nor counted).
Tenant names are unique per test (a prefix), and shared labels (common, __invalid__, __other__)
are compared as deltas.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from typing_extensions import Self

import pytest

from harness import processes
from harness.backend import RecordingBackend
from harness.gateway import Gateway, GatewayError
from harness.metrics import DEFAULT_TENANT, Metrics
from tests.conftest import _free_port, require_nginx, require_root

REPO = Path(__file__).resolve().parents[2]
# The comm of every nginx process this test run starts (<= 15 bytes), unique per run: two test
# runs on one machine must not trace (and count) each other's gateways.
NGINX_COMM = f"tw-e2e-{os.getpid()}"
READY_TIMEOUT = processes.READY_TIMEOUT_S
STOP_TIMEOUT = processes.STOP_TIMEOUT_S

CONFIG_TEMPLATE = """\
listen: "127.0.0.1:{port}"
targets: [{{process: {process}}}]
tenancy:
  sources:
    - {{header: X-Tenant-Context, side: client, trusted: true}}
    - {{header: X-Tenant-ID, side: server}}
{tenancy_extra}"""

def tenantwatch_command() -> list[str]:
    exe = REPO / ".venv" / "bin" / "tenantwatch"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "tenantwatch.cli"]


# ---------------------------------------------------------------------------- metrics

# Metrics (one /metrics scrape: {(sample name, labels): value}) and the labels the tests share
# (RESERVED, SIDES, DEFAULT_TENANT, SHARED) are harness.metrics'.


def delta(after: Mapping, before: Mapping) -> Counter:
    """after - before per key, keeping only non-zero differences (negative ones too)."""
    out: Counter = Counter()
    for k in set(after) | set(before):
        d = after.get(k, 0) - before.get(k, 0)
        if d:
            out[k] = d
    return out


# ---------------------------------------------------------------------------- expectations

NGINX_TENANT_RE = re.compile(r"^[a-zA-Z0-9-]+$")  # the gateway's map (demo/gateway.py)
TW_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")  # tenantwatch's default pattern


def server_label(tenant: str | None) -> str:
    """The label tenantwatch gives a client's X-Tenant-ID value (server side, claimed)."""
    if tenant is None:
        return DEFAULT_TENANT
    return tenant if TW_TENANT_RE.fullmatch(tenant) else "__invalid__"


def upstream_label(tenant: str | None) -> str:
    """The X-Tenant-Context nginx sends upstream for that X-Tenant-ID (client side, trusted)."""
    return tenant if tenant is not None and NGINX_TENANT_RE.fullmatch(tenant) else DEFAULT_TENANT


def status_class(status: int) -> str:
    return "none" if status == 0 else f"{status // 100}xx"


def expected_counts(results: Mapping[tuple[str | None, int], int],
                    proxied: bool = True) -> Counter:
    """{(side, label, class): n} for client-side results {(X-Tenant-ID, status): n}: every
    request on the server side, and (proxied=True) every one on the client side too."""
    out: Counter = Counter()
    for (tenant, status), n in results.items():
        out[("server", server_label(tenant), status_class(status))] += n
        if proxied:
            out[("client", upstream_label(tenant), status_class(status))] += n
    return +out


def upstream_view(table: Mapping[tuple[str, str, str], int]) -> Counter:
    """{X-Tenant-Context: n} of the client side of a table, to compare with
    RecordingBackend.received."""
    out: Counter = Counter()
    for (side, tenant, _cls), n in table.items():
        if side == "client":
            out[tenant] += n
    return +out


class Baseline:
    """Counts of one test: its own tenants (by prefix) and deltas of the shared labels."""

    def __init__(self, daemon: Daemon, prefix: str) -> None:
        self.daemon = daemon
        self.prefix = prefix
        self.before = daemon.metrics()
        self.last: Metrics = self.before
        self.settled = False

    def delta(self, m: Metrics | None = None) -> Counter:
        m = self.last if m is None else m
        return delta(m.table(self.prefix), self.before.table(self.prefix))

    def lost(self) -> Counter:
        return delta(self.last.lost(), self.before.lost())

    def rejected(self) -> Counter:
        return delta(self.last.rejected(), self.before.rejected())

    def settle(self, expected: Mapping | Callable[[Counter], bool],
               timeout: float = 15.0) -> Counter:
        """Wait (bounded) until this test's delta equals `expected` (or the predicate on the
        delta holds), then two more ticks; returns the final delta for the assertion."""
        if callable(expected):
            def pred(m: Metrics) -> bool:
                return expected(self.delta(m))
        else:
            want = +Counter(expected)

            def pred(m: Metrics) -> bool:
                return self.delta(m) == want

        self.last = self.daemon.wait_settled(pred, timeout)
        self.settled = True
        return self.delta()


# ---------------------------------------------------------------------------- the daemon


class Daemon(processes.Daemon):
    """One `tenantwatch run --config FILE` subprocess (harness.processes.Daemon) of this tree, in
    `workdir` (tenantwatch.yaml written from `config_text` at each start, tenantwatch.log), run
    from the repository root without the caller's TENANTWATCH_* variables; a daemon that does not
    come up fails the test with its log."""

    def __init__(self, workdir: Path, port: int, config_text: str) -> None:
        super().__init__(tenantwatch_command(), workdir / "tenantwatch.yaml", port,
                         workdir / "tenantwatch.log", config_text=config_text, cwd=REPO)
        self.workdir = workdir

    @property
    def config_path(self) -> Path:
        return self.config

    @property
    def log_path(self) -> Path:
        return self.log

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTWATCH_")}
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def fail(self, msg: str) -> None:
        pytest.fail(f"{msg}\n--- {self.log_path} ---\n{self.log_text()[-6000:]}", pytrace=False)


def bpftool_ids(kind: str) -> set[int]:
    """ids of every loaded BPF program (kind "prog") or map ("map") on the machine."""
    r = subprocess.run(["bpftool", "--json", kind, "show"], capture_output=True, text=True,
                       timeout=30, check=True)
    return {int(x["id"]) for x in json.loads(r.stdout or "[]")}


def config_text(port: int, process: str = NGINX_COMM, tenancy_extra: str = "") -> str:
    return CONFIG_TEMPLATE.format(port=port, process=process, tenancy_extra=tenancy_extra)


class ThreadGroup:
    """Load generators: `threads` started on enter; on exit `stop` is set and each thread is
    joined for at most `join_seconds`.  Subclasses fill `threads` and watch `stop`."""

    join_seconds = 15.0

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def __enter__(self) -> Self:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(self.join_seconds)


class LoopbackService:
    """A server process a test started (Prometheus, Alertmanager): ready when `/-/ready` on
    `url` answers 200; stopped by pid (SIGTERM, SIGKILL after 10 s)."""

    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        raise NotImplementedError

    def _ready_or_exited(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            return True
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def nginx_binary(tmp_path_factory) -> str:
    """The Debian nginx under the name NGINX_COMM (a symlink: comm comes from the exec'd path)."""
    require_root()
    real = Path(require_nginx()).resolve()
    link = tmp_path_factory.mktemp("bin") / NGINX_COMM
    link.symlink_to(real)
    return str(link)


DaemonFactory = Callable[..., Daemon]


@pytest.fixture(scope="module")
def daemon_factory(tmp_path_factory, request) -> Iterator[DaemonFactory]:
    """make(tenancy_extra="", start=True) -> a started Daemon; all stopped after the module.
    Every daemon stopped here must exit 0 on SIGTERM within STOP_TIMEOUT, and no daemon may
    have logged an error or a traceback ("never an exception", docs/testing.md case 7)."""
    require_root()
    made: list[Daemon] = []
    base = tmp_path_factory.mktemp("tenantwatch")

    def make(tenancy_extra: str = "", start: bool = True, process: str = NGINX_COMM) -> Daemon:
        port = _free_port()
        d = Daemon(base / f"d{len(made)}", port, config_text(port, process, tenancy_extra))
        made.append(d)
        if start:
            d.start()
        return d

    yield make
    problems = []
    for d in made:
        if d.proc is not None and d.proc.poll() is None:
            rc = d.stop()
            if rc != 0:
                problems.append((d, f"did not exit 0 on SIGTERM within {STOP_TIMEOUT}s: {rc!r}"))
        errors = [line for line in d.log_text().splitlines()
                  if line.startswith(("ERROR", "CRITICAL")) or "Traceback" in line]
        if errors:
            problems.append((d, f"logged errors: {errors[:5]}"))
    if problems:
        d, what = problems[0]
        pytest.fail(f"tenantwatch (pid {d.pid}) {what}\n--- {d.log_path} ---\n"
                    f"{d.log_text()[-6000:]}", pytrace=False)


@pytest.fixture(scope="module")
def daemon(daemon_factory, e2e_gateway) -> Daemon:
    """The standard daemon, started after the module's gateway (found by the /proc scan)."""
    return daemon_factory()


@pytest.fixture(scope="module")
def e2e_backend() -> Iterator[RecordingBackend]:
    b = RecordingBackend(port=0).start()
    try:
        yield b
    finally:
        b.stop()


def start_gateway(workdir: Path, backend: RecordingBackend, nginx: str,
                  workers: int = 2) -> Gateway:
    last: Exception = RuntimeError("no attempt")
    for attempt in range(3):  # the free port can be taken between probing and nginx's bind
        gw = Gateway(workdir / f"nginx{attempt}", _free_port(), backend.port,
                     workers=workers, nginx=nginx)
        try:
            return gw.start()
        except GatewayError as e:
            gw.stop()
            last = e
    raise last


@pytest.fixture(scope="module")
def e2e_gateway(tmp_path_factory, e2e_backend, nginx_binary) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path_factory.mktemp("gw"), e2e_backend, nginx_binary)
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def make_gateway(tmp_path, e2e_backend, nginx_binary) -> Iterator[Callable[..., Gateway]]:
    """make(workers=2) -> another nginx (comm NGINX_COMM) on e2e_backend, stopped after."""
    made: list[Gateway] = []

    def make(workers: int = 2) -> Gateway:
        gw = start_gateway(tmp_path / f"gw{len(made)}", e2e_backend, nginx_binary, workers)
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.stop()


@pytest.fixture
def fresh_backend(e2e_backend) -> RecordingBackend:
    """e2e_backend with its received counter cleared for this test."""
    e2e_backend.reset()
    return e2e_backend


@pytest.fixture
def prefix(request) -> str:
    """A tenant-name prefix unique to this test: [a-z0-9-] only, so both nginx's map
    (^[a-zA-Z0-9-]+$) and tenantwatch's default pattern accept it."""
    name = request.node.name.removeprefix("test_").split("[")[0]
    return "".join(c if c.isalnum() else "-" for c in name.lower())[:40] + "-"


@pytest.fixture
def tally(daemon, prefix) -> Iterator[Baseline]:
    """Counts before the test (for deltas) of the module's standard daemon.  A test that ended
    before settling (it failed) leaves two ticks for its late counts, so that they do not land
    in the next test's deltas."""
    b = Baseline(daemon, prefix)
    yield b
    if not b.settled and daemon.proc is not None and daemon.proc.poll() is None:
        daemon.wait_ticks(2)


def nginx_tgids() -> set[int]:
    """Processes whose comm is NGINX_COMM: every nginx these tests started, and only those."""
    out = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/comm") as f:
                if f.read().rstrip("\n") == NGINX_COMM:
                    out.add(int(name))
        except OSError:
            continue
    return out
