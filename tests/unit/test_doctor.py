"""tenantwatch.doctor against fixture trees: a fake /proc and a fake / in tmp_path (no root)."""

from __future__ import annotations

import io
import re
import sys
import types
from pathlib import Path

import pytest

from tenantwatch import doctor
from tenantwatch.doctor import PROBE_TRACEPOINTS, probe_tracepoints, run_doctor

RELEASE = "6.1.0-56-amd64"
CUSTOM = "6.18.44-fc-v595"
ALL_CAPS = "000001ffffffffff"
NO_CAPS = "0000000000000000"
REPO = Path(__file__).resolve().parents[2]


def _cap_mask(*caps: int) -> str:
    return f"{sum(1 << c for c in caps):016x}"


def _fake_bcc() -> object:
    return types.SimpleNamespace(BPF=object, __version__="0.26.0", __file__="/fake/bcc/__init__.py")


def _no_bcc() -> object:
    raise ImportError("No module named 'bcc'")


def _touch(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


class Machine:
    """A fixture machine: `proc` and `root` trees under tmp_path, fine by default."""

    def __init__(self, tmp_path: Path, release: str = RELEASE) -> None:
        self.proc = tmp_path / "proc"
        self.root = tmp_path / "root"
        self.release = release
        self.status(uid=0, cap_eff=ALL_CAPS)
        _touch(self.proc / "pressure" / "cpu", "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
        _touch(self.root / "etc" / "os-release",
               'NAME="Debian GNU/Linux"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n')
        self.tracefs("sys/kernel/tracing")
        _touch(self.root / "sys" / "kernel" / "btf" / "vmlinux")
        self.cgroup_v2(cpu=True)
        self.usr_src("linux-headers-6.1.0-56-amd64", "linux-headers-6.1.0-56-common")
        moddir = self.root / "lib" / "modules" / release
        moddir.mkdir(parents=True)
        (moddir / "build").symlink_to(self.root / "usr/src/linux-headers-6.1.0-56-amd64")
        (moddir / "source").symlink_to(self.root / "usr/src/linux-headers-6.1.0-56-common")

    # ------------------------------------------------------------------ builders

    def status(self, *, uid: int, cap_eff: str) -> None:
        _touch(self.proc / "self" / "status",
               f"Name:\tpython3\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t0\t0\t0\t0\n"
               f"CapInh:\t0000000000000000\nCapPrm:\t{cap_eff}\nCapEff:\t{cap_eff}\n"
               f"CapBnd:\t{ALL_CAPS}\n")

    def tracefs(self, rel: str, skip: tuple[str, ...] = ()) -> None:
        events = self.root / rel / "events"
        events.mkdir(parents=True)
        for cat, name in probe_tracepoints():
            if name not in skip:
                (events / cat / name).mkdir(parents=True)

    def cgroup_v2(self, *, cpu: bool, at: str = "") -> None:
        controllers = "cpuset cpu io memory pids" if cpu else "cpuset io memory pids"
        _touch(self.root / "sys" / "fs" / "cgroup" / at / "cgroup.controllers", controllers + "\n")

    def cgroup_v1_cpu(self, name: str = "cpu") -> None:
        _touch(self.root / "sys" / "fs" / "cgroup" / name / "cpu.cfs_quota_us", "-1\n")

    def no_cgroups(self) -> None:
        for p in sorted((self.root / "sys" / "fs" / "cgroup").rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()

    def usr_src(self, *names: str) -> None:
        for n in names:
            (self.root / "usr" / "src" / n / "include").mkdir(parents=True)

    def drop_headers(self) -> None:
        moddir = self.root / "lib" / "modules" / self.release
        for link in ("build", "source"):
            (moddir / link).unlink()

    # ------------------------------------------------------------------ run

    def run(self, **kw) -> tuple[int, str]:
        kw.setdefault("import_bcc", _fake_bcc)
        kw.setdefault("release", self.release)
        out = io.StringIO()
        rc = run_doctor(out, proc=str(self.proc), sys_root=str(self.root), **kw)
        return rc, out.getvalue()


@pytest.fixture(autouse=True)
def _deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pin what the doctor reads from the real process and machine."""
    monkeypatch.setattr(doctor.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(doctor, "_memlock_limit", lambda: doctor.resource.RLIM_INFINITY)


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    return Machine(tmp_path)


def lines_with(text: str, tag: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith(tag)]


def block(text: str, needle: str) -> str:
    """The result line containing `needle` and its fix lines."""
    lines = text.splitlines()
    for i, ln in enumerate(lines):
        if needle in ln and ln.startswith("["):
            out = [ln]
            for nxt in lines[i + 1:]:
                if not nxt.startswith(" " * 7 + "fix: "):
                    break
                out.append(nxt)
            return "\n".join(out)
    raise AssertionError(f"no result line with {needle!r} in:\n{text}")


# ---------------------------------------------------------------------- whole runs


def test_everything_fine_exits_0(machine: Machine) -> None:
    rc, text = machine.run()
    assert rc == 0, text
    assert lines_with(text, "[FAIL]") == []
    assert lines_with(text, "[warn]") == []
    assert "[ ok ] privileges: root" in text
    assert "[ ok ] bcc: importable (version 0.26.0" in text
    assert (f"[ ok ] kernel headers: /lib/modules/{RELEASE}/build -> "
            "/usr/src/linux-headers-6.1.0-56-amd64") in text
    assert "[ ok ] tracefs: /sys/kernel/tracing" in text
    assert f"[ ok ] tracepoints: all {len(probe_tracepoints())} the probes use exist" in text
    assert "[ ok ] BTF: /sys/kernel/btf/vmlinux present" in text
    assert "[ ok ] PSI:" in text
    assert "kprobes: not available (not needed: tenantwatch uses only tracepoints and uprobes)" \
        in text


def test_header_line_names_release_distro_and_python(machine: Machine) -> None:
    _, text = machine.run()
    first = text.splitlines()[0]
    assert RELEASE in first
    assert "Debian GNU/Linux 12 (bookworm)" in first
    assert f"Python {sys.version_info.major}.{sys.version_info.minor}." in first


def test_every_line_is_header_result_or_fix(machine: Machine) -> None:
    machine.drop_headers()
    machine.status(uid=1000, cap_eff=NO_CAPS)
    rc, text = machine.run(import_bcc=_no_bcc)
    assert rc == 1
    pattern = re.compile(r"^(\[ ok \]|\[info\]|\[warn\]|\[FAIL\]) +\S|^ {7}fix: \S")
    for ln in text.splitlines()[1:]:
        assert pattern.match(ln), ln
    # Every FAIL says how to fix it.
    lines = text.splitlines()
    for i, ln in enumerate(lines):
        if ln.startswith("[FAIL]"):
            assert lines[i + 1].startswith("       fix: "), ln


def test_default_out_is_stdout(machine: Machine, capsys: pytest.CaptureFixture[str]) -> None:
    rc = run_doctor(proc=str(machine.proc), sys_root=str(machine.root), release=RELEASE,
                    import_bcc=_fake_bcc)
    assert rc == 0
    assert "[ ok ] privileges: root" in capsys.readouterr().out


def test_a_raising_check_becomes_a_fail_line(machine: Machine,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(env: object) -> list:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(doctor, "CHECKS", (("boom", boom),) + doctor.CHECKS)
    rc, text = machine.run()
    assert rc == 1
    assert "[FAIL] boom: check failed: RuntimeError: kaboom" in text
    assert "[ ok ] privileges: root" in text  # the rest still ran


# ---------------------------------------------------------------------- 1. kernel version


def test_old_kernel_fails_and_reports_missing_features(tmp_path: Path) -> None:
    m = Machine(tmp_path, release="4.19.0")
    rc, text = m.run()
    assert rc == 1
    assert "[FAIL] kernel 4.19.0 is older than 5.4" in text
    assert "fix: boot a kernel >= 5.4" in text
    assert "[info]   bpf_probe_read_user (>= 5.5): not available" in text
    assert "[info]   batch map operations (>= 5.6): not available" in text
    assert "[info]   BPF ring buffer (>= 5.8): not available" in text


@pytest.mark.parametrize(("release", "available"), [
    ("5.4.0-150-generic", ()),
    ("5.5.0", ("bpf_probe_read_user",)),
    ("5.10.0-30-amd64", ("bpf_probe_read_user", "batch map operations", "BPF ring buffer")),
])
def test_kernel_features_by_version(tmp_path: Path, release: str,
                                    available: tuple[str, ...]) -> None:
    _, text = Machine(tmp_path, release=release).run()
    assert f"[ ok ] kernel {release} >= 5.4" in text
    for name in ("bpf_probe_read_user", "batch map operations", "BPF ring buffer"):
        tag = "[ ok ]" if name in available else "[info]"
        assert f"{tag}   {name} (>= " in text, (name, text)


def test_unparseable_release_fails(tmp_path: Path) -> None:
    rc, text = Machine(tmp_path, release="weird").run()
    assert rc == 1
    assert "[FAIL] kernel: cannot parse release 'weird'" in text


def test_parse_release() -> None:
    assert doctor.parse_release(CUSTOM) == (6, 18, 44)
    assert doctor.parse_release("5.10") == (5, 10, 0)
    assert doctor.parse_release("x") is None


# ---------------------------------------------------------------------- 2. privileges


def test_non_root_without_caps_fails(machine: Machine) -> None:
    machine.status(uid=1000, cap_eff=NO_CAPS)
    rc, text = machine.run()
    assert rc == 1
    b = block(text, "privileges:")
    assert b.startswith("[FAIL] privileges: uid 1000 cannot load BPF programs")
    assert "fix: run as root" in b
    assert "systemd unit" in b


def test_root_without_caps_fails_naming_container(machine: Machine) -> None:
    machine.status(uid=0, cap_eff=NO_CAPS)
    rc, text = machine.run()
    assert rc == 1
    b = block(text, "privileges:")
    assert "[FAIL] privileges: running as root but the capabilities" in b
    assert "--cap-add SYS_ADMIN" in b


def test_root_with_sys_admin_only_is_ok(machine: Machine) -> None:
    machine.status(uid=0, cap_eff=_cap_mask(doctor.CAP_SYS_ADMIN))
    rc, text = machine.run()
    assert rc == 0, text
    assert "[ ok ] privileges: root (CAP_SYS_ADMIN)" in text


def test_non_root_with_bpf_and_perfmon_warns(machine: Machine) -> None:
    machine.status(uid=1000, cap_eff=_cap_mask(doctor.CAP_BPF, doctor.CAP_PERFMON))
    rc, text = machine.run()
    assert rc == 0, text
    b = block(text, "privileges:")
    assert b.startswith("[warn] privileges: uid 1000 with CAP_BPF, CAP_PERFMON")
    assert "CAP_DAC_READ_SEARCH" in b


def test_bpf_without_perfmon_fails(machine: Machine) -> None:
    machine.status(uid=1000, cap_eff=_cap_mask(doctor.CAP_BPF))
    rc, _ = machine.run()
    assert rc == 1


def test_unreadable_status_is_a_fail_line_not_a_crash(machine: Machine) -> None:
    (machine.proc / "self" / "status").unlink()
    rc, text = machine.run()
    assert rc == 1
    assert "[FAIL] privileges: check failed: FileNotFoundError" in text


# ---------------------------------------------------------------------- 3. bcc


def test_bcc_missing_fails_with_apt_fix(machine: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "prefix", "/usr")
    monkeypatch.setattr(sys, "base_prefix", "/usr")
    rc, text = machine.run(import_bcc=_no_bcc)
    assert rc == 1
    b = block(text, "bcc:")
    assert "[FAIL] bcc: cannot import (ImportError: No module named 'bcc')" in b
    assert "fix: apt-get install python3-bpfcc" in b
    assert "--system-site-packages" not in b


def test_bcc_missing_in_venv_without_system_site(machine: Machine, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    venv = tmp_path / "venv"
    _touch(venv / "pyvenv.cfg", "home = /usr/bin\ninclude-system-site-packages = false\n")
    monkeypatch.setattr(sys, "prefix", str(venv))
    monkeypatch.setattr(sys, "base_prefix", "/usr")
    _, text = machine.run(import_bcc=_no_bcc)
    b = block(text, "bcc:")
    assert f"/usr/bin/python3 -m venv --system-site-packages {venv}" in b


def test_bcc_missing_on_a_non_system_python(machine: Machine,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "prefix", "/root/.pyenv/versions/3.12.3")
    monkeypatch.setattr(sys, "base_prefix", "/root/.pyenv/versions/3.12.3")
    _, text = machine.run(import_bcc=_no_bcc)
    assert "is not the system one: python3-bpfcc installs into /usr/bin/python3" in \
        block(text, "bcc:")


def test_pypi_bcc_is_not_the_bpf_one(machine: Machine) -> None:
    rc, text = machine.run(import_bcc=lambda: types.SimpleNamespace(__file__="/x/bcc.py"))
    assert rc == 1
    assert "fix: pip uninstall bcc" in block(text, "bcc:")


@pytest.mark.parametrize(("cfg", "expected"), [
    ("include-system-site-packages = false\n", True),
    ("include-system-site-packages = true\n", False),
    ("home = /usr/bin\n", True),
])
def test_venv_without_system_site(tmp_path: Path, cfg: str, expected: bool) -> None:
    _touch(tmp_path / "pyvenv.cfg", cfg)
    assert doctor._venv_without_system_site(str(tmp_path), "/usr") is expected
    assert doctor._venv_without_system_site("/usr", "/usr") is False


# ---------------------------------------------------------------------- 4. kernel headers


def test_missing_headers_shows_both_fixes_with_real_dirs(tmp_path: Path) -> None:
    m = Machine(tmp_path, release=CUSTOM)
    m.drop_headers()
    m.usr_src("linux-headers-6.1.0-55-amd64", "linux-headers-6.1.0-55-common", "linux-kbuild-6.1")
    rc, text = m.run()
    assert rc == 1
    b = block(text, "kernel headers:")
    assert b.startswith(f"[FAIL] kernel headers: /lib/modules/{CUSTOM}/build is missing")
    assert f"fix: apt-get install linux-headers-{CUSTOM}" in b
    assert "fix: if that package does not exist (custom kernel): " in b
    # The newest -amd64 directory found, and its -common sibling; no install step (already there).
    assert (f"ln -s /usr/src/linux-headers-6.1.0-56-amd64 /lib/modules/{CUSTOM}/build") in b
    assert (f"ln -s /usr/src/linux-headers-6.1.0-56-common /lib/modules/{CUSTOM}/source") in b
    assert "apt-get install linux-headers-amd64" not in b
    assert "scripts/install-deps.sh" in b
    assert str(tmp_path) not in b  # paths as typed on the machine, not fixture paths


def test_missing_headers_without_usr_src_uses_placeholders(tmp_path: Path) -> None:
    m = Machine(tmp_path, release=CUSTOM)
    m.drop_headers()
    for d in (m.root / "usr" / "src").iterdir():
        (d / "include").rmdir()
        d.rmdir()
    (m.root / "lib" / "modules" / CUSTOM).rmdir()
    _, text = m.run()
    b = block(text, "kernel headers:")
    assert ("if that package does not exist (custom kernel): apt-get install linux-headers-amd64 "
            f"&& mkdir -p /lib/modules/{CUSTOM} "
            f"&& ln -s /usr/src/linux-headers-<ver>-amd64 /lib/modules/{CUSTOM}/build "
            f"&& ln -s /usr/src/linux-headers-<ver>-common /lib/modules/{CUSTOM}/source") in b


def test_dangling_build_link_uses_ln_sfn(tmp_path: Path) -> None:
    m = Machine(tmp_path, release=CUSTOM)
    m.drop_headers()
    moddir = m.root / "lib" / "modules" / CUSTOM
    (moddir / "build").symlink_to("/nonexistent/linux-headers-x")
    rc, text = m.run()
    assert rc == 1
    b = block(text, "kernel headers:")
    assert "is a dangling symlink (-> /nonexistent/linux-headers-x)" in b
    assert f"ln -sfn /usr/src/linux-headers-6.1.0-56-amd64 /lib/modules/{CUSTOM}/build" in b


def test_missing_headers_with_kheaders_only_warns(tmp_path: Path) -> None:
    m = Machine(tmp_path, release=CUSTOM)
    m.drop_headers()
    _touch(m.root / "sys" / "kernel" / "kheaders.tar.xz")
    rc, text = m.run()
    assert rc == 0, text
    assert block(text, "kernel headers:").startswith("[warn] kernel headers:")


def test_build_without_source_warns(machine: Machine) -> None:
    (machine.root / "lib" / "modules" / RELEASE / "source").unlink()
    rc, text = machine.run()
    assert rc == 0
    b = block(text, "/source is missing")
    assert b.startswith("[warn]")
    assert (f"fix: ln -s /usr/src/linux-headers-6.1.0-56-common /lib/modules/{RELEASE}/source"
            in b)


# ---------------------------------------------------------------------- 5. tracefs


def test_no_tracefs_fails_with_mount_fix(machine: Machine) -> None:
    for p in sorted((machine.root / "sys" / "kernel" / "tracing").rglob("*"), reverse=True):
        p.rmdir()
    rc, text = machine.run()
    assert rc == 1
    b = block(text, "tracefs:")
    assert b.startswith("[FAIL] tracefs: not mounted")
    assert "fix: mount -t tracefs nodev /sys/kernel/tracing" in b


def test_unreadable_tracefs_is_not_called_unmounted(machine: Machine,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(path: str) -> list[str]:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(doctor, "_listdir", denied)  # what a non-root user sees on a real host
    rc, text = machine.run()
    assert rc == 1
    b = block(text, "tracefs:")
    assert b.startswith("[FAIL] tracefs: /sys/kernel/tracing is not readable by this user")
    assert "fix: run as root" in b


def test_tracefs_under_debugfs_is_accepted(tmp_path: Path) -> None:
    m = Machine(tmp_path)
    for p in sorted((m.root / "sys" / "kernel" / "tracing").rglob("*"), reverse=True):
        p.rmdir()
    m.tracefs("sys/kernel/debug/tracing")
    rc, text = m.run()
    assert rc == 0, text
    assert "[ ok ] tracefs: /sys/kernel/debug/tracing" in text


def test_missing_tracepoints_are_listed(tmp_path: Path) -> None:
    m = Machine(tmp_path)
    tp = m.root / "sys" / "kernel" / "tracing" / "events"
    for cat, name in (("syscalls", "sys_enter_recvfrom"), ("sched", "sched_process_fork")):
        (tp / cat / name).rmdir()
    rc, text = m.run()
    assert rc == 1
    b = block(text, "tracepoints:")
    assert b.startswith(f"[FAIL] tracepoints: 2 of {len(probe_tracepoints())} missing: ")
    assert "syscalls/sys_enter_recvfrom" in b
    assert "sched/sched_process_fork" in b
    assert "CONFIG_FTRACE_SYSCALLS" in b


def test_probe_tracepoints_match_bpf_source() -> None:
    src = (REPO / "bpf" / "http.c").read_text()
    used = set(re.findall(r"TRACEPOINT_PROBE\((\w+),\s*(\w+)\)", src))
    assert used == set(PROBE_TRACEPOINTS)  # the fallback list is current
    assert set(probe_tracepoints()) == used


def test_probe_tracepoints_fall_back_without_source(monkeypatch: pytest.MonkeyPatch) -> None:
    from tenantwatch.kernel import loader

    def missing() -> Path:
        raise loader.KernelSupportError("bpf/http.c not found")

    monkeypatch.setattr(loader, "bpf_dir", missing)
    assert probe_tracepoints() == PROBE_TRACEPOINTS


# ---------------------------------------------------------------------- 6.-7. kprobes, BTF


def test_kprobes_and_btf_are_info_only(machine: Machine) -> None:
    (machine.root / "sys" / "kernel" / "btf" / "vmlinux").unlink()
    _touch(machine.root / "sys" / "kernel" / "tracing" / "kprobe_events")
    rc, text = machine.run()
    assert rc == 0
    assert "[info] kprobes: available (not needed" in text
    assert "[info] BTF: /sys/kernel/btf/vmlinux absent" in text


# ---------------------------------------------------------------------- 8. cgroups


def test_cgroup_v2_with_cpu(machine: Machine) -> None:
    _, text = machine.run()
    assert "[ ok ] cgroups: v2 (unified) at /sys/fs/cgroup, cpu controller available" in text


def test_cgroup_v2_without_cpu_warns(machine: Machine) -> None:
    machine.cgroup_v2(cpu=False)
    rc, text = machine.run()
    assert rc == 0
    assert "[warn] cgroups: v2 (unified) at /sys/fs/cgroup without the cpu controller" in text


def test_cgroup_hybrid_detection(machine: Machine) -> None:
    machine.no_cgroups()
    machine.cgroup_v2(cpu=False, at="unified")
    machine.cgroup_v1_cpu("cpu,cpuacct")
    (machine.root / "sys" / "fs" / "cgroup" / "memory").mkdir()
    rc, text = machine.run()
    assert rc == 0
    assert ("[ ok ] cgroups: hybrid (v2 at /sys/fs/cgroup/unified without the cpu controller; "
            "v1 cpu at /sys/fs/cgroup/cpu,cpuacct (cpu.cfs_quota_us))") in text


def test_cgroup_hybrid_without_any_cpu_warns(machine: Machine) -> None:
    machine.no_cgroups()
    machine.cgroup_v2(cpu=False, at="unified")
    rc, text = machine.run()
    assert rc == 0
    b = block(text, "cgroups:")
    assert b.startswith("[warn] cgroups: hybrid (")
    assert "mount -t cgroup -o cpu,cpuacct cgroup /sys/fs/cgroup/cpu" in b


def test_cgroup_v1_detection(machine: Machine) -> None:
    machine.no_cgroups()
    machine.cgroup_v1_cpu("cpu")
    _, text = machine.run()
    assert "[ ok ] cgroups: v1, cpu at /sys/fs/cgroup/cpu (cpu.cfs_quota_us)" in text


def test_no_cgroups_warns(machine: Machine) -> None:
    machine.no_cgroups()
    rc, text = machine.run()
    assert rc == 0
    assert "[warn] cgroups: nothing mounted at /sys/fs/cgroup" in text


# ---------------------------------------------------------------------- 9.-11.


def test_no_psi_warns(machine: Machine) -> None:
    (machine.proc / "pressure" / "cpu").unlink()
    rc, text = machine.run()
    assert rc == 0
    b = block(text, "PSI:")
    assert b.startswith("[warn] PSI:")
    assert "fix: boot with psi=1" in b


def test_low_memlock_warns_on_old_kernels_only(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "_memlock_limit", lambda: 8 << 20)
    _, text = Machine(tmp_path / "old", release="5.10.0-30-amd64").run()
    b = block(text, "memlock:")
    assert b.startswith("[warn] memlock: RLIMIT_MEMLOCK is 8192 KiB")
    assert "fix: LimitMEMLOCK=infinity" in b
    _, text = Machine(tmp_path / "new", release=RELEASE).run()
    assert "[ ok ] memlock: not limiting (kernel >= 5.11" in text


def test_unlimited_memlock_is_ok_on_old_kernels(tmp_path: Path) -> None:
    _, text = Machine(tmp_path, release="5.10.0-30-amd64").run()
    assert "[ ok ] memlock: RLIMIT_MEMLOCK unlimited" in text


def test_bpftool_missing_is_info(machine: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor.shutil, "which", lambda name: None)
    rc, text = machine.run()
    assert rc == 0
    assert "[info] bpftool: not found" in block(text, "bpftool:")
    _touch(machine.root / "usr" / "sbin" / "bpftool")
    (machine.root / "usr" / "sbin" / "bpftool").chmod(0o755)
    _, text = machine.run()
    assert "[ ok ] bpftool: /usr/sbin/bpftool (used by tests)" in text


# ---------------------------------------------------------------------- TLS


def _gateway(machine: Machine, pid: int, comm: str, exe_bytes: bytes, maps: str) -> None:
    d = machine.proc / str(pid)
    d.mkdir(parents=True)
    (d / "comm").write_text(comm + "\n")
    (d / "maps").write_text(maps)
    exe = machine.root / "bin" / f"{comm}-{pid}"
    exe.parent.mkdir(parents=True, exist_ok=True)
    exe.write_bytes(exe_bytes)
    (d / "exe").symlink_to(exe)
    lib = d / "root" / "usr" / "lib" / "libssl.so.3"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"\x7fELF")


def test_tls_reports_libssl_and_a_statically_linked_gateway(machine: Machine) -> None:
    _gateway(machine, 4242, "nginx", b"\x7fELF nginx",
             "7f00-7f01 r-xp 00000000 08:01 123 /usr/lib/libssl.so.3\n")
    _gateway(machine, 4343, "envoy", b"\x7fELF ... BoringSSL ... SSL_CTX_new",
             "7f00-7f01 r-xp 00000000 08:01 9 /usr/lib/libc.so.6\n")
    rc, text = machine.run()
    assert rc == 0
    assert "[ ok ] TLS: nginx (pid 4242) maps /usr/lib/libssl.so.3" in text
    assert "[info] TLS: /usr/lib/libssl.so.3: probe placement unknown (not an ELF file)" in text
    assert "[warn] TLS: envoy (pid 4343):" in text and "BoringSSL statically" in text


def test_tls_without_a_gateway_is_info(machine: Machine) -> None:
    rc, text = machine.run()
    assert rc == 0
    assert "[info] TLS: no running gateway process" in text
