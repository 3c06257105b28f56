"""One kernel's check, run inside a guest (tests/vm/harness.py) or directly on this machine.

    .venv/bin/python -m tests.vm.guest_check [--cgroup-v2] [--forced-fallbacks] [--only STEPS]

from the repository root (tests/vm/test_matrix.py runs it so), which puts tenantwatch and the
harness on the path.

Steps (each one recorded, a failure in one does not skip the others):
  load      every BPF program of bpf/http.c compiles, loads and attaches (HttpProbes.load), and
            which paths ran: probe_read_user / probe_read (>= 5.5), ring buffer / perf buffer
            (>= 5.8: HttpProbes.event_path, "ring memory": read from the rings' memory on
            x86-64), batch / per-key drain (>= 5.6: drain_path after a drain)
  counts    a known workload (Backend <- Gateway <- drive, loopback) gives exact per-tenant
            counts on both sides: server (client -> nginx, X-Tenant-ID) and client (nginx ->
            Backend, X-Tenant-Context), the latter also equal to what the Backend received
  forced    (--forced-fallbacks) the same workload with every fallback forced on this kernel:
            probe_read, perf buffer, per-key drain -- the paths a kernel older than 5.5 takes
  daemon    `tenantwatch run --config` starts, answers /readyz 200, counts a small workload
            exactly in /metrics, and exits 0 on SIGTERM
  cgroup    (--cgroup-v2) a busy loop in a cgroup v2 child capped at 0.2 cores through cpu.max
            (the enforcement V2Writer when it exists) uses 0.2 cores +-10% over ~3 s

Prints progress lines, then one line `TW_RESULT {json}`; exits 0 only when every step passed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

from harness.backend import Backend, RecordingBackend
from harness.client import WireClient
from harness.gateway import Gateway, find_nginx
from harness.metrics import parse_metrics
from harness.traffic import drive
from tenantwatch.kernel import loader
from tenantwatch.kernel.loader import HttpProbes, KernelSource
from tenantwatch.kernel.records import STATUS_CLASSES, Side

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
# The known workload: requests per X-Tenant-ID (None: no header). nginx maps a missing header to
# "common" upstream; every request is a 200.
WORKLOAD = {"alpha": 23, "beta": 7, "gamma": 11, None: 3}
DAEMON_WORKLOAD = {"delta": 9, "epsilon": 4}
DEFAULT_TENANT = "common"
CGROUP_ROOT = "/sys/fs/cgroup"
CGROUP_CAP = 0.2
CGROUP_WINDOW = 3.0
CGROUP_TOLERANCE = 0.10
# comm of the nginx processes this check starts (<= 15 bytes, unique per run): only they are
# traced, even on a machine with other nginx instances.
NGINX_COMM = f"tw-vm-{os.getpid()}"[:15]


def log(msg: str) -> None:
    print(f"[guest_check {time.monotonic() - T0:7.1f}s] {msg}", flush=True)


T0 = time.monotonic()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def nginx_binary(workdir: Path) -> str:
    link = workdir / NGINX_COMM
    if not link.exists():
        link.symlink_to(os.path.realpath(find_nginx()))
    return str(link)


def make_probes(tls: bool = False) -> HttpProbes:
    return HttpProbes(
        sources=[KernelSource("x-tenant-context", (Side.CLIENT,)),
                 KernelSource("x-tenant-id", (Side.SERVER,))],
        process_names=[NGINX_COMM],
        latency_bounds_seconds=(0.001, 0.01, 0.1, 1.0),
        tls=tls,
    )


def expected_sides(workload: dict) -> dict:
    """{side: {value: {status_class: n}}} for a workload of 200s."""
    server: dict = {}
    client: dict = {}
    for tenant, n in workload.items():
        s = server.setdefault("" if tenant is None else tenant, Counter())
        s["2xx"] += n
        c = client.setdefault(DEFAULT_TENANT if tenant is None else tenant, Counter())
        c["2xx"] += n
    return {"server": {k: dict(v) for k, v in server.items()},
            "client": {k: dict(v) for k, v in client.items()}}


class Tally:
    """Accumulates drained identity counts: {side: {value: Counter(status_class)}}."""

    def __init__(self) -> None:
        self.sides: dict[str, dict[str, Counter]] = {"server": {}, "client": {}}
        self.lost: Counter = Counter()

    def add(self, tick) -> None:
        for c in tick.identities:
            if not any(c.requests_by_class):
                continue
            value = "<unknown>" if c.raw_value is None else c.raw_value.decode("utf-8", "replace")
            cls = self.sides[c.side.value].setdefault(value, Counter())
            for name, n in zip(STATUS_CLASSES, c.requests_by_class):
                if n:
                    cls[name] += n
        self.lost.update(tick.lost)

    def total(self) -> int:
        return sum(sum(c.values()) for side in self.sides.values() for c in side.values())

    def plain(self) -> dict:
        return {side: {k: dict(v) for k, v in values.items()} for side, values in
                self.sides.items()}


def run_workload(probes: HttpProbes, workdir: Path, workload: dict, seed: int) -> dict:
    """Drive `workload` through a fresh Backend + nginx traced by `probes`; compare."""
    out: dict = {"ok": False}
    expected = expected_sides(workload)
    with RecordingBackend() as backend:
        gw = Gateway(workdir / f"nginx-{seed}", _free_port(), backend.port, workers=2,
                     nginx=nginx_binary(workdir))
        gw.start(timeout=60)
        try:
            pids = set(gw.our_pids())
            probes.set_targets(pids)
            probes.drain()  # start from zero: nginx's start-up is not part of the workload
            backend.reset()
            t = time.monotonic()
            results = drive(HOST, gw.listen_port, workload, connections=4, seed=seed,
                            timeout=30, deadline=300)
            out["drive_seconds"] = round(time.monotonic() - t, 1)
            out["statuses"] = {f"{k[0]}:{k[1]}": n for k, n in results.items()}
            want_total = 2 * sum(workload.values())
            tally = Tally()
            deadline = time.monotonic() + 30
            # Drain until every request is counted on both sides, then once more (late counts).
            while True:
                time.sleep(0.3)
                tally.add(probes.drain())
                if tally.total() >= want_total or time.monotonic() > deadline:
                    break
            time.sleep(0.5)
            tally.add(probes.drain())
            out["expected"] = expected
            out["got"] = tally.plain()
            out["backend"] = dict(backend.received)
            out["lost"] = dict(tally.lost)
            sent_ok = all(status == 200 for (_t, status) in results) and \
                sum(results.values()) == sum(workload.values())
            backend_ok = dict(backend.received) == {
                k: sum(v.values()) for k, v in expected["client"].items()}
            out["ok"] = bool(sent_ok and backend_ok and out["got"] == expected)
            if not out["ok"]:
                out["error"] = ("not all requests got 200" if not sent_ok else
                                "backend received something else" if not backend_ok else
                                "kernel counts differ from the workload")
        finally:
            probes.set_targets(set())
            gw.stop()
    return out


def step_load(state: dict) -> dict:
    t = time.monotonic()
    p = make_probes(tls=True)  # every program: the libssl uprobes and the kprobe-type copies too
    p.load()
    state["probes"] = p
    out = {
        "seconds": round(time.monotonic() - t, 1),
        "probes": len(p.probes),
        "attached": sum(p.probes.values()),
        "missing": [name for name, ok in p.probes.items() if not ok],
        "tail_calls": p.tail_calls(),
        "tail_calls_expected": tail_programs(p),
        "tls_tail_calls": p.tail_calls("tw_progs_k"),
        "window": getattr(p, "window", None),
    }
    p.drain()
    out["paths"] = paths_of(p)
    out["ok"] = (out["probes"] > 20 and not out["missing"]
                 and out["tail_calls"] == out["tail_calls_expected"]
                 and out["tls_tail_calls"] == out["tail_calls_expected"])
    return out


def tail_programs(p: HttpProbes) -> int:
    """How many programs the module puts in tw_progs (TW_NPROGS of bpf/include/tw_state.h:
    tw_parse, tw_token, tw_token_emit, tw_h2): every one of them must have loaded."""
    m = re.search(r"^#define\s+TW_NPROGS\s+(\d+)",
                  (p.source_path().parent / "include" / "tw_state.h").read_text(), re.MULTILINE)
    return int(m.group(1)) if m else 1


def paths_of(p: HttpProbes) -> dict:
    return {
        "probe_read": ("probe_read_user" if "-DTW_HAVE_PROBE_READ_USER=1" in p.cflags()
                       else "probe_read"),
        "events": p.event_path,
        "drain": p.drain_path,
    }


def step_counts(state: dict, workdir: Path) -> dict:
    p = state.get("probes")
    if p is None:
        return {"ok": False, "error": "probes did not load"}
    try:
        out = run_workload(p, workdir, WORKLOAD, seed=1)
        out["big_heads"] = run_big_heads(p, workdir)
        out["ok"] = bool(out["ok"] and out["big_heads"]["ok"])
        return out
    finally:
        p.close()
        state.pop("probes", None)


BIG_HEAD_TENANTS = ("big-a", "big-b", "big-c")
BIG_HEAD_PADS = (("Cookie", "c" * 7600), ("X-Pad", "p" * 7600))  # ~15.4 KiB, under nginx's
#                                                      4 x 8 KiB large_client_header_buffers


def run_big_heads(probes: HttpProbes, workdir: Path) -> dict:
    """Request heads of about 16 KiB through nginx, the identity after the pads: the whole head
    is parsed on this kernel's verifier (nginx writes it upstream in one syscall), so both sides
    count every request under its tenant and nothing is lost."""
    out: dict = {"ok": False}
    with Backend() as backend:
        gw = Gateway(workdir / "nginx-big", _free_port(), backend.port, workers=1,
                     nginx=nginx_binary(workdir))
        gw.start(timeout=60)
        try:
            probes.set_targets(set(gw.our_pids()))
            probes.drain()
            statuses: Counter = Counter()
            with WireClient(HOST, gw.listen_port, timeout=30) as c:
                for t in BIG_HEAD_TENANTS * 2:
                    statuses[c.request(t, headers=BIG_HEAD_PADS)] += 1
            tally = Tally()
            deadline = time.monotonic() + 30
            want = 2 * 2 * len(BIG_HEAD_TENANTS)
            while tally.total() < want and time.monotonic() < deadline:
                time.sleep(0.3)
                tally.add(probes.drain())
            expected = {side: {t: {"2xx": 2} for t in BIG_HEAD_TENANTS}
                        for side in ("server", "client")}
            out.update(statuses=dict(statuses), got=tally.plain(), lost=dict(tally.lost))
            out["ok"] = bool(statuses == Counter({200: want // 2}) and out["got"] == expected
                             and not tally.lost)
        finally:
            probes.set_targets(set())
            gw.stop()
    return out


def step_forced(workdir: Path) -> dict:
    """Every fallback forced on this kernel: what a kernel < 5.5 runs."""
    real = loader.kernel_version
    loader.kernel_version = lambda release=None: (5, 4)  # no probe_read_user, no ring buffer
    try:
        p = make_probes()
        forced_flags = p.cflags()
        p._batch_ok = False  # the per-key drain, as after a failed batch call on a kernel < 5.6
        t = time.monotonic()
        try:
            p.load()
        finally:
            loader.kernel_version = real
        out = {"seconds": round(time.monotonic() - t, 1),
               "missing": [name for name, ok in p.probes.items() if not ok]}
        p.drain()
        paths = paths_of(p)
        paths["probe_read"] = ("probe_read_user" if "-DTW_HAVE_PROBE_READ_USER=1" in forced_flags
                               else "probe_read")
        out["paths"] = paths
        out.update({k: v for k, v in run_workload(p, workdir, WORKLOAD, seed=2).items()
                    if k not in ("expected",)})
        out["ok"] = bool(out["ok"] and not out["missing"] and paths == {
            "probe_read": "probe_read", "events": "perf buffer", "drain": "per-key"})
        return out
    finally:
        loader.kernel_version = real
        if "p" in locals():
            p.close()


# ---------------------------------------------------------------- daemon

CONFIG = """\
listen: "127.0.0.1:{port}"
targets: [{{process: {process}}}]
capture: {{tick_seconds: 0.5}}
tenancy:
  sources:
    - {{header: X-Tenant-Context, side: client, trusted: true}}
    - {{header: X-Tenant-ID, side: server}}
"""


def metrics_counts(port: int) -> dict:
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as r:
        samples = parse_metrics(r.read().decode())
    out: dict = {"server": Counter(), "client": Counter()}
    for side, counts in out.items():
        for labels, value in samples.get(f"tenantwatch_http_{side}_requests_total", []):
            n = int(value)
            if n:
                counts[labels.get("tenant", "?")] += n
    return {k: dict(v) for k, v in out.items()}


def http_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def tenantwatch_command() -> list[str]:
    exe = REPO / ".venv" / "bin" / "tenantwatch"
    if exe.exists():
        return [str(exe)]
    venv_py = REPO / ".venv" / "bin" / "python"
    return [str(venv_py if venv_py.exists() else sys.executable), "-m", "tenantwatch.cli"]


def step_daemon(workdir: Path) -> dict:
    out: dict = {"ok": False}
    port = _free_port()
    cfg = workdir / "tenantwatch.yaml"
    cfg.write_text(CONFIG.format(port=port, process=NGINX_COMM))
    logf = workdir / "tenantwatch.log"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TENANTWATCH_") or k == "TENANTWATCH_BPF_DIR"}
    env["PYTHONUNBUFFERED"] = "1"
    with RecordingBackend() as backend:
        gw = Gateway(workdir / "nginx-daemon", _free_port(), backend.port, workers=2,
                     nginx=nginx_binary(workdir))
        gw.start(timeout=60)
        proc = None
        try:
            t = time.monotonic()
            with open(logf, "wb") as f:
                proc = subprocess.Popen(tenantwatch_command() + ["run", "--config", str(cfg)],
                                        stdin=subprocess.DEVNULL, stdout=f,
                                        stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
            ready = False
            while time.monotonic() - t < 600:
                if proc.poll() is not None:
                    out["error"] = f"exited {proc.returncode} before it was ready"
                    break
                try:
                    if http_status(port, "/readyz") == 200:
                        ready = True
                        break
                except OSError:
                    pass
                time.sleep(0.2)
            out["ready"] = ready
            out["ready_seconds"] = round(time.monotonic() - t, 1)
            if ready:
                backend.reset()
                results = drive(HOST, gw.listen_port, DAEMON_WORKLOAD, connections=2, seed=3,
                                timeout=30, deadline=300)
                want = {side: {t: sum(c.values()) for t, c in v.items()}
                        for side, v in expected_sides(DAEMON_WORKLOAD).items()}
                got = {}
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    got = metrics_counts(port)
                    if got == want:
                        break
                    time.sleep(0.5)
                time.sleep(1.5)  # three more ticks: nothing counted late
                got = metrics_counts(port)
                out["counts_expected"] = want
                out["counts_got"] = got
                out["counts_ok"] = got == want and all(s == 200 for (_t, s) in results)
            t = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                out["exit"] = proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                out["exit"] = None
                out["error"] = "did not stop within 120 s of SIGTERM"
            out["stop_seconds"] = round(time.monotonic() - t, 1)
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()  # our own child, by its pid
                proc.wait(30)
            gw.stop()
    text = logf.read_text(errors="replace")
    errors = [line for line in text.splitlines()
              if line.startswith(("ERROR", "CRITICAL")) or "Traceback" in line]
    out["log_errors"] = errors[:5]
    out["ok"] = bool(out.get("ready") and out.get("counts_ok") and out.get("exit") == 0
                     and not errors)
    if not out["ok"]:
        out["log_tail"] = text[-3000:]
    return out


# ---------------------------------------------------------------- cgroup v2


def _usage_usec(path: str) -> int:
    with open(os.path.join(path, "cpu.stat")) as f:
        for line in f:
            k, _, v = line.partition(" ")
            if k == "usage_usec":
                return int(v)
    raise RuntimeError(f"{path}/cpu.stat has no usage_usec")


def step_cgroup() -> dict:
    out: dict = {"ok": False, "cap_cores": CGROUP_CAP}
    root = CGROUP_ROOT
    path = os.path.join(root, "tw-test")
    with open(os.path.join(root, "cgroup.controllers")) as f:
        controllers = f.read().split()
    out["controllers"] = controllers
    if "cpu" not in controllers:
        out["error"] = "cgroup v2 root has no cpu controller"
        return out
    with open(os.path.join(root, "cgroup.subtree_control"), "w") as f:
        f.write("+cpu")
    os.makedirs(path, exist_ok=True)
    writer = None
    try:
        from tenantwatch.enforcement.cgroupfs import CgroupWriter, V2Writer
        writer = CgroupWriter.for_path(path, root)
        if not isinstance(writer, V2Writer):
            raise TypeError(f"CgroupWriter.for_path gave {type(writer).__name__}, not V2Writer")
        out["writer"] = "tenantwatch.enforcement.cgroupfs.V2Writer"
    except ImportError:
        out["writer"] = "direct write of cpu.max (no tenantwatch.enforcement.cgroupfs.V2Writer)"
    busy = subprocess.Popen(
        ["/bin/sh", "-c", (f"echo $$ > {path}/cgroup.procs && exec {sys.executable} -c "
                           "'while True: pass'")])
    try:
        time.sleep(1.0)
        with open(os.path.join(path, "cgroup.procs")) as f:
            members = [int(x) for x in f.read().split()]
        if busy.pid not in members:
            raise RuntimeError(f"busy loop {busy.pid} not in {path}: {members}")
        # uncapped, for comparison: the loop must be able to use much more than the cap
        u0, t0 = _usage_usec(path), time.monotonic()
        time.sleep(1.5)
        out["uncapped_cores"] = round((_usage_usec(path) - u0) / 1e6 / (time.monotonic() - t0), 3)
        if writer is not None:
            before = writer.read_limit()
            limit = writer.write_cap(CGROUP_CAP)
            out["limit"] = f"{limit.quota_us} {limit.period_us}"
        else:
            with open(os.path.join(path, "cpu.max"), "w") as f:
                f.write(f"{round(CGROUP_CAP * 100000)} 100000")
        with open(os.path.join(path, "cpu.max")) as f:
            out["cpu_max"] = f.read().strip()
        time.sleep(1.0)  # ten full periods under the cap before measuring
        u0, t0 = _usage_usec(path), time.monotonic()
        time.sleep(CGROUP_WINDOW)
        u1, t1 = _usage_usec(path), time.monotonic()
        cores = (u1 - u0) / 1e6 / (t1 - t0)
        out["measured_cores"] = round(cores, 4)
        out["window_seconds"] = round(t1 - t0, 2)
        with open(os.path.join(path, "cpu.stat")) as f:
            stat = dict(line.split() for line in f if line.strip())
        out["nr_throttled"] = int(stat.get("nr_throttled", 0))
        if writer is not None:
            writer.restore(before)
        out["ok"] = bool(abs(cores - CGROUP_CAP) <= CGROUP_TOLERANCE * CGROUP_CAP
                         and out["uncapped_cores"] > 2 * CGROUP_CAP)
        if not out["ok"]:
            out["error"] = (f"measured {cores:.3f} cores under a {CGROUP_CAP} cap "
                            f"(uncapped {out['uncapped_cores']})")
    finally:
        busy.kill()  # our own child, by its pid
        busy.wait(10)
        for _ in range(50):
            try:
                os.rmdir(path)
                break
            except OSError:
                time.sleep(0.1)
    return out


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cgroup-v2", action="store_true", help="run the cgroup v2 cpu.max check")
    ap.add_argument("--forced-fallbacks", action="store_true",
                    help="also run the workload with every fallback path forced")
    ap.add_argument("--only", default="",
                    help="comma-separated steps to run (load,counts,forced,daemon,cgroup)")
    args = ap.parse_args()

    result: dict = {"kernel": platform.release(), "steps": {}}
    state: dict = {}
    # The cgroup check first, while the guest is otherwise idle (nothing else competes for the
    # two vCPUs of a software-emulated guest).
    steps = [("cgroup", step_cgroup)] if args.cgroup_v2 else []
    steps.append(("load", lambda: step_load(state)))
    with tempfile.TemporaryDirectory(prefix="tw-vm-check-") as d:
        workdir = Path(d)
        steps.append(("counts", lambda: step_counts(state, workdir)))
        if args.forced_fallbacks:
            steps.append(("forced", lambda: step_forced(workdir)))
        steps.append(("daemon", lambda: step_daemon(workdir)))
        if args.only:
            only = set(args.only.split(","))
            steps = [(n, f) for n, f in steps if n in only]
        for name, fn in steps:
            log(f"{name} ...")
            t = time.monotonic()
            try:
                r = fn()
            except Exception as e:  # noqa: BLE001 - every failure is reported, not raised
                r = {"ok": False, "error": f"{type(e).__name__}: {e}",
                     "traceback": traceback.format_exc()[-4000:]}
            r["step_seconds"] = round(time.monotonic() - t, 1)
            result["steps"][name] = r
            log(f"{name}: {'ok' if r.get('ok') else 'FAILED'} ({r['step_seconds']}s)")
            if not r.get("ok"):
                log(json.dumps(r, indent=1, default=str)[:6000])
        state.get("probes") and state["probes"].close()
    result["seconds"] = round(time.monotonic() - T0, 1)
    result["ok"] = all(s.get("ok") for s in result["steps"].values())
    print("TW_RESULT " + json.dumps(result, sort_keys=True, default=str), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
