"""Enforcement, end to end, on this machine's cgroup v1 cpu controller (/sys/fs/cgroup/cpu).

Two tenants, "hog" and "calm", each with its own backend process (a threaded HTTP server that
burns CPU per request in hashlib, which releases the GIL, so one process can use every core),
each started inside its own cgroup: <cpu>/tw-e2e-<pid>/tenant-<tenant>, and the same relative
directory under the cpuacct mount (usage).  nginx (comm NGINX_COMM, 2 workers) routes by
X-Tenant-ID to the two backends and writes the trusted X-Tenant-Context upstream.

The daemon traces nginx only, and counts each backend's cgroup CPU as its tenant's trusted cost
through `enforcement.cgroup`.  The backends are deliberately *not* tracing targets: the enforcer
takes every target process for a gateway process and refuses to cap a cgroup holding one
(`gateway_in_cgroup`), so tracing the hog's backend would make it uncappable.  For the same
reason X-Tenant-Context is read on nginx's client side only (`side: client`): no backend is
traced, and on the server side a client could forge it.

The verdict path is used (no `enforcement.quotas`).  With only two active tenants nobody can be
heavy (the fair share is 1/2, the threshold 100%), so `detection.quotas` states hog's fair share
of the gateway (0.25): hog is heavy above 50% of the CPU; the verdict (heavy, and contended:
PSI, calm a victim) caps it at half its measured use, then steps it down every cooldown to the
floor (0.2 cores): ~0.9 -> 0.45 -> 0.23 -> 0.2, steady 20-30 s after the daemon starts.

The hog's cgroup has a large CPU weight (cpu.shares = HOG_SHARES, 8x the gateway's and calm's,
as a big service would get): a weight alone never bounds it, so uncapped it crowds nginx and calm
off the two CPUs, and only the cap (a quota) limits it.

This machine is shared (other VMs keep it at load 4-9).  So that the cap, not load outside the
test, is what limits the hog, and calm's latency moves with the hog rather than with the other
VMs, nginx (moved to <cpu>/tw-e2e-<pid>/gateway) and both backends run under our parent cgroup,
given cpu.shares = GROUP_SHARES.  Without that, the hog measured 0.13-0.22 cores under a 0.25
cap at load 9, and calm's p99 under the capped hog was at times no better than under the
uncapped one: the other VMs' bursts set it.

- test_dry_run_writes_nothing_under_the_cgroup_tree: the default mode under the same heavy load
  audits `would_cap` for hog, lists it under `would_caps`, and leaves cpu.cfs_quota_us,
  cpu.cfs_period_us and cpu.shares of both cgroups byte-identical (also after SIGTERM).
- test_enforce_caps_the_hog_then_release_caps_after_sigkill: calm's client-side p99 is measured
  idle, then under the uncapped hog (no daemon yet), then with the enforce daemon once the cap
  is steady.  Asserted: the hog's cpuacct.usage over a steady window is the cap in force +-10%
  (measured: 0.189-0.198 under 0.2); calm recovers (recovered()); the cap is on /metrics; calm
  is never capped; after SIGKILL, `tenantwatch release-caps` restores -1 and exits 0.
- test_enforce_mode_never_caps_a_tenant_whose_headers_a_forger_sends: the same heavy load
  through an authenticating location (/a/: nginx auth_request to a key -> tenant service, as in
  examples/nginx-auth-request.conf), sent with hog's key and calm's name forged in X-Tenant-ID
  and X-Tenant-Context.  hog is capped; calm's files never change; calm is a claim on the
  client's leg only, never trusted, with exactly the forged requests.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from harness.gateway import Gateway
from tests.conftest import _free_port, require, require_root
from tests.e2e.auth_service import auth_handler
from tests.e2e.conftest import NGINX_COMM, REPO, Daemon, ThreadGroup, tenantwatch_command

CPU = Path("/sys/fs/cgroup/cpu")
CPUACCT = Path("/sys/fs/cgroup/cpuacct")
GROUP = f"tw-e2e-{os.getpid()}"  # our parent cgroup, under both mounts
TENANTS = ("hog", "calm")
CAP_FILES = ("cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.shares")
GROUP_SHARES = 10240  # our parent cgroup's weight: 10x a nice-0 task of the root cgroup
HOG_SHARES = 8192  # the hog's cgroup weight, 8x its siblings' (gateway, calm)

HOG_MS = 20.0  # CPU per hog request
HOG_CLIENTS = 12  # parallel hog clients: > 1 core without a cap
CALM_MS = 2.0  # CPU per calm request
CALM_CLIENTS = 2  # keep-alive clients of calm, each recording its latencies
CALM_RATE = 40.0  # requests per second of each calm client, at most
LOAD_DEADLINE = 240.0  # every client thread ends by then, whatever the test does
IDLE_SECONDS = 10.0  # calm alone: its idle p99 (over the last 8 s of it)
UNCAPPED_SECONDS = 10.0  # the hog without a cap: calm's p99 under it
SETTLE_TIMEOUT = 60.0  # daemon start -> a cap steady for STEADY_SECONDS
STEADY_SECONDS = 8.0  # the window of the cpuacct.usage delta and of calm's capped p99
DRY_COOLDOWN = 3.0  # enforcement.cooldown_seconds below


def recovered(idle: float, uncapped: float, capped: float) -> bool:
    """Has calm's client-side p99 recovered once the hog is capped?  capped <= 0.7 x uncapped.

    Measured on this 2-core VM with other VMs running (load 5-9), 250-630 requests a phase:
    idle 7-14 ms, uncapped 170-290 ms, capped 8-40 ms; capped/uncapped 0.03-0.2.  0.7 leaves a
    wide margin and still fails when the cap does not help calm.  "Within 2x of the idle p99"
    is not robust here: calm's idle p99 is a few ms and moves with the other VMs' load, while
    the capped hog still adds its throttled bursts (capped/idle 0.9-4.5), so it is reported only.
    """
    return capped <= 0.7 * uncapped


BACKEND = r"""
import ctypes, hashlib, sys, time
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)  # PR_SET_NAME
BUF = b"x" * (1 << 20)  # ~2.5 ms of sha256 a chunk: few GIL hand-offs, which a throttle can stall
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stalls
    def do_GET(self):
        ms = min(float(self.path.rsplit("/", 1)[-1] or 0), 200.0)
        t0 = time.thread_time()
        h = hashlib.sha256()
        while time.thread_time() - t0 < ms / 1000:
            h.update(BUF)  # releases the GIL: the threads of one process use every core
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")
    def log_message(self, *a):
        pass
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer.request_queue_size = 128
s = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), H)
print("ready", flush=True)
s.serve_forever()
"""

NGINX_HTTP = """\
    upstream tw_hog {{ server 127.0.0.1:{hog}; keepalive 32; }}
    upstream tw_calm {{ server 127.0.0.1:{calm}; keepalive 8; }}
    upstream tw_auth {{ server 127.0.0.1:{auth}; keepalive 4; }}
    map $http_x_tenant_id $tw_be {{ hog tw_hog; default tw_calm; }}
    map $tw_auth_tenant $tw_auth_be {{ hog tw_hog; default tw_calm; }}
"""

NGINX_SERVER = """\
        location /t/ {
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Tenant-Context $tenant_root;
            proxy_read_timeout 120s;
            proxy_pass http://$tw_be;
        }
        # An authenticating gateway (examples/nginx-auth-request.conf): the tenant comes from
        # the caller's key, never from a header the caller sent; it picks the backend too.
        location = /_auth {
            internal;
            proxy_pass http://tw_auth/check;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_pass_request_headers off;
            proxy_set_header Authorization $http_authorization;
        }
        location /a/ {
            auth_request /_auth;
            auth_request_set $tw_auth_tenant $upstream_http_x_auth_tenant;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Tenant-Context $tw_auth_tenant;
            proxy_read_timeout 120s;
            proxy_pass http://$tw_auth_be;
        }
"""

KEYS = {"Bearer k-hog": "hog", "Bearer k-calm": "calm"}  # the auth service's credentials

CONFIG = """\
listen: "127.0.0.1:{port}"
targets: [{{process: {nginx}}}]
tenancy:
  sources:
    - {{header: X-Tenant-Context, side: client, trusted: true}}
    - {{header: X-Tenant-ID, side: server}}
detection:
  window_seconds: 3
  baseline_seconds: 15
  quotas: {{hog: 0.25}}
enforcement:
  mode: {mode}
  cgroup: "{cpu}/{group}/tenant-{{tenant}}"
  floor: 0.2
  max_step: 0.5
  cooldown_seconds: 3
  calm_seconds: 20
  lease_ttl_seconds: 60
  state_file: "{work}/caps.json"
  audit_log: "{work}/audit.jsonl"
"""


# ---------------------------------------------------------------------------- cgroups


@dataclass
class Cgroups:
    """<cpu>/GROUP/tenant-<t> and <cpuacct>/GROUP/tenant-<t>, made and removed by the test."""

    made: list[Path] = field(default_factory=list)

    def cpu(self, tenant: str) -> Path:
        return CPU / GROUP / f"tenant-{tenant}"

    def acct(self, tenant: str) -> Path:
        return CPUACCT / GROUP / f"tenant-{tenant}"

    def make(self) -> None:
        for base in (CPU, CPUACCT):
            for d in [base / GROUP] + [base / GROUP / f"tenant-{t}" for t in TENANTS]:
                d.mkdir()
                self.made.append(d)
        self.made.append(CPU / GROUP / "gateway")
        self.made[-1].mkdir()
        # Shield the test from the machine's other load; the hog's large weight (see the
        # module docstring).
        (CPU / GROUP / "cpu.shares").write_text(str(GROUP_SHARES))
        (self.cpu("hog") / "cpu.shares").write_text(str(HOG_SHARES))

    def gateway(self, pids: list[int]) -> None:
        """nginx into <cpu>/GROUP/gateway: not a tenant's cgroup, next to both of them."""
        for pid in pids:
            (CPU / GROUP / "gateway" / "cgroup.procs").write_text(str(pid))

    def enter(self, tenant: str, pid: int) -> None:
        for d in (self.cpu(tenant), self.acct(tenant)):
            (d / "cgroup.procs").write_text(str(pid))

    def usage_seconds(self, tenant: str) -> float:
        return int((self.acct(tenant) / "cpuacct.usage").read_text()) / 1e9

    def nr_throttled(self, tenant: str) -> int:
        stat = dict(line.split() for line in (self.cpu(tenant) / "cpu.stat").read_text()
                    .splitlines())
        return int(stat["nr_throttled"])

    def quota(self, tenant: str) -> int:
        return int((self.cpu(tenant) / "cpu.cfs_quota_us").read_text())

    def files(self) -> dict[str, bytes]:
        """The bytes of every limit file of both tenants' cpu cgroups."""
        return {f"{t}/{name}": (self.cpu(t) / name).read_bytes()
                for t in TENANTS for name in CAP_FILES}

    def remove(self) -> None:
        """Move whatever is left to the root cgroup (by pid), then rmdir deepest first."""
        for d in sorted(self.made, key=lambda p: len(p.parts), reverse=True):
            base = CPU if d.is_relative_to(CPU) else CPUACCT
            try:
                pids = (d / "cgroup.procs").read_text().split()
            except OSError:
                pids = []
            for pid in pids:
                try:
                    (base / "cgroup.procs").write_text(pid)
                except OSError:
                    pass  # it exited meanwhile
            for _ in range(100):  # a killed task leaves its cgroup asynchronously
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)


# ---------------------------------------------------------------------------- load


def _request(s: socket.socket, head: str) -> None:
    s.sendall(head.encode())
    got = b""
    while not got.endswith(b"ok\n"):
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        got += chunk
    if not got.startswith(b"HTTP/1.1 200"):
        raise AssertionError(got[:200])


def _head(tenant: str, ms: float) -> str:
    """A request routed (and made trusted upstream) by the X-Tenant-ID it names."""
    return f"GET /t/{ms} HTTP/1.1\r\nHost: t\r\nX-Tenant-ID: {tenant}\r\n\r\n"


def _authenticated_head(key_of: str, ms: float, forged: str | None = None) -> str:
    """A request through the authenticating location with `key_of`'s key; `forged` names
    another tenant in both tenant headers, as a forger would."""
    claim = f"X-Tenant-ID: {forged}\r\nX-Tenant-Context: {forged}\r\n" if forged else ""
    return (f"GET /a/t/{ms} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer k-{key_of}\r\n"
            f"{claim}\r\n")


class Traffic(ThreadGroup):
    """calm: CALM_CLIENTS keep-alive clients at CALM_RATE/s recording each latency; hog:
    HOG_CLIENTS keep-alive clients sending HOG_MS requests back to back while `hog_on` is set.
    `calm_head` and `hog_head` are each client's request head (default: routed by X-Tenant-ID)."""

    join_seconds = 70.0

    def __init__(self, port: int, calm_head: str = _head("calm", CALM_MS),
                 hog_head: str = _head("hog", HOG_MS)) -> None:
        super().__init__()
        self.port = port
        self.calm_head, self.hog_head = calm_head, hog_head
        self.hog_on = threading.Event()
        self.errors: list = []
        self.calm: list[tuple[float, float]] = []  # (end, latency seconds)
        self.hog_done = 0
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._calm, daemon=True)
                        for _ in range(CALM_CLIENTS)]
        self.threads += [threading.Thread(target=self._hog, daemon=True)
                         for _ in range(HOG_CLIENTS)]

    def _calm(self) -> None:
        deadline = time.monotonic() + LOAD_DEADLINE
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
                while not self.stop.is_set() and time.monotonic() < deadline:
                    t0 = time.monotonic()
                    _request(s, self.calm_head)
                    t1 = time.monotonic()
                    self.calm.append((t1, t1 - t0))
                    self.stop.wait(max(0.0, 1.0 / CALM_RATE - (t1 - t0)))
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.errors.append(("calm", repr(e)))

    def _hog(self) -> None:
        deadline = time.monotonic() + LOAD_DEADLINE
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=60) as s:
                while not self.stop.is_set() and time.monotonic() < deadline:
                    if not self.hog_on.wait(0.2):
                        continue
                    _request(s, self.hog_head)
                    with self._lock:
                        self.hog_done += 1
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.errors.append(("hog", repr(e)))

    def p99(self, start: float, end: float) -> tuple[float, int]:
        """Calm's p99 latency (seconds) over requests that ended in [start, end), and n."""
        lat = sorted(x for t, x in list(self.calm) if start <= t < end)
        if not lat:
            return math.inf, 0
        return lat[max(0, math.ceil(0.99 * len(lat)) - 1)], len(lat)


# ---------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    cgroups: Cgroups
    gateway: Gateway
    backends: dict[str, subprocess.Popen]
    work: Path

    def daemon(self, name: str, mode: str) -> Daemon:
        port = _free_port()
        work = self.work / name
        work.mkdir()
        return Daemon(work / "daemon", port, CONFIG.format(
            port=port, nginx=NGINX_COMM, mode=mode, cpu=CPU, group=GROUP, work=work))


@pytest.fixture(scope="module")
def stack(tmp_path_factory, nginx_binary) -> Iterator[Stack]:
    require_root()
    require((CPU / "cpu.cfs_quota_us").exists() and (CPUACCT / "cpuacct.usage").exists(),
            "no cgroup v1 cpu and cpuacct hierarchies at /sys/fs/cgroup/{cpu,cpuacct}")
    work = tmp_path_factory.mktemp("enforcement")
    cgroups = Cgroups()
    backends: dict[str, subprocess.Popen] = {}
    gw = auth = None
    try:
        cgroups.make()
        ports = {t: _free_port() for t in TENANTS}
        for t in TENANTS:
            comm = f"tw-{t}-{os.getpid()}"[:15]
            backends[t] = subprocess.Popen([sys.executable, "-c", BACKEND, comm, str(ports[t])],
                                           stdout=subprocess.PIPE, text=True)
            cgroups.enter(t, backends[t].pid)  # right after spawning: threads are made in there
        for t in TENANTS:
            assert backends[t].stdout.readline().strip() == "ready"
        auth = ThreadingHTTPServer(("127.0.0.1", 0), auth_handler(KEYS))
        auth.daemon_threads = True
        threading.Thread(target=auth.serve_forever, daemon=True).start()
        gw = Gateway(work / "nginx", _free_port(), ports["calm"], workers=2,
                     nginx=nginx_binary,
                     extra_http=NGINX_HTTP.format(hog=ports["hog"], calm=ports["calm"],
                                                  auth=auth.server_address[1]),
                     extra_server=NGINX_SERVER).start()
        cgroups.gateway(gw.our_pids())
        yield Stack(cgroups, gw, backends, work)
    finally:
        if gw is not None:
            gw.stop()
        if auth is not None:
            auth.shutdown()
        for proc in backends.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        cgroups.remove()


# ---------------------------------------------------------------------------- helpers


def _caps(daemon: Daemon) -> dict:
    status, doc = daemon.get_json("/api/v1/caps")
    assert status == 200, doc
    return doc


def _audit(daemon: Daemon) -> list[dict]:
    path = daemon.workdir.parent / "audit.jsonl"
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def _no_tracebacks(daemon: Daemon) -> None:
    bad = [line for line in daemon.log_text().splitlines()
           if line.startswith(("ERROR", "CRITICAL")) or "Traceback" in line]
    assert not bad, daemon.log_text()[-6000:]


def _state(daemon: Daemon) -> str:
    """What the daemon thinks, for assertion messages."""
    _, hot = daemon.get_json("/api/v1/hotspots")
    return f"caps: {_caps(daemon)}\nhotspots: {hot}\n--- log ---\n{daemon.log_text()[-3000:]}"


# ---------------------------------------------------------------------------- tests


def test_dry_run_writes_nothing_under_the_cgroup_tree(stack: Stack) -> None:
    """The default mode under the heavy load: `would_cap` (and steps) for hog in the audit log
    and under would_caps; not one byte of either cgroup's limit files changes, also at stop."""
    cg = stack.cgroups
    before = cg.files()
    daemon = stack.daemon("dry", "dry-run").start()
    try:
        with Traffic(stack.gateway.listen_port) as traffic:
            time.sleep(3)  # calm alone first
            traffic.hog_on.set()
            t0 = time.monotonic()
            would: list = []
            while not would:
                assert time.monotonic() - t0 < 40, _state(daemon)
                assert cg.files() == before
                time.sleep(1)
                would = [a for a in _audit(daemon)
                         if a["tenant"] == "hog" and a["action"] == "would_cap"]
            flagged_after = time.monotonic() - t0
            end = time.monotonic() + 2 * DRY_COOLDOWN  # room for a would_step_down or two
            while time.monotonic() < end:
                assert cg.files() == before
                time.sleep(0.5)
            doc = _caps(daemon)
            assert doc["mode"] == "dry-run" and doc["caps"] == [], doc
            assert [c["tenant"] for c in doc["would_caps"]] == ["hog"], doc
            m = daemon.metrics()
            assert not traffic.errors, traffic.errors
        assert not list(m.samples("tenantwatch_cpu_cap_cores")), "a cap gauge in dry-run"
        assert m.value("tenantwatch_enforcement_actions_total", tenant="hog", action="cap",
                       mode="dry-run") >= 1
        assert m.value("tenantwatch_enforcement_actions_total", mode="enforce") == 0
    finally:
        rc = daemon.stop()
    assert rc == 0
    assert cg.files() == before  # a dry-run's stop restores (writes) nothing either
    audit = _audit(daemon)
    print(f"dry-run: would_cap {would[0]['cores']} after {flagged_after:.1f}s; actions "
          f"{sorted({(a['tenant'], a['action'], a['result']) for a in audit})}")
    assert would[0]["result"] == "would" and would[0]["path"] == str(cg.cpu("hog")), would
    assert would[0]["reason"] == "noisy_neighbour" and would[0]["evidence"]["trusted"], would
    assert all(a["mode"] == "dry-run" for a in audit), audit
    assert all(a["result"] in ("would", "refused", "noop") for a in audit), audit
    assert not [a for a in audit if a["tenant"] == "calm"], audit
    _no_tracebacks(daemon)


def _hog_cap(daemon: Daemon, seen: set) -> dict | None:
    """hog's cap in force (from /api/v1/caps), remembering every tenant ever capped."""
    doc = _caps(daemon)
    seen |= {c["tenant"] for c in doc["caps"]}
    return next((c for c in doc["caps"] if c["tenant"] == "hog"), None)


def _key(cap: dict | None) -> tuple | None:
    """What identifies one cap in force: a step or a new cap changes it."""
    return None if cap is None else (cap["changed_at"], cap["cores"])


def test_enforce_caps_the_hog_then_release_caps_after_sigkill(stack: Stack) -> None:
    """calm's p99 idle, then under the uncapped hog (no daemon), then with the enforce daemon:
    the verdict caps hog at half its use and steps it down every cooldown to the floor.  Once a
    cap has stayed the same for a whole STEADY_SECONDS window: hog's cpuacct.usage over that
    window is the cap +-10%, calm's p99 over it has recovered, /metrics shows the cap.  calm is
    never capped.  Then SIGKILL: the cap stays; `tenantwatch release-caps` restores -1, exit 0."""
    cg = stack.cgroups
    before = cg.files()
    assert cg.quota("hog") == -1 and cg.quota("calm") == -1
    daemon = stack.daemon("enforce", "enforce")
    capped_tenants: set = set()
    try:
        with Traffic(stack.gateway.listen_port) as traffic:
            # 1. calm alone, no daemon: the idle p99
            t0 = time.monotonic()
            time.sleep(IDLE_SECONDS)
            idle = traffic.p99(t0 + 2, time.monotonic())  # after the connections warmed up
            # 2. the hog, uncapped (no daemon yet)
            traffic.hog_on.set()
            time.sleep(2)
            u0, w0 = cg.usage_seconds("hog"), time.monotonic()
            time.sleep(UNCAPPED_SECONDS)
            uncapped_cores = (cg.usage_seconds("hog") - u0) / (time.monotonic() - w0)
            uncapped = traffic.p99(w0, time.monotonic())
            # 3. the enforce daemon (the hog paused while the BPF program compiles)
            traffic.hog_on.clear()
            started = time.monotonic()
            daemon.start()
            started = time.monotonic() - started
            traffic.hog_on.set()
            t1 = time.monotonic()
            steady = None
            while steady is None:
                assert time.monotonic() - t1 < SETTLE_TIMEOUT, _state(daemon)
                assert cg.quota("calm") == -1
                cap = _hog_cap(daemon, capped_tenants)
                if cap is None or time.time() - cap["changed_at"] < 1.0:
                    time.sleep(0.5)
                    continue
                u0, w0, n0 = cg.usage_seconds("hog"), time.monotonic(), cg.nr_throttled("hog")
                same = True
                while same and time.monotonic() - w0 < STEADY_SECONDS:  # a step: start over
                    time.sleep(0.5)
                    same = _key(_hog_cap(daemon, capped_tenants)) == _key(cap)
                    assert cg.quota("calm") == -1
                u1, w1, n1 = cg.usage_seconds("hog"), time.monotonic(), cg.nr_throttled("hog")
                quota = cg.quota("hog")
                if same and _key(_hog_cap(daemon, capped_tenants)) == _key(cap):
                    steady = (cap, (u1 - u0) / (w1 - w0), traffic.p99(w0, w1), quota, n1 - n0)
            settled_after = time.monotonic() - t1
            cap, cores, capped, quota, throttled = steady
            print(f"calm p99 (s, n): idle {idle}, uncapped {uncapped}, capped {capped}; hog "
                  f"{uncapped_cores:.3f} cores uncapped; daemon ready in {started:.1f}s; cap "
                  f"{cap['cores']} steady {settled_after:.1f}s after; hog {cores:.3f} cores, "
                  f"throttled {throttled} times")
            period = int((cg.cpu("hog") / "cpu.cfs_period_us").read_text())
            assert quota == round(cap["cores"] * period), (quota, period, cap)
            assert abs(cores - cap["cores"]) <= 0.1 * cap["cores"], (cores, cap)
            assert throttled >= STEADY_SECONDS / (period / 1e6) / 2, throttled  # most periods
            assert recovered(idle[0], uncapped[0], capped[0]), (idle, uncapped, capped)
            m = daemon.metrics()
            assert m.value("tenantwatch_cpu_cap_cores", tenant="hog") == cap["cores"]
            assert [lab["tenant"] for lab, _ in m.samples("tenantwatch_cpu_cap_cores")] == ["hog"]
            assert m.value("tenantwatch_enforcement_actions_total", tenant="hog", action="cap",
                           mode="enforce") >= 1
            assert m.value("tenantwatch_enforcement_actions_total", tenant="calm") == 0
            # 4. SIGKILL with the cap in force: it stays; release-caps puts the original back.
            # No systemd runs here (PID 1 is not systemd): the closest real equivalent of
            # systemd running ExecStopPost= after the kill is to run the unit file's own
            # ExecStopPost= command line, as written, with the environment systemd gives it
            # (SERVICE_RESULT=signal ...); only the binary and the config path are this
            # test's.
            assert daemon.kill() == -9
            assert cg.quota("hog") == quota
            unit = (REPO / "systemd" / "tenantwatch.service").read_text()
            line = next(x for x in unit.splitlines() if x.startswith("ExecStopPost="))
            argv = shlex.split(line.split("=", 1)[1])
            assert argv[:2] == ["/usr/local/bin/tenantwatch", "release-caps"], argv
            argv[argv.index("--config") + 1] = str(daemon.config_path)
            env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTWATCH_")}
            env.update({"SERVICE_RESULT": "signal", "EXIT_CODE": "killed", "EXIT_STATUS": "KILL"})
            release = tenantwatch_command() + argv[1:]
            out = subprocess.run(release, check=False, capture_output=True, text=True,
                                 timeout=30, env=env)
            assert out.returncode == 0, (out.stdout, out.stderr)
            assert json.loads(out.stdout.splitlines()[-1])["restored"] == ["hog"], out.stdout
            assert cg.quota("hog") == -1
            assert cg.files() == before
            again = subprocess.run(release, check=False, capture_output=True, text=True,
                                   timeout=30, env=env)
            assert again.returncode == 0, (again.stdout, again.stderr)  # twice is harmless
            assert json.loads(again.stdout.splitlines()[-1])["restored"] == [], again.stdout
            assert not traffic.errors, traffic.errors
    finally:
        daemon.stop()
    assert capped_tenants == {"hog"}, capped_tenants
    audit = _audit(daemon)
    first = next(a for a in audit if a["tenant"] == "hog" and a["action"] == "cap")
    assert first["result"] == "done" and first["reason"] == "noisy_neighbour", first  # verdict
    assert first["evidence"]["trusted"] and first["previous_cores"] is None, first
    assert "step_down" in {a["action"] for a in audit if a["tenant"] == "hog"}, audit
    assert all(a["mode"] == "enforce" for a in audit), audit
    assert not [a for a in audit if a["tenant"] == "calm"], audit
    _no_tracebacks(daemon)



def _tenant_rows(daemon: Daemon) -> dict[tuple[str, str], dict]:
    status, doc = daemon.get_json("/api/v1/tenants")
    assert status == 200, doc
    return {(t["side"], t["tenant"]): t for t in doc["tenants"]}


def test_enforce_mode_never_caps_a_tenant_whose_headers_a_forger_sends(stack: Stack) -> None:
    """Enforce mode behind the authenticating location (/a/, as examples/nginx-auth-request.conf):
    hog's clients send their heavy load with hog's key and "X-Tenant-ID: calm",
    "X-Tenant-Context: calm" in every request; calm's clients use calm's key.  The gateway
    writes the authenticated tenant upstream and routes by it, so the load lands on hog's backend.

    Asserted: hog is capped (trusted evidence: enforcement was live), calm's limit files never
    change and calm is never capped or stepped; every audit line about calm is a refusal for
    `untrusted`; upstream, every forged request is hog's and trusted, and calm has exactly its
    own requests; on the client's leg calm is a claim carrying exactly the forged requests,
    never trusted."""
    cg = stack.cgroups
    calm_before = {k: v for k, v in cg.files().items() if k.startswith("calm/")}
    assert cg.quota("hog") == -1 and cg.quota("calm") == -1
    daemon = stack.daemon("forger", "enforce").start()
    capped_tenants: set = set()
    try:
        with Traffic(stack.gateway.listen_port,
                     calm_head=_authenticated_head("calm", CALM_MS),
                     hog_head=_authenticated_head("hog", HOG_MS, forged="calm")) as traffic:
            time.sleep(2)  # calm alone first
            traffic.hog_on.set()
            t0 = time.monotonic()
            while _hog_cap(daemon, capped_tenants) is None:
                assert time.monotonic() - t0 < SETTLE_TIMEOUT, _state(daemon)
                assert {k: v for k, v in cg.files().items() if k.startswith("calm/")} \
                    == calm_before
                time.sleep(0.5)
            capped_after = time.monotonic() - t0
            end = time.monotonic() + 3 * DRY_COOLDOWN  # steps down while the forgery goes on
            while time.monotonic() < end:
                assert {k: v for k, v in cg.files().items() if k.startswith("calm/")} \
                    == calm_before
                _hog_cap(daemon, capped_tenants)
                time.sleep(0.5)
        assert not traffic.errors, traffic.errors
        forged, calm_own = traffic.hog_done, len(traffic.calm)
        deadline = time.monotonic() + 10
        rows = _tenant_rows(daemon)
        while time.monotonic() < deadline and rows.get(("server", "calm"), {}).get(
                "requests") != forged:
            time.sleep(0.3)
            rows = _tenant_rows(daemon)
        m = daemon.metrics()
    finally:
        daemon.stop()
    print(f"forger: hog capped {capped_after:.1f}s after the load began; {forged} forged "
          f"requests, calm's own {calm_own}")
    assert cg.quota("hog") == -1  # restored at stop
    assert {k: v for k, v in cg.files().items() if k.startswith("calm/")} == calm_before
    assert capped_tenants == {"hog"}, capped_tenants
    assert forged > 0 and calm_own > 0
    # upstream (what the gateway authenticated): exact, trusted
    assert rows[("client", "hog")]["requests"] == forged and rows[("client", "hog")]["trusted"]
    assert rows[("client", "calm")]["requests"] == calm_own, rows[("client", "calm")]
    # the client's leg: the forged name is a claim, never trusted
    assert rows[("server", "calm")]["requests"] == forged, rows[("server", "calm")]
    assert rows[("server", "calm")]["trusted"] is False
    assert m.value("tenantwatch_enforcement_actions_total", tenant="calm", mode="enforce",
                   action="cap") == 0
    audit = _audit(daemon)
    first = next(a for a in audit if a["tenant"] == "hog" and a["action"] == "cap")
    assert first["result"] == "done" and first["evidence"]["trusted"], first
    about_calm = [a for a in audit if a["tenant"] == "calm"]
    assert all(a["result"] == "refused" and a["reason"] == "untrusted" for a in about_calm), \
        about_calm
    _no_tracebacks(daemon)
