"""The .deb and the container image, installed on a fresh Debian 12 and run against real nginx.

One root file system is built per module by scripts/build-image.sh (NO_IMPORT=1): mmdebstrap
makes a fresh Debian 12 (bookworm, the apt variant), apt installs python3-bpfcc from the
archive, then the .deb of scripts/build-deb.sh is installed by apt **with the network cut off**
(`unshare -n`): its installation fetches nothing (~20 s, ~460 MB: bcc brings LLVM).

- The .deb (in a chroot of that file system): files where the package says, conffiles
  registered, the unit runs /usr/bin/tenantwatch and reads /etc/default/tenantwatch, a drop-in
  in /etc/tenantwatch/conf.d/ is merged; then the packaged daemon runs from the chroot (a private
  mount namespace with /proc, /sys, /dev, /lib/modules and /usr/src of the host), watches this
  test's nginx, and counts exactly; `apt-get purge` removes config and state.
- The image (podman import of the same file system): run with the settings of
  deploy/kubernetes/daemonset.yaml, read from it (its capabilities, not --privileged; read-only
  root; the host's PID and network namespaces; its host paths), against the same nginx: exact
  counts, exit 0 on `podman stop`.  podman runs with runc and explicit ulimits on this machine (crun refuses its
  hybrid cgroup layout; the open-file hard limit is 20,000): docs/operations.md.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.client import WireClient
from harness.metrics import Metrics
from tests.conftest import _free_port, require, require_root
from tests.e2e.conftest import NGINX_COMM, config_text

REPO = Path(__file__).resolve().parents[2]
VERSION = next(line.split('"')[1] for line in (REPO / "pyproject.toml").read_text().splitlines()
               if line.startswith("version = "))
DEB_NAME = f"tenantwatch_{VERSION}-1_amd64.deb"
IMAGE = f"localhost/tenantwatch-test-{os.getpid()}:{VERSION}"
PODMAN = ["podman", "--runtime", "/usr/sbin/runc"]
PODMAN_LIMITS = ["--ulimit", "nofile=16384:16384", "--ulimit", "nproc=4096:4096"]
READY_S = 90.0


def run(cmd: list[str], timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    assert r.returncode == 0, f"{' '.join(cmd)} exited {r.returncode}\n{r.stdout[-3000:]}\n" \
        f"{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Iterator[tuple[Path, Path]]:
    """(the .deb, the root file system tarball with it installed)."""
    require_root()
    require(shutil.which("mmdebstrap") is not None, "mmdebstrap not installed (make deps)")
    work = tmp_path_factory.mktemp("package")
    env = {**os.environ, "OUT": str(work)}
    run(["bash", str(REPO / "scripts" / "build-deb.sh")], env=env)
    deb = work / DEB_NAME
    tar = work / "rootfs.tar"
    # mmdebstrap downloads from the Debian mirror: one retry for a transient network error
    build = ["bash", str(REPO / "scripts" / "build-image.sh")]
    build_env = {**env, "DEB": str(deb), "TAR": str(tar), "NO_IMPORT": "1"}
    first = subprocess.run(build, capture_output=True, text=True, timeout=900, check=False,
                           env=build_env)
    if first.returncode != 0:
        print(f"build-image.sh failed once, retrying:\n{first.stderr[-2000:]}")
        run(build, timeout=900, env=build_env)
    yield deb, tar


def wait_ready(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"daemon exited {proc.returncode}\n{log.read_text()[-4000:]}",
                        pytrace=False)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    pytest.fail(f"daemon not ready within {READY_S}s\n{log.read_text()[-4000:]}", pytrace=False)


def scrape(port: int) -> Metrics:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return Metrics.parse(r.read().decode())


def traffic_counts_exactly(port: int, gateway_port: int, prefix: str) -> None:
    """Requests of two tenants through the test's nginx; both sides counted exactly."""
    sent = {f"{prefix}-a": 7, f"{prefix}-b": 5}
    with WireClient("127.0.0.1", gateway_port) as c:
        for tenant, n in sent.items():
            for _ in range(n):
                assert c.request(tenant) == 200
    deadline = time.monotonic() + 15
    got: dict = {}
    while time.monotonic() < deadline:
        m = scrape(port)
        got = {side: dict(m.by_tenant(side, prefix)) for side in ("server", "client")}
        if got == {"server": sent, "client": sent}:
            break
        time.sleep(0.5)
    assert got == {"server": sent, "client": sent}
    assert sum(v for _, v in scrape(port).samples("tenantwatch_events_lost_total")) == 0


def test_deb_installs_on_fresh_debian_and_the_packaged_daemon_counts_exactly(
        built, tmp_path, e2e_gateway):
    deb, tar = built
    info = run(["dpkg-deb", "--info", str(deb)]).stdout
    assert "Depends: python3 (>= 3.11), python3 (<< 3.12), python3-bpfcc" in info
    for script in ("postinst", "prerm", "postrm"):
        body = run(["dpkg-deb", "-I", str(deb), script]).stdout
        assert not any(w in body for w in ("pip", "curl", "wget", "http")), (script, body)

    root = tmp_path / "root"
    root.mkdir()
    run(["tar", "-C", str(root), "-xf", str(tar)])

    def chroot(*cmd: str) -> subprocess.CompletedProcess:
        return run(["chroot", str(root), *cmd])

    assert chroot("tenantwatch", "--version").stdout.strip() == f"tenantwatch {VERSION}"
    files = chroot("dpkg", "-L", "tenantwatch").stdout.split()
    for path in ("/usr/bin/tenantwatch", "/lib/systemd/system/tenantwatch.service",
                 "/etc/tenantwatch/tenantwatch.yaml", "/etc/tenantwatch/conf.d",
                 "/etc/default/tenantwatch", "/usr/share/tenantwatch/bpf/http.c",
                 "/usr/lib/tenantwatch/python/tenantwatch/daemon.py",
                 "/usr/share/tenantwatch/dashboards/alerts/tenantwatch.fleet.rules.yml"):
        assert path in files, path
    conffiles = chroot("dpkg-query", "-W", "-f=${Conffiles}", "tenantwatch").stdout
    assert "/etc/tenantwatch/tenantwatch.yaml" in conffiles
    assert "/etc/default/tenantwatch" in conffiles
    unit = (root / "lib/systemd/system/tenantwatch.service").read_text()
    assert "ExecStart=/usr/bin/tenantwatch run --config /etc/tenantwatch/tenantwatch.yaml" in unit
    assert "EnvironmentFile=-/etc/default/tenantwatch" in unit
    assert "/usr/local/bin" not in unit
    # the vendored packages, not the system's: pyjwt >= 2.10.1 (Debian 12 has 2.6.0), and only
    # bcc from the system
    where = chroot("/usr/bin/python3", "-s", "-c",
                   "import sys; sys.path.insert(0, '/usr/lib/tenantwatch/python'); "
                   "import jwt, yaml, bcc; print(jwt.__version__, jwt.__file__, bcc.__file__)"
                   ).stdout.split()
    assert tuple(int(x) for x in where[0].split(".")[:2]) >= (2, 10), where
    assert where[1].startswith("/usr/lib/tenantwatch/python/")
    assert where[2].startswith("/usr/lib/python3/dist-packages/")

    # a drop-in: this test's listen port, targets and sources, merged over the shipped config
    port = _free_port()
    (root / "etc/tenantwatch/conf.d/50-test.yaml").write_text(config_text(port))
    checked = chroot("tenantwatch", "check-config", "--config",
                     "/etc/tenantwatch/tenantwatch.yaml").stdout
    assert f"listen 127.0.0.1:{port}" in checked and f"targets {NGINX_COMM}" in checked, checked

    (root / "lib/modules").mkdir(parents=True, exist_ok=True)
    log = tmp_path / "daemon.log"
    mounts = " && ".join(f"mount --rbind {src} {root}{src}" for src in
                         ("/proc", "/sys", "/dev", "/lib/modules", "/usr/src"))
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             (f"{mounts} && exec chroot {root} /usr/bin/tenantwatch run --config "
              "/etc/tenantwatch/tenantwatch.yaml")],
            stdout=out, stderr=subprocess.STDOUT, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    try:
        wait_ready(port, proc, log)
        traffic_counts_exactly(port, e2e_gateway.listen_port, "pkgdeb")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
    assert rc == 0, log.read_text()[-4000:]

    chroot("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "purge", "-y", "-q",
           "tenantwatch")
    # the package's files and state are gone; the operator's own drop-in stays (dpkg never
    # removes a file it did not install)
    left = {str(p.relative_to(root)) for p in (root / "etc/tenantwatch").rglob("*")}
    assert left == {"etc/tenantwatch/conf.d", "etc/tenantwatch/conf.d/50-test.yaml"}, left
    assert not (root / "etc/default/tenantwatch").exists()
    assert not (root / "var/lib/tenantwatch").exists()
    assert not (root / "usr/bin/tenantwatch").exists()
    assert not (root / "usr/lib/tenantwatch").exists()


def own_capabilities() -> set[str]:
    """Capability names in this process's bounding set (podman cannot grant others)."""
    names = ["CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
             "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST",
             "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO",
             "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
             "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE",
             "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
             "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE"]
    line = next(x for x in Path("/proc/self/status").read_text().splitlines()
                if x.startswith("CapBnd:"))
    mask = int(line.split()[1], 16)
    return {n for i, n in enumerate(names) if mask >> i & 1}


def daemonset_as_podman(conf: Path) -> tuple[list[str], list[str]]:
    """The DaemonSet's container settings (deploy/kubernetes/daemonset.yaml) as podman flags:
    its capabilities (those this machine can grant), read-only root, its host paths; and the
    capabilities left out."""
    import yaml
    doc = yaml.safe_load((REPO / "deploy/kubernetes/daemonset.yaml").read_text())
    pod = doc["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["privileged"] is False and pod["hostPID"] and pod["hostNetwork"]
    grantable = own_capabilities()
    caps = [cap for cap in sc["capabilities"]["add"] if cap in grantable]
    left_out = [cap for cap in sc["capabilities"]["add"] if cap not in grantable]
    flags = ["--cap-drop", "ALL", "--cap-add", ",".join(caps), "--pid=host", "--network=host"]
    if sc.get("readOnlyRootFilesystem"):
        flags += ["--read-only"]
    if sc.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for m in c["volumeMounts"]:
        v = volumes[m["name"]]
        ro = ":ro" if m.get("readOnly") else ""
        if "hostPath" in v and v["hostPath"]["path"] != "/var/lib/tenantwatch":
            flags += ["-v", f"{v['hostPath']['path']}:{m['mountPath']}{ro}"]
        elif "emptyDir" in v:
            flags += ["--tmpfs", m["mountPath"]]
    state = conf.parent / "state"
    state.mkdir()
    flags += ["-v", f"{state}:/var/lib/tenantwatch",
              "-v", f"{conf}:/etc/tenantwatch/tenantwatch.yaml:ro"]
    return flags, left_out


def test_container_image_runs_against_the_host_nginx(built, tmp_path, e2e_gateway):
    """The image, run with the DaemonSet's settings (not --privileged)."""
    require(shutil.which("podman") is not None and Path("/usr/sbin/runc").exists(),
            "podman and runc not installed (make deps)")
    _, tar = built
    run(["bash", str(REPO / "scripts" / "build-image.sh")],
        env={**os.environ, "ROOTFS": str(tar), "IMAGE": IMAGE})
    port = _free_port()
    conf = tmp_path / "tenantwatch.yaml"
    conf.write_text(config_text(port))
    flags, left_out = daemonset_as_podman(conf)
    # CAP_SYS_RESOURCE is only for kernels before 5.11, and this machine cannot grant it
    assert set(left_out) <= {"SYS_RESOURCE"}, left_out
    name = f"tw-test-{os.getpid()}"
    log = tmp_path / "container.log"
    try:
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [*PODMAN, "run", "--rm", "--name", name, *PODMAN_LIMITS, *flags, IMAGE],
                stdout=out, stderr=subprocess.STDOUT)
        wait_ready(port, proc, log)
        traffic_counts_exactly(port, e2e_gateway.listen_port, "pkgimg")
        run([*PODMAN, "stop", "--time", "30", name], timeout=60)
        assert proc.wait(30) == 0, log.read_text()[-4000:]
    finally:
        subprocess.run([*PODMAN, "rm", "-f", name], capture_output=True, timeout=60, check=False)
        subprocess.run([*PODMAN, "rmi", "-f", IMAGE], capture_output=True, timeout=60,
                       check=False)
