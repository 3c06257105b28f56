"""The daemon as systemd runs it, without systemd as PID 1 (docs/operations.md): what the unit
relies on, reproduced one piece at a time.

- sd_notify over a real AF_UNIX datagram socket given as $NOTIFY_SOCKET: READY=1 once /readyz
  answers, WATCHDOG=1 at least every WATCHDOG_USEC/2 (with a tick much longer than that),
  RELOADING=1 ... READY=1 around SIGHUP, a broken file kept out with the reason in the log,
  STOPPING=1 and exit 0 on SIGTERM; a bad config exits 78 (RestartPreventExitStatus=78) without
  READY=1.
- The unit's sandbox where it needs no systemd: its CapabilityBoundingSet and NoNewPrivileges (via
  setpriv) are enough for bcc to load, attach and count real nginx traffic exactly, and every
  syscall the daemon makes is allowed by its SystemCallFilter (via strace).
- `make install` / `make uninstall` under TW_ROOT: the layout, the installed command, an operator's
  config and drop-ins kept on upgrade and uninstall, everything removed with PURGE=1.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.traffic import drive
from tests.conftest import _free_port, require, require_root
from tests.e2e.conftest import (
    NGINX_COMM,
    READY_TIMEOUT,
    STOP_TIMEOUT,
    Baseline,
    Daemon,
    config_text,
    expected_counts,
    tenantwatch_command,
)
from tests.unit.test_systemd_unit import UNIT, parse_unit

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
EX_CONFIG = 78


class NotifySocket:
    """systemd's side of sd_notify: a bound AF_UNIX SOCK_DGRAM socket read by a thread."""

    def __init__(self) -> None:
        # AF_UNIX paths are limited to 108 bytes: a short directory, not tmp_path.
        self.dir = tempfile.mkdtemp(prefix="tw-notify-")
        self.path = os.path.join(self.dir, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict[str, str]]] = []  # (monotonic, fields)
        self.cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            msg = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self.cond:
                self.messages.append((time.monotonic(), msg))
                self.cond.notify_all()

    def wait_for(self, key: str, value: str | None = None, after: int = 0,
                 timeout: float = 10.0, proc: subprocess.Popen | None = None,
                 log: Path | None = None) -> int:
        """Index of the first message at or after `after` that has `key` (= `value`); fails when
        `proc` exits first or after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i in range(after, len(self.messages)):
                    m = self.messages[i][1]
                    if key in m and (value is None or m[key] == value):
                        return i
                if proc is not None and proc.poll() is not None:
                    tail = log.read_text(errors="replace")[-4000:] if log else ""
                    pytest.fail(f"tenantwatch exited with {proc.returncode} before {key}\n"
                                f"{tail}", pytrace=False)
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"no {key}={value} within {timeout}s: {self.messages}",
                                pytrace=False)
                self.cond.wait(min(left, 0.2))

    def count(self, key: str, value: str, since: float) -> int:
        with self.cond:
            return sum(1 for t, m in self.messages if t >= since and m.get(key) == value)

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    s = NotifySocket()
    yield s
    s.close()


def clean_env(**extra: str) -> dict[str, str]:
    # TENANTWATCH_BPF_DIR (where the loader finds bpf/*.c) is not config: it goes through.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TENANTWATCH_", "NOTIFY_SOCKET", "WATCHDOG_"))
           or k == "TENANTWATCH_BPF_DIR"}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def http_status(port: int, path: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def wait_log(log: Path, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        content = log.read_text(errors="replace")
        if text in content or time.monotonic() > deadline:
            assert text in content, content[-4000:]
            return content
        time.sleep(0.1)


# ---------------------------------------------------------------- sd_notify, end to end


def test_ready_watchdog_reload_and_stop_over_notify_socket(tmp_path, notify):
    require_root()
    port = _free_port()
    config = tmp_path / "tenantwatch.yaml"
    # A 10 s tick: the watchdog pings below come from WATCHDOG_USEC, not from ticks.
    good = config_text(port) + "capture:\n  tick_seconds: 10\n"
    config.write_text(good)
    log = tmp_path / "tenantwatch.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            tenantwatch_command() + ["run", "--config", str(config)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO),
            env=clean_env(NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="2000000"))
    try:
        ready = notify.wait_for("READY", "1", timeout=READY_TIMEOUT, proc=proc, log=log)
        # READY=1 is sent after the HTTP endpoint listens: it answers at once
        assert http_status(port, "/readyz") == 200
        assert ready == 0, f"messages before READY=1: {notify.messages[:ready]}"
        status = notify.messages[ready][1]["STATUS"]
        assert "probes attached" in status and f":{port}" in status

        # WATCHDOG=1 every second (WATCHDOG_USEC/2) although a tick is 10 s
        t0 = time.monotonic()
        time.sleep(3.0)
        assert notify.count("WATCHDOG", "1", t0) >= 2

        # SIGHUP with a broken file: RELOADING=1 ... READY=1, still running, the reason logged
        config.write_text(good + "tenancy_typo: 1\n")
        mark = len(notify.messages)
        proc.send_signal(signal.SIGHUP)
        reloading = notify.wait_for("RELOADING", "1", after=mark, proc=proc)
        again = notify.wait_for("READY", "1", after=reloading, proc=proc)
        assert "last reload rejected" in notify.messages[again][1]["STATUS"]
        text = wait_log(log, "reload rejected, keeping the running config:")
        assert "tenancy_typo" in text
        assert proc.poll() is None and http_status(port, "/readyz") == 200

        # a good file: log_level applies live, a key that needs a restart is named
        config.write_text(good.replace("tenancy:\n", "tenancy:\n  max_tenants: 50\n")
                          + "log_level: debug\n")
        mark = len(notify.messages)
        proc.send_signal(signal.SIGHUP)
        notify.wait_for("READY", "1", after=notify.wait_for("RELOADING", "1", after=mark,
                                                             proc=proc), proc=proc)
        wait_log(log, "reload: applied log_level=debug")
        wait_log(log, "tenancy changed; restart tenantwatch to apply")

        # SIGTERM: STOPPING=1, exit 0
        mark = len(notify.messages)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(STOP_TIMEOUT)
        notify.wait_for("STOPPING", "1", after=mark, timeout=1)
        assert rc == 0, log.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert "Traceback" not in log.read_text()


def test_bad_config_exits_78_before_ready(tmp_path, notify):
    """RestartPreventExitStatus=78: a bad config is final, and systemd never saw it ready."""
    config = tmp_path / "tenantwatch.yaml"
    config.write_text(config_text(_free_port()) + "bogus: 1\n")
    r = subprocess.run(tenantwatch_command() + ["run", "--config", str(config)],
                       capture_output=True, text=True, timeout=60, cwd=str(REPO),
                       env=clean_env(NOTIFY_SOCKET=notify.path), check=False)
    assert r.returncode == EX_CONFIG, r.stderr
    assert "bad configuration" in r.stderr and "bogus" in r.stderr
    time.sleep(0.3)  # the reader thread has seen anything that was sent
    assert not any("READY" in m for _, m in notify.messages), notify.messages


# ---------------------------------------------------------------- the unit's sandbox, sans systemd


def unit_service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())["Service"]


def unit_caps() -> list[str]:
    return " ".join(unit_service()["CapabilityBoundingSet"]).split()


def tightest_caps() -> tuple[list[str], str]:
    """The unit's capabilities, without CAP_SYS_ADMIN where the unit's comment says a drop-in
    may remove it (kernel 5.8+ and kernel.perf_event_paranoid <= 2), and why."""
    caps = unit_caps()
    release = tuple(int(x) for x in re.findall(r"\d+", os.uname().release)[:2])
    paranoid = int(Path("/proc/sys/kernel/perf_event_paranoid").read_text())
    if release >= (5, 8) and paranoid <= 2 and "CAP_SYS_ADMIN" in caps:
        return [c for c in caps if c != "CAP_SYS_ADMIN"], (
            f"the unit's set without CAP_SYS_ADMIN (kernel {os.uname().release}, "
            f"perf_event_paranoid={paranoid})")
    return caps, f"the unit's set (perf_event_paranoid={paranoid})"


def syscall_groups() -> dict[str, list[str]]:
    out = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = line.strip()
            groups[current] = []
        elif current and line.strip() and not line.strip().startswith("#"):
            groups[current].append(line.strip())
    return groups


def allowed_syscalls() -> set[str]:
    """The unit's SystemCallFilter= as a set of syscall names (allow-list lines, then ~ lines)."""
    groups = syscall_groups()

    def expand(name: str) -> set[str]:
        if not name.startswith("@"):
            return {name}
        return set().union(*(expand(m) for m in groups[name]))

    allowed: set[str] = set()
    for line in unit_service()["SystemCallFilter"]:
        deny = line.startswith("~")
        names = set().union(*(expand(n) for n in line.lstrip("~").split()))
        allowed = allowed - names if deny else allowed | names
    return allowed


def traced_syscalls(prefix: Path) -> Counter:
    """{syscall: calls} from `strace -ff -o PREFIX` output files."""
    out: Counter = Counter()
    pattern = re.compile(r"^([a-z_][a-z0-9_]*)\(")
    for f in prefix.parent.glob(prefix.name + ".*"):
        for line in f.read_text(errors="replace").splitlines():
            m = pattern.match(line)
            if m:
                out[m.group(1)] += 1
    return out


def child_pid(pid: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            kids = []
        if kids:
            return int(kids[0])
        time.sleep(0.05)
    pytest.fail(f"pid {pid} started no child", pytrace=False)


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def cap_mask(names: list[str]) -> int:
    numbers = {"CAP_SYS_ADMIN": 21, "CAP_PERFMON": 38, "CAP_BPF": 39, "CAP_SYS_PTRACE": 19,
               "CAP_SYS_RESOURCE": 24, "CAP_DAC_READ_SEARCH": 2, "CAP_NET_BIND_SERVICE": 10}
    mask = 0
    for n in names:
        mask |= 1 << numbers[n]
    return mask


def test_unit_caps_and_syscall_filter_suffice_for_bcc_and_counting(tmp_path, e2e_gateway):
    """setpriv applies the unit's CapabilityBoundingSet and NoNewPrivileges= as systemd would (a
    root process gets exactly the bounding set); strace records every syscall of every thread
    from exec to exit, for a start, real traffic counted exactly, scrapes, a reload and a stop.
    Where the kernel allows it, the capabilities are the tightest the unit documents (without
    CAP_SYS_ADMIN), so that the drop-in it suggests is known to work."""
    require_root()
    for tool in ("setpriv", "strace", "systemd-analyze"):
        require(shutil.which(tool) is not None, f"{tool} is not installed")
    service = unit_service()
    assert service["NoNewPrivileges"] == ["yes"]
    caps, why = tightest_caps()
    print(f"capabilities: {' '.join(caps)}: {why}")
    bounding = ",".join(["-all"] + [f"+{c.lower().removeprefix('cap_')}" for c in caps])
    port = _free_port()
    d = Daemon(tmp_path / "sandboxed", port, config_text(port))
    d.workdir.mkdir(parents=True)
    d.config_path.write_text(d.config_text)
    trace = tmp_path / "trace" / "tw"
    trace.parent.mkdir()
    cmd = (["setpriv", "--no-new-privs", f"--bounding-set={bounding}", "--inh-caps=-all",
            "--ambient-caps=-all", "strace", "-f", "-qq", "-ff", "-o", str(trace)]
           + tenantwatch_command() + ["run", "--config", str(d.config_path)])
    with open(d.log_path, "wb") as log:
        d.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, env=clean_env(), cwd=str(REPO))
    try:
        d.wait_ready()
        daemon = child_pid(d.proc.pid)  # strace's child: the daemon itself
        st = proc_status(daemon)
        assert int(st["CapBnd"], 16) == cap_mask(caps)
        assert int(st["CapEff"], 16) == cap_mask(caps)
        assert st["NoNewPrivs"] == "1"

        tenants = {"sandbox-a": 7, "sandbox-b": 4, None: 2}
        tally = Baseline(d, "sandbox-")
        got = drive(HOST, e2e_gateway.listen_port, tenants, connections=2, seed=17)
        assert got == Counter({(t, 200): n for t, n in tenants.items()})
        expected = expected_counts(got)
        assert tally.settle(expected) == expected
        for path in ("/healthz", "/api/v1/tenants"):
            assert http_status(port, path) == 200

        os.kill(daemon, signal.SIGHUP)
        wait_log(d.log_path, "reload: configuration unchanged")
        os.kill(daemon, signal.SIGTERM)
        rc = d.proc.wait(STOP_TIMEOUT * 2)  # strace exits with its tracee's status
        assert rc == 0, d.log_text()[-4000:]
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(10)
    log_text = d.log_text()
    assert "Traceback" not in log_text and "tenantwatch stopped" in log_text

    used = traced_syscalls(trace)
    assert used["bpf"] > 0 and used["perf_event_open"] > 0, used
    outside = sorted(set(used) - allowed_syscalls())
    assert outside == [], f"syscalls the unit's SystemCallFilter would refuse: {outside}"
    assert NGINX_COMM  # the gateway's processes, by comm: all this daemon traced


# ---------------------------------------------------------------- make install / make uninstall


def run(cmd: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """Run `cmd` in `cwd` (not the source tree: `python -c` would import the package from there)
    without PYTHONPATH, as an operator would."""
    base = {k: v for k, v in clean_env().items() if k != "PYTHONPATH"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(cwd),
                       env={**base, **env}, check=False)
    assert r.returncode == 0, f"{cmd}: {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def test_make_install_and_uninstall_under_tw_root(tmp_path):
    require(shutil.which("make") is not None, "make is not installed")
    require(Path("/usr/bin/python3").exists(), "/usr/bin/python3 is missing")
    root = tmp_path / "root"
    venv = root / "opt/tenantwatch/venv"
    link = root / "usr/local/bin/tenantwatch"
    share = root / "usr/share/tenantwatch/bpf"
    unit = root / "etc/systemd/system/tenantwatch.service"
    dropin = root / "etc/systemd/system/tenantwatch.service.d/override.conf"
    conf = root / "etc/tenantwatch/tenantwatch.yaml"
    state = root / "var/lib/tenantwatch"
    make = ["make", "-s", "-C", str(REPO)]
    install = ["bash", str(REPO / "scripts/install.sh")]

    first = run(make + ["install", f"TW_ROOT={root}"], tmp_path)
    assert "skipped (TW_ROOT=" in first.stdout  # no systemctl against the real system

    # the layout
    assert (venv / "pyvenv.cfg").read_text().count("include-system-site-packages = true") == 1
    assert link.is_symlink() and os.readlink(link) == str(venv / "bin/tenantwatch")
    assert (share / "http.c").read_bytes() == (REPO / "bpf/http.c").read_bytes()
    assert (share / "include/tw_abi.h").is_file()
    assert unit.read_text() == UNIT.read_text()
    assert conf.read_text() == (REPO / "examples/tenantwatch.yaml").read_text()
    assert state.is_dir() and (state.stat().st_mode & 0o777) == 0o750

    # the installed command: a real (not editable) install, the installed config valid, the
    # staged BPF sources complete. Installed under /, the package finds them in
    # /usr/share/tenantwatch/bpf; under TW_ROOT it is told where they are.
    staged = {"TENANTWATCH_BPF_DIR": str(share)}
    assert run([str(venv / "bin/tenantwatch"), "version"], tmp_path).stdout.startswith(
        "tenantwatch ")
    assert run([str(link), "--version"], tmp_path).stdout.startswith("tenantwatch ")
    where = run([str(venv / "bin/python"), "-c",
                 "import tenantwatch; print(tenantwatch.__file__)"], tmp_path).stdout
    assert where.startswith(str(venv)), where
    check = run([str(link), "check-config", "--config", str(conf)], tmp_path, **staged).stdout
    assert check.startswith("ok:"), check
    bpf = run([str(link), "run", "--config", str(conf), "--print-bpf"], tmp_path,
              **staged).stdout
    assert "TRACEPOINT_PROBE" in bpf
    assert "install: warning" not in first.stderr, first.stderr  # bcc, check-config

    # an upgrade (install again) keeps the operator's config and drop-ins
    conf.write_text(conf.read_text() + "# operator was here\n")
    dropin.parent.mkdir()
    dropin.write_text("[Service]\nCapabilityBoundingSet=~CAP_SYS_ADMIN\n")
    run(install, tmp_path, TW_ROOT=str(root))
    assert conf.read_text().endswith("# operator was here\n")
    assert dropin.exists() and unit.read_text() == UNIT.read_text()

    # uninstall: everything but the operator's files and state left behind; PURGE=1: those too
    (state / "leases.json").write_text("{}")
    run(make + ["uninstall", f"TW_ROOT={root}"], tmp_path)
    for p in (venv, link, share, unit, root / "opt/tenantwatch"):
        assert not os.path.lexists(p), p
    assert conf.exists() and dropin.exists() and state.exists()
    run(make + ["uninstall", f"TW_ROOT={root}", "PURGE=1"], tmp_path)
    assert not conf.parent.exists() and not dropin.parent.exists() and not state.exists()
