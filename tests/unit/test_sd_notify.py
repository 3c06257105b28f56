"""sd_notify and the daemon's systemd lifecycle, against a real AF_UNIX datagram socket bound as
$NOTIFY_SOCKET (what systemd does): READY=1 after the probes and the HTTP endpoint, WATCHDOG=1 at
least every WATCHDOG_USEC/2 (also when a tick is longer), RELOADING=1 ... READY=1 around a SIGHUP
reload (a bad file keeps the running config), STOPPING=1 on the way out.

The BPF probes need root and a kernel, so FakeProbes stands in for kernel.loader.HttpProbes; the
HTTP endpoint is the real ApiServer on a free loopback port.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenantwatch.config import load_config
from tenantwatch.daemon import Daemon
from tenantwatch.kernel.records import KernelTick
from tenantwatch.logs import JsonFormatter
from tenantwatch.systemd import sd_notify, watchdog_interval
from tests.conftest import _free_port

CONFIG = """\
listen: "127.0.0.1:{port}"
log_level: {level}
targets: [{{process: tw-unit-none}}]
tenancy:
  sources:
    - {{header: X-Tenant-ID, side: server}}
capture:
  tick_seconds: {tick}
"""


class NotifySocket:
    """A bound AF_UNIX SOCK_DGRAM socket, as systemd's $NOTIFY_SOCKET."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)

    def pending(self) -> list[str]:
        """Every datagram sent so far (sends are synchronous: nothing is in flight)."""
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                out.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            return out
        finally:
            self.sock.setblocking(True)

    def close(self) -> None:
        self.sock.close()


def fields(messages: list[str]) -> list[tuple[str, str]]:
    """[(KEY, value)] of every line of every datagram, in order."""
    return [tuple(line.split("=", 1)) for m in messages for line in m.splitlines()]


@pytest.fixture
def notify(monkeypatch) -> Iterator[NotifySocket]:
    # AF_UNIX paths are limited to 108 bytes: a short directory, not tmp_path.
    d = tempfile.mkdtemp(prefix="tw-notify-")
    s = NotifySocket(os.path.join(d, "notify.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", s.path)
    for var in ("WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(var, raising=False)
    yield s
    s.close()
    os.unlink(s.path)
    os.rmdir(d)


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Restore the root logger's level after a test that reloads log_level."""
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


# ---------------------------------------------------------------- sd_notify itself


def test_sd_notify_sends_one_datagram(notify):
    assert sd_notify("READY=1\nSTATUS=up") is True
    assert notify.pending() == ["READY=1\nSTATUS=up"]


def test_sd_notify_abstract_socket(monkeypatch):
    name = f"tw-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sd_notify("WATCHDOG=1") is True
        assert s.recv(100) == b"WATCHDOG=1"


def test_sd_notify_without_notify_socket_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False


def test_sd_notify_to_a_missing_socket_warns_and_goes_on(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    with caplog.at_level(logging.WARNING, logger="tenantwatch.daemon"):
        assert sd_notify("READY=1") is False
    assert "sd_notify" in caplog.text


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}, 1.0),
    ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
])
def test_watchdog_interval_is_half_of_watchdog_usec(env, expected):
    assert watchdog_interval(env) == expected


# ---------------------------------------------------------------- the daemon's lifecycle


class FakeProbes:
    """Stands in for kernel.loader.HttpProbes (BPF needs root): records calls, drains nothing."""

    drain_path = "fake"

    def __init__(self, on_load=None) -> None:
        self.on_load = on_load
        self.loaded = False
        self.closed = False
        self.drains = 0
        self.probes: dict[str, bool] = {}

    def load(self) -> None:
        if self.on_load:
            self.on_load()
        self.loaded = True
        self.probes = {"syscalls:sys_enter_read": True, "syscalls:sys_exit_read": True}

    def set_targets(self, tgids):
        return set(), set()

    def targets(self) -> set[int]:
        return set()

    def forget_connections(self, live) -> int:
        return 0

    def drain(self) -> KernelTick:
        self.drains += 1
        return KernelTick(identities=(), lost={}, targets=0, probes=dict(self.probes),
                          monotonic_ns=time.monotonic_ns())

    def poll_h2(self) -> tuple:
        return ()

    def print_bpf(self) -> str:
        return "/* fake */"

    def close(self) -> None:
        self.closed = True
        self.loaded = False


def test_the_fakes_and_the_real_probes_implement_the_kernel_protocol():
    from tenantwatch.kernel.interface import KernelProbes
    from tenantwatch.kernel.loader import HttpProbes
    assert isinstance(FakeProbes(), KernelProbes)
    # constructing the real one needs no root (load() does)
    real = HttpProbes(sources=[], process_names=["nginx"], latency_bounds_seconds=[0.1])
    assert isinstance(real, KernelProbes)
    assert not isinstance(object(), KernelProbes)


def make_daemon(tmp_path: Path, tick: float = 1.0, level: str = "info",
                probes: FakeProbes | None = None) -> Daemon:
    path = tmp_path / "tenantwatch.yaml"
    path.write_text(CONFIG.format(port=_free_port(), level=level, tick=tick))
    return Daemon(load_config(str(path), env={}), config_path=str(path),
                  probes=probes or FakeProbes())


def readyz(d: Daemon) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{d.api.port}/readyz", timeout=5) as r:
        return r.status


def test_ready_only_after_the_probes_and_the_http_endpoint(tmp_path, notify):
    seen = {}

    def on_load():
        seen["at_load"] = notify.pending()

    d = make_daemon(tmp_path, probes=FakeProbes(on_load))

    real_start = d.api.start

    def api_start():
        seen["before_listen"] = notify.pending()
        real_start()

    d.api.start = api_start
    try:
        d.start()
        sent = notify.pending()
        assert seen == {"at_load": [], "before_listen": []}
        assert fields(sent)[0] == ("READY", "1")
        status = dict(fields(sent))["STATUS"]
        assert "2/2 probes attached" in status and f":{d.api.port}" in status
        assert readyz(d) == 200  # it was listening before READY=1 was sent
    finally:
        d.shutdown()
    assert fields(notify.pending())[0] == ("STOPPING", "1")
    assert d.probes.closed


def test_watchdog_pings_when_the_tick_is_longer_than_half_the_watchdog(tmp_path, notify,
                                                                      monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # ping every 0.05 s; ticks every 30 s
    d = make_daemon(tmp_path, tick=30)
    d.start()
    notify.pending()
    loop = threading.Thread(target=d.loop)
    loop.start()
    try:
        deadline = time.monotonic() + 10
        pings = 0
        while pings < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
            pings += sum(1 for k, v in fields(notify.pending()) if (k, v) == ("WATCHDOG", "1"))
    finally:
        d.stop_event.set()
        loop.join(10)
        d.shutdown()
    assert not loop.is_alive()
    assert pings >= 3
    assert d._ticks == 0  # the pings did not come from ticks


def test_every_tick_pings_the_watchdog_and_updates_status(tmp_path, notify):
    d = make_daemon(tmp_path, tick=0.1)
    d.start()
    notify.pending()
    loop = threading.Thread(target=d.loop)
    loop.start()
    try:
        deadline = time.monotonic() + 10
        while d._ticks < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        d.stop_event.set()
        loop.join(10)
        d.shutdown()
    sent = fields(notify.pending())
    assert sent.count(("WATCHDOG", "1")) >= 2
    assert d.probes.drains >= 3  # start + 2 ticks + the final drain


def test_reload_applies_the_log_level_and_wraps_it_in_reloading_ready(tmp_path, notify, caplog,
                                                                     root_logging):
    d = make_daemon(tmp_path, level="info")
    logging.getLogger().setLevel(logging.INFO)
    path = Path(d.config_path)
    path.write_text(path.read_text().replace("log_level: info", "log_level: debug"))
    with caplog.at_level(logging.INFO, logger="tenantwatch.daemon"):
        d.reload()
    assert logging.getLogger().level == logging.DEBUG
    assert d.config.log_level == "debug"
    assert "reload: applied log_level=debug" in caplog.text
    sent = fields(notify.pending())
    assert [k for k, _ in sent if k in ("RELOADING", "READY")] == ["RELOADING", "READY"]
    assert "restart" not in dict(sent)["STATUS"]


def test_reload_switches_the_log_format_of_the_stderr_handler(tmp_path, notify, root_logging):
    d = make_daemon(tmp_path)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        Path(d.config_path).write_text(Path(d.config_path).read_text() + "log_format: json\n")
        d.reload()
        assert isinstance(handler.formatter, JsonFormatter)
        assert d.config.log_format == "json"
    finally:
        root.removeHandler(handler)


def test_reload_names_the_keys_that_need_a_restart(tmp_path, notify, caplog, root_logging):
    d = make_daemon(tmp_path)
    before = d.config
    text = Path(d.config_path).read_text()
    Path(d.config_path).write_text(
        text.replace("127.0.0.1:", "127.0.0.2:").replace("tw-unit-none", "tw-other"))
    with caplog.at_level(logging.INFO, logger="tenantwatch.daemon"):
        d.reload()
    assert d.config == before  # nothing of that can change live
    assert "listen, targets changed; restart tenantwatch to apply" in caplog.text
    status = dict(fields(notify.pending()))["STATUS"]
    assert "restart needed to apply listen, targets" in status
    # the same file again: still pending, still said
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tenantwatch.daemon"):
        d.reload()
    assert "listen, targets changed" in caplog.text


def test_a_bad_reload_keeps_the_running_config_and_says_why(tmp_path, notify, caplog,
                                                             root_logging):
    d = make_daemon(tmp_path)
    before = d.config
    Path(d.config_path).write_text(Path(d.config_path).read_text() + "bogus_key: 1\n")
    with caplog.at_level(logging.INFO, logger="tenantwatch.daemon"):
        d.reload()
    assert d.config is before
    rejected = [r for r in caplog.records if "reload rejected" in r.getMessage()]
    assert rejected and rejected[0].levelno == logging.ERROR
    assert "bogus_key" in rejected[0].getMessage()
    sent = fields(notify.pending())
    assert [k for k, _ in sent if k in ("RELOADING", "READY")] == ["RELOADING", "READY"]
    assert "last reload rejected" in dict(sent)["STATUS"]
    # a good file again clears the note
    Path(d.config_path).write_text(CONFIG.format(port=before.listen_port, level="info", tick=1.0))
    d.reload()
    assert "rejected" not in dict(fields(notify.pending()))["STATUS"]


def test_unchanged_reload_says_so(tmp_path, notify, caplog):
    d = make_daemon(tmp_path)
    with caplog.at_level(logging.INFO, logger="tenantwatch.daemon"):
        d.reload()
    assert "reload: configuration unchanged" in caplog.text


def test_sighup_reloads_at_once_and_sigterm_stops(tmp_path, notify, caplog, root_logging):
    """run() in the main thread (signal handlers can only be installed there), real signals:
    with a 60 s tick, a SIGHUP handled at the next tick would be 60 s late."""
    d = make_daemon(tmp_path, tick=60)
    saved = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
    got: list[str] = []

    def driver():
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and ("READY", "1") not in fields(got):
            got.extend(notify.pending())
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGHUP)
        while time.monotonic() < deadline and ("RELOADING", "1") not in fields(got):
            got.extend(notify.pending())
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    t = threading.Thread(target=driver)
    started = time.monotonic()
    try:
        with caplog.at_level(logging.INFO, logger="tenantwatch.daemon"):
            t.start()
            rc = d.run()
    finally:
        t.join(30)
        for s, h in saved.items():
            signal.signal(s, h)
    got.extend(notify.pending())
    assert rc == 0
    assert time.monotonic() - started < 30  # neither signal waited for the 60 s tick
    keys = [k for k, _ in fields(got) if k in ("READY", "RELOADING", "STOPPING")]
    assert keys == ["READY", "RELOADING", "READY", "STOPPING"]
    assert "reload: configuration unchanged" in caplog.text
    assert d._wake_fds is None and d.probes.closed


class SweepProbes(FakeProbes):
    """Targets as a test sets them; counts the connection-table walks."""

    def __init__(self) -> None:
        super().__init__()
        self.live: set[int] = {10, 11}
        self.sweeps: list[set[int]] = []

    def targets(self) -> set[int]:
        return set(self.live)

    def forget_connections(self, live) -> int:
        self.sweeps.append(set(live))
        return 0


def test_the_connection_table_is_walked_only_when_a_target_left(tmp_path):
    from tenantwatch.kernel import sweep

    probes = SweepProbes()
    d = make_daemon(tmp_path, probes=probes)
    every = sweep.EVERY_TICKS
    d.sweeper.saw({10, 11})  # as a rescan that found them
    for _ in range(every):
        d._tick()  # the last one a sweep tick, nobody left: no walk
    assert probes.sweeps == []
    probes.live = {10}  # 11 exited
    for _ in range(every):
        d._tick()
    assert probes.sweeps == [{10}]
    for _ in range(every):
        d._tick()
    assert probes.sweeps == [{10}]  # nobody left since
    for _ in range(sweep.BACKSTOP_TICKS - 3 * every):
        d._tick()
    assert probes.sweeps == [{10}, {10}]  # the backstop
    d.api.stop()


class FailingProbes(FakeProbes):
    """drain() raises on the ticks listed."""

    def __init__(self, fail_on: set[int]) -> None:
        super().__init__()
        self.fail_on = fail_on

    def drain(self) -> KernelTick:
        tick = super().drain()
        if self.drains in self.fail_on:
            raise OSError("bpf_map_lookup_batch: Bad address")
        return tick


def _stage_errors(d: Daemon) -> dict[str, float]:
    return {s.labels["stage"]: s.value for m in d.stage_errors.collect() for s in m.samples
            if s.name.endswith("_total")}


def test_a_failing_stage_is_counted_and_the_daemon_goes_on(tmp_path, caplog):
    probes = FailingProbes({2})
    d = make_daemon(tmp_path, probes=probes)
    try:
        d._apply()  # drain 1: fine
        ticks = d.aggregator.snapshot(True).ticks
        with caplog.at_level(logging.ERROR):
            d._apply()  # drain 2 raises: nothing else this tick
        assert _stage_errors(d)["drain"] == 1
        assert "tick stage drain failed" in caplog.text
        assert d.aggregator.snapshot(True).ticks == ticks
        d._apply()  # drain 3: fine again
        assert d.aggregator.snapshot(True).ticks == ticks + 1

        def boom(*_a, **_k):
            raise ValueError("detector bug")

        detected = d.detection
        d.detector.update = boom
        enforced = []
        d.enforcer.tick = lambda *a: enforced.append(a)
        d._apply()  # aggregation fine, detection raises: no enforcement on a stale result
        assert _stage_errors(d)["detect"] == 1
        assert enforced == [] and d.detection is detected
        assert d.aggregator.snapshot(True).ticks == ticks + 2
        assert set(_stage_errors(d)) == {"retarget", "sweep", "drain", "http2", "aggregate",
                                         "isolation", "spans", "power", "detect",
                                         "enforce"}  # all there from the start
    finally:
        d.api.stop()


def _boom(*_a, **_k):
    raise ValueError("stage bug")


def test_the_other_stages_are_isolated_too(tmp_path, caplog):
    """retarget and sweep (some ticks only), http2 and aggregate: each failure is counted and
    logged; the tick goes on as docs/operations.md's table says."""
    d = make_daemon(tmp_path)
    try:
        d._tick()
        ticks = d.aggregator.snapshot(True).ticks
        d.scanner.scan = _boom  # retarget: the rescan raises
        d.sweeper.tick = _boom
        with caplog.at_level(logging.ERROR):
            d._tick()  # a rescan every tick (rescan_seconds = tick_seconds); both raise
        assert _stage_errors(d)["retarget"] == 1 and _stage_errors(d)["sweep"] == 1
        assert "tick stage retarget failed" in caplog.text
        assert "tick stage sweep failed" in caplog.text
        assert d.aggregator.snapshot(True).ticks == ticks + 1

        d.h2 = _BrokenMerge(d.h2)  # the kernel's counts still go on
        d._apply()
        assert _stage_errors(d)["http2"] == 1
        assert d.aggregator.snapshot(True).ticks == ticks + 2

        updates = []
        d.detector.update = lambda node: updates.append(node)
        d.aggregator.apply = _boom  # no detection on the last tick's numbers again
        d._apply()
        assert _stage_errors(d)["aggregate"] == 1
        assert updates == []
        assert d.health()["stage_errors"] == {"aggregate": 1, "http2": 2,  # still broken
                                              "retarget": 1, "sweep": 1}
    finally:
        d.api.stop()


class _BrokenMerge:
    """The daemon's H2Tracker with a merge that raises (a stand-in: the tracker may be a
    compiled class, whose methods cannot be replaced on the instance)."""

    def __init__(self, real) -> None:
        self._real = real

    def merge(self, tick):
        raise ValueError("stage bug")

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_the_final_drain_at_shutdown_runs_the_collect_stages(tmp_path):
    probes = FakeProbes()
    d = make_daemon(tmp_path, probes=probes)
    d.start()
    drains, ticks = probes.drains, d.aggregator.snapshot(True).ticks
    d.shutdown()
    assert probes.drains == drains + 1 and probes.closed
    assert d.aggregator.snapshot(False).ticks == ticks + 1


def test_an_error_outside_the_stages_ends_the_daemon_after_its_shutdown(tmp_path, notify):
    """The crash policy (docs/operations.md, "A failing tick stage"): what is not a stage
    raises out of run() after the shutdown ran (caps restored, probes detached, STOPPING=1),
    so the process exits non-zero and systemd restarts it."""
    d = make_daemon(tmp_path, tick=0.1)
    d.notify_alive = _boom  # after the first tick
    with pytest.raises(ValueError, match="stage bug"):
        d.run()
    assert d.probes.closed and d._wake_fds is None
    keys = [k for k, _ in fields(notify.pending()) if k in ("READY", "STOPPING")]
    assert keys == ["READY", "STOPPING"]
