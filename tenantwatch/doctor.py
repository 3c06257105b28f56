"""`tenantwatch doctor`: what this kernel and machine support, and the exact fix for each problem.

Every check is a pure file/OS check against roots that are parameters (`proc`, `sys_root`), so unit
tests point them at fixture trees. One line per result:

    [ ok ] ...      fine
    [info] ...      worth knowing, never a problem
    [warn] ...      works, or only a later feature needs it
    [FAIL] ...      tenantwatch cannot capture until this is fixed

followed by indented `fix: ...` lines. `run_doctor` returns 0 when nothing FAILs, 1 otherwise. A
check that raises becomes a FAIL line; the doctor itself never crashes.
"""

from __future__ import annotations

import glob
import os
import platform
import re
import resource
import shutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TextIO

MIN_KERNEL = (5, 4)

# Capability numbers (linux/capability.h).
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39

# The tracepoints bpf/http.c attaches to. probe_tracepoints() reads them from the source when it can;
# this list is the fallback, and a unit test keeps the two in sync.
PROBE_TRACEPOINTS: tuple[tuple[str, str], ...] = (
    ("sched", "sched_process_exec"),
    ("sched", "sched_process_exit"),
    ("sched", "sched_process_fork"),
    ("sched", "sched_switch"),
    ("sched", "sched_wakeup"),
    ("sched", "sched_wakeup_new"),
    ("syscalls", "sys_enter_close"),
    ("syscalls", "sys_enter_connect"),
    ("syscalls", "sys_enter_read"),
    ("syscalls", "sys_enter_readv"),
    ("syscalls", "sys_enter_recvfrom"),
    ("syscalls", "sys_enter_recvmsg"),
    ("syscalls", "sys_enter_sendmsg"),
    ("syscalls", "sys_enter_sendfile64"),
    ("syscalls", "sys_enter_sendto"),
    ("syscalls", "sys_enter_write"),
    ("syscalls", "sys_enter_writev"),
    ("syscalls", "sys_exit_accept"),
    ("syscalls", "sys_exit_accept4"),
    ("syscalls", "sys_exit_read"),
    ("syscalls", "sys_exit_readv"),
    ("syscalls", "sys_exit_recvfrom"),
    ("syscalls", "sys_exit_recvmsg"),
    ("syscalls", "sys_exit_sendmsg"),
    ("syscalls", "sys_exit_sendfile64"),
    ("syscalls", "sys_exit_sendto"),
    ("syscalls", "sys_exit_write"),
    ("syscalls", "sys_exit_writev"),
)

# Where tracefs may be mounted, relative to sys_root (the loader's TRACEFS_DIRS).
TRACEFS_DIRS = ("sys/kernel/tracing", "sys/kernel/debug/tracing")

# Debian architecture -> flavour of its linux-headers-<flavour> metapackage.
_HEADER_FLAVOURS = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
                    "i686": "686", "i386": "686"}

OK, INFO, WARN, FAIL = "ok", "info", "warn", "FAIL"
_TAGS = {OK: "[ ok ]", INFO: "[info]", WARN: "[warn]", FAIL: "[FAIL]"}
_INDENT = " " * 7


@dataclass
class Result:
    status: str
    message: str
    fixes: list[str] = field(default_factory=list)


@dataclass
class _Env:
    proc: str
    sys_root: str
    release: str
    import_bcc: Callable[[], object]

    def path(self, *parts: str) -> str:
        """A path under sys_root (parts are relative, e.g. "sys/kernel/btf/vmlinux")."""
        return os.path.join(self.sys_root, *parts)

    def proc_path(self, *parts: str) -> str:
        return os.path.join(self.proc, *parts)

    def shown(self, path: str) -> str:
        """`path` as the operator types it on the target machine (sys_root stripped)."""
        rel = os.path.relpath(path, self.sys_root)
        return "/" if rel == "." else "/" + rel


def _import_bcc() -> object:
    import bcc  # system package (python3-bpfcc); only probed here

    return bcc


def parse_release(release: str) -> tuple[int, int, int] | None:
    """"6.18.44-fc-v595" -> (6, 18, 44); "5.10" -> (5, 10, 0); None when unparseable."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", name))


def _os_release(env: _Env) -> str:
    try:
        with open(env.path("etc", "os-release"), encoding="utf-8") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"').strip("'")
    except OSError:
        pass
    return "unknown distro"


# ---------------------------------------------------------------------------- 1. kernel version


def check_kernel(env: _Env) -> list[Result]:
    v = parse_release(env.release)
    if v is None:
        return [Result(FAIL, f"kernel: cannot parse release {env.release!r}",
                       ["report `uname -r`; tenantwatch needs a kernel >= 5.4"])]
    results = []
    if v[:2] >= MIN_KERNEL:
        results.append(Result(OK, f"kernel {env.release} >= {MIN_KERNEL[0]}.{MIN_KERNEL[1]}"))
    else:
        results.append(Result(
            FAIL, f"kernel {env.release} is older than {MIN_KERNEL[0]}.{MIN_KERNEL[1]}: the BPF "
                  "verifier cannot load the probes",
            ["boot a kernel >= 5.4 (Debian 11: 5.10, Debian 12: 6.1, Ubuntu 20.04: 5.4)"]))
    features = (
        ((5, 5), "bpf_probe_read_user", "used to read syscall buffers",
         "falls back to bpf_probe_read"),
        ((5, 6), "batch map operations", "used to drain counters",
         "falls back to a per-key drain"),
        ((5, 8), "BPF ring buffer", "used for slow-request events",
         "slow-request events go through a perf buffer instead"),
    )
    for need, name, used, fallback in features:
        need_s = f"{need[0]}.{need[1]}"
        if v[:2] >= need:
            results.append(Result(OK, f"  {name} (>= {need_s}): available ({used})"))
        else:
            results.append(Result(INFO, f"  {name} (>= {need_s}): not available ({fallback})"))
    results.append(Result(INFO, "  tested kernels: see docs/kernels.md"))
    return results


# ---------------------------------------------------------------------------- 2. privileges


def _read_status(env: _Env) -> tuple[int | None, int]:
    """(effective uid or None, CapEff bitmask) from {proc}/self/status."""
    euid: int | None = None
    cap_eff: int | None = None
    with open(env.proc_path("self", "status"), encoding="utf-8") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key == "Uid":
                fields = value.split()
                if len(fields) >= 2:
                    euid = int(fields[1])
            elif key == "CapEff":
                cap_eff = int(value.strip(), 16)
    if cap_eff is None:
        raise ValueError(f"no CapEff line in {env.proc_path('self', 'status')}")
    return euid, cap_eff


def check_privileges(env: _Env) -> list[Result]:
    euid, caps = _read_status(env)

    def has(cap: int) -> bool:
        return bool(caps >> cap & 1)

    names = [n for n, c in (("CAP_SYS_ADMIN", CAP_SYS_ADMIN), ("CAP_BPF", CAP_BPF),
                            ("CAP_PERFMON", CAP_PERFMON)) if has(c)]
    held = ", ".join(names) or "none of CAP_SYS_ADMIN/CAP_BPF/CAP_PERFMON"
    bpf_ok = has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON))
    who = "root" if euid == 0 else f"uid {euid}" if euid is not None else "unknown uid"
    if not bpf_ok:
        if euid == 0:
            return [Result(
                FAIL, f"privileges: running as root but the capabilities to load BPF are "
                      f"missing (effective: {held}); a container or bounding set dropped them",
                [("give the container CAP_SYS_ADMIN (or CAP_BPF + CAP_PERFMON on kernels >= 5.8): "
                 "docker run --cap-add SYS_ADMIN ... (or --privileged)")])]
        return [Result(
            FAIL, f"privileges: {who} cannot load BPF programs (effective: {held})",
            ["run as root: sudo tenantwatch ..., or as the systemd unit (runs as root)"])]
    if euid == 0:
        return [Result(OK, f"privileges: root ({held})")]
    # Capabilities without root: the kernel allows it, but tracefs (where bcc reads tracepoint
    # ids) is root-only by default, and the loader still insists on euid 0.
    fixes = ["run as root: sudo tenantwatch ..., or as the systemd unit (runs as root)"]
    if not (has(CAP_DAC_OVERRIDE) or has(CAP_DAC_READ_SEARCH)):
        fixes.append("with capabilities only, also grant CAP_DAC_READ_SEARCH (tracefs is "
                     "root-only): AmbientCapabilities=CAP_BPF CAP_PERFMON CAP_DAC_READ_SEARCH")
    return [Result(WARN, f"privileges: {who} with {held}: enough for the kernel, but "
                         "tenantwatch's loader requires root", fixes)]


# ---------------------------------------------------------------------------- 3. bcc


def _venv_without_system_site(prefix: str, base_prefix: str) -> bool:
    """True when running from a venv whose pyvenv.cfg hides the system site-packages."""
    if prefix == base_prefix:
        return False
    try:
        with open(os.path.join(prefix, "pyvenv.cfg"), encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition("=")
                if key.strip().lower() == "include-system-site-packages":
                    return value.strip().lower() != "true"
    except OSError:
        return False
    return True  # no such line: venv's default is false


def check_bcc(env: _Env) -> list[Result]:
    try:
        mod = env.import_bcc()
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken install raising anything else
        fixes = ["apt-get install python3-bpfcc   (the PyPI package named `bcc` is unrelated)"]
        prefix, base = sys.prefix, sys.base_prefix
        if _venv_without_system_site(prefix, base):
            fixes.append(f"this venv ({prefix}) hides the system site-packages: recreate it with "
                         f"/usr/bin/python3 -m venv --system-site-packages {prefix}")
        if os.path.realpath(base) != "/usr":
            fixes.append(f"this Python ({sys.executable}, from {base}) is not the system one: "
                         "python3-bpfcc installs into /usr/bin/python3 only; run tenantwatch "
                         "with /usr/bin/python3 or a venv made from it with "
                         "--system-site-packages")
        return [Result(FAIL, f"bcc: cannot import ({type(e).__name__}: {e})", fixes)]
    if not hasattr(mod, "BPF"):
        where = getattr(mod, "__file__", "?")
        return [Result(FAIL, f"bcc: the importable `bcc` ({where}) is not the BPF Compiler "
                             "Collection (no bcc.BPF)",
                       [("pip uninstall bcc   (PyPI's `bcc` is unrelated), then "
                        "apt-get install python3-bpfcc")])]
    version = getattr(mod, "__version__", None)
    where = getattr(mod, "__file__", None)
    detail = ", ".join(x for x in (f"version {version}" if version else "", where or "") if x)
    return [Result(OK, f"bcc: importable{f' ({detail})' if detail else ''}")]


# ---------------------------------------------------------------------------- 4. kernel headers


def _header_dirs(env: _Env) -> tuple[str | None, str | None, str]:
    """(build dir, matching -common dir, flavour) found under /usr/src, newest first."""
    flavour = _HEADER_FLAVOURS.get(platform.machine(), "amd64")
    dirs = [d for d in glob.glob(env.path("usr", "src", "linux-headers-*"))
            if os.path.isdir(d) and not d.endswith("-common")]
    preferred = [d for d in dirs if d.endswith("-" + flavour)] or \
                [d for d in dirs if d.endswith("-generic")]
    if not preferred:
        return None, None, flavour
    build = max(preferred, key=lambda d: _version_key(os.path.basename(d)))
    common = build.rsplit("-", 1)[0] + "-common"
    return build, (common if os.path.isdir(common) else None), flavour


def check_headers(env: _Env) -> list[Result]:
    moddir = env.path("lib", "modules", env.release)
    build = os.path.join(moddir, "build")
    source = os.path.join(moddir, "source")
    if os.path.exists(build):
        target = os.path.realpath(build)
        shown_target = env.shown(target) if target.startswith(env.path("")) else target
        results = [Result(OK, f"kernel headers: {env.shown(build)} -> {shown_target}")]
        # Debian splits headers into -<flavour> and -common; build alone does not compile.
        common = target.rsplit("-", 1)[0] + "-common"
        if not os.path.exists(source) and not target.endswith("-common") and \
                os.path.isdir(common):
            ln = "ln -sfn" if os.path.islink(source) else "ln -s"
            shown_common = env.shown(common) if common.startswith(env.path("")) else common
            results.append(Result(
                WARN, f"kernel headers: {env.shown(source)} is missing; Debian's split headers "
                      f"need it to point at {shown_common}",
                [f"{ln} {shown_common} {env.shown(source)}"]))
        return results

    dangling = os.path.islink(build)
    what = (f"{env.shown(build)} is a dangling symlink (-> {os.readlink(build)})" if dangling
            else f"{env.shown(build)} is missing")
    found, common, flavour = _header_dirs(env)
    if found is None:  # names only known after installing the metapackage
        build_src = f"/usr/src/linux-headers-<ver>-{flavour}"
        source_src = "/usr/src/linux-headers-<ver>-common"
    else:
        build_src = env.shown(found)
        # Ubuntu's header packages are not split: source points at build itself.
        source_src = env.shown(common) if common else build_src
    ln_build = "ln -sfn" if dangling else "ln -s"
    ln_source = "ln -sfn" if os.path.islink(source) else "ln -s"
    shown_moddir = env.shown(moddir)
    steps = [] if found else [f"apt-get install linux-headers-{flavour}"]
    if not os.path.isdir(moddir):
        steps.append(f"mkdir -p {shown_moddir}")
    steps.append(f"{ln_build} {build_src} {shown_moddir}/build")
    steps.append(f"{ln_source} {source_src} {shown_moddir}/source")
    fallback = "if that package does not exist (custom kernel): " + " && ".join(steps)
    if found:
        fallback += f"   (found in /usr/src: {os.path.basename(found)}" + (
            f", {os.path.basename(common)})" if common else ")")
    fixes = [
        f"apt-get install linux-headers-{env.release}",
        fallback,
        "scripts/install-deps.sh does all of this",
    ]
    kheaders = env.path("sys", "kernel", "kheaders.tar.xz")
    if os.path.exists(kheaders):
        return [Result(WARN, f"kernel headers: {what}; bcc falls back to "
                             f"{env.shown(kheaders)} (CONFIG_IKHEADERS), slower to compile",
                       fixes)]
    return [Result(FAIL, f"kernel headers: {what}: bcc cannot compile the probes", fixes)]


# ---------------------------------------------------------------------------- 5. tracefs


def _listdir(path: str) -> list[str]:
    return os.listdir(path)


def _tracefs(env: _Env) -> tuple[str | None, str | None]:
    """(readable tracefs dir with events/, else None; a candidate this user may not read)."""
    denied = None
    for rel in TRACEFS_DIRS:
        d = env.path(rel)
        try:
            if "events" in _listdir(d) and os.path.isdir(os.path.join(d, "events")):
                return d, None
        except PermissionError:
            denied = denied or d
        except OSError:
            continue
    return None, denied


_TRACEPOINT_PROBE = re.compile(r"^\s*TRACEPOINT_PROBE\(\s*(\w+)\s*,\s*(\w+)\s*\)", re.MULTILINE)


def probe_tracepoints() -> tuple[tuple[str, str], ...]:
    """(category, event) for every TRACEPOINT_PROBE in bpf/http.c, else PROBE_TRACEPOINTS."""
    try:
        from tenantwatch.kernel.loader import bpf_dir

        with open(bpf_dir() / "http.c", encoding="utf-8") as f:
            found = tuple(sorted(set(_TRACEPOINT_PROBE.findall(f.read()))))
    except Exception:  # noqa: BLE001 - no source installed: the built-in list
        return PROBE_TRACEPOINTS
    return found or PROBE_TRACEPOINTS


def check_tracefs(env: _Env) -> list[Result]:
    tracefs, denied = _tracefs(env)
    if tracefs is None and denied is not None:
        return [Result(FAIL, f"tracefs: {env.shown(denied)} is not readable by this user "
                             "(tracefs is root-only)",
                       ["run as root: sudo tenantwatch ..., or as the systemd unit (runs as root)"])]
    if tracefs is None:
        return [Result(FAIL, "tracefs: not mounted (no /sys/kernel/tracing/events or "
                             "/sys/kernel/debug/tracing/events)",
                       ["mount -t tracefs nodev /sys/kernel/tracing"])]
    results = [Result(OK, f"tracefs: {env.shown(tracefs)}")]
    wanted = probe_tracepoints()
    missing = [f"{cat}/{name}" for cat, name in wanted
               if not os.path.isdir(os.path.join(tracefs, "events", cat, name))]
    if missing:
        fix = ("the kernel needs CONFIG_FTRACE_SYSCALLS=y (syscalls/*) and tracepoints enabled; "
               "boot a kernel built with them (Debian's stock kernels have them)")
        results.append(Result(FAIL, f"tracepoints: {len(missing)} of {len(wanted)} "
                                    f"missing: {', '.join(missing)}", [fix]))
    else:
        results.append(Result(OK, f"tracepoints: all {len(wanted)} the probes use exist"))
    return results


# ---------------------------------------------------------------------------- 6.-7. kprobes, BTF


def check_kprobes(env: _Env) -> list[Result]:
    tracefs, denied = _tracefs(env)
    if tracefs is not None and os.path.exists(os.path.join(tracefs, "kprobe_events")):
        state = "available"
    elif tracefs is None and denied is not None:
        state = "unknown (tracefs not readable)"
    else:
        state = "not available"
    return [Result(INFO, f"kprobes: {state} (not needed: tenantwatch uses only tracepoints and "
                         "uprobes)")]


def check_btf(env: _Env) -> list[Result]:
    btf = env.path("sys", "kernel", "btf", "vmlinux")
    if os.path.exists(btf):
        return [Result(OK, f"BTF: {env.shown(btf)} present")]
    return [Result(INFO, f"BTF: {env.shown(btf)} absent (not needed: bcc compiles against the "
                         "kernel headers)")]


# ---------------------------------------------------------------------------- 8. cgroups


def _controllers(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.read().split()


def _v1_cpu(env: _Env) -> str | None:
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        d = env.path("sys", "fs", "cgroup", name)
        if os.path.isfile(os.path.join(d, "cpu.cfs_quota_us")):
            return d
    return None


def check_cgroups(env: _Env) -> list[Result]:
    root = env.path("sys", "fs", "cgroup")
    later = "CPU enforcement (a later feature) needs a cpu controller with quotas"
    if os.path.isfile(os.path.join(root, "cgroup.controllers")):
        if "cpu" in _controllers(os.path.join(root, "cgroup.controllers")):
            return [Result(OK, f"cgroups: v2 (unified) at {env.shown(root)}, cpu controller "
                               "available (cpu.max)")]
        return [Result(WARN, f"cgroups: v2 (unified) at {env.shown(root)} without the cpu "
                             f"controller; {later}",
                       [("a kernel with CONFIG_CGROUP_SCHED and CONFIG_CFS_BANDWIDTH; no "
                        "effect on capture")])]
    unified = os.path.join(root, "unified")
    v1cpu = _v1_cpu(env)
    if os.path.isfile(os.path.join(unified, "cgroup.controllers")):
        v2cpu = "cpu" in _controllers(os.path.join(unified, "cgroup.controllers"))
        v2 = f"v2 at {env.shown(unified)} {'with' if v2cpu else 'without'} the cpu controller"
        v1 = f"v1 cpu at {env.shown(v1cpu)} (cpu.cfs_quota_us)" if v1cpu else "no v1 cpu"
        msg = f"cgroups: hybrid ({v2}; {v1})"
        if v2cpu or v1cpu:
            return [Result(OK, msg)]
        return [Result(WARN, f"{msg}; {later}",
                       [("mount the v1 cpu controller: mkdir -p /sys/fs/cgroup/cpu && "
                        "mount -t cgroup -o cpu,cpuacct cgroup /sys/fs/cgroup/cpu")])]
    if v1cpu:
        return [Result(OK, f"cgroups: v1, cpu at {env.shown(v1cpu)} (cpu.cfs_quota_us)")]
    if os.path.isdir(root) and os.listdir(root):
        return [Result(WARN, f"cgroups: v1 at {env.shown(root)} without a cpu controller with "
                             f"quotas; {later}",
                       [("mount it: mkdir -p /sys/fs/cgroup/cpu && "
                        "mount -t cgroup -o cpu,cpuacct cgroup /sys/fs/cgroup/cpu")])]
    return [Result(WARN, f"cgroups: nothing mounted at {env.shown(root)}; {later}",
                   ["mount -t cgroup2 none /sys/fs/cgroup"])]


# ---------------------------------------------------------------------------- 9. PSI


def check_psi(env: _Env) -> list[Result]:
    path = env.proc_path("pressure", "cpu")
    try:
        with open(path, encoding="utf-8") as f:
            f.read()
    except OSError as e:
        return [Result(WARN, f"PSI: {path} not readable ({e.strerror or e}); noisy-neighbour "
                             "detection loses node CPU pressure",
                       [("boot with psi=1 (kernel needs CONFIG_PSI=y; some build it "
                        "CONFIG_PSI_DEFAULT_DISABLED)")])]
    return [Result(OK, f"PSI: {path} readable")]


# ---------------------------------------------------------------------------- TLS

# Gateways whose TLS the doctor looks at (the config's targets are not read here).
TLS_GATEWAYS = ("nginx", "envoy", "haproxy", "caddy", "traefik")


def _tls_placement(path: str) -> Result:
    """Where the uprobes go in this libssl, and what a hit costs there (kernel/ssl_points.py)."""
    from tenantwatch.kernel.elf import ElfError, ElfImage
    from tenantwatch.kernel.ssl_points import probe_points

    shown = path.split("/root", 1)[-1]
    try:
        points = probe_points(ElfImage.open(path))
    except (OSError, ElfError) as e:
        return Result(INFO, f"TLS: {shown}: probe placement unknown ({e})")
    if points and all(p.internal for p in points):
        return Result(OK, f"TLS: {shown}: probed inside OpenSSL's wrappers (" + ", ".join(
            f"{p.stands_for} at {p.vaddr:#x}" for p in points) + "): no single-step per call")
    return Result(INFO, f"TLS: {shown}: probed at its public functions; each SSL call "
                        "single-steps the probed instruction, which is slow under "
                        "virtualization (docs/performance.md#tls)")


def check_tls(env: _Env) -> list[Result]:
    from tenantwatch.kernel.tls import ssl_libraries, static_tls

    found: dict[str, list[Result]] = {}  # by executable: one line per gateway binary
    for name in _listdir(env.proc):
        if not name.isdigit():
            continue
        try:
            with open(env.proc_path(name, "comm"), encoding="utf-8") as f:
                comm = f.read().strip()
            exe = os.readlink(env.proc_path(name, "exe"))
        except OSError:
            continue
        if comm not in TLS_GATEWAYS or exe in found:
            continue
        why = static_tls(int(name), env.proc)
        libs = sorted(lib.path.split("/root", 1)[-1] for lib in ssl_libraries(int(name),
                                                                            env.proc))
        if why:
            found[exe] = [Result(WARN, f"TLS: {comm} (pid {name}): {why}; unsupported",
                                 [("terminate TLS in front of it, or trace its plaintext "
                                   "side (HTTP to its upstreams) only")])]
        elif libs:
            found[exe] = [Result(OK, f"TLS: {comm} (pid {name}) maps {', '.join(libs)}: "
                                     "its TLS traffic is captured through uprobes")]
            found[exe] += [_tls_placement(lib.path) for lib in ssl_libraries(int(name), env.proc)]
    if not found:
        return [Result(INFO, "TLS: no running gateway process (" + ", ".join(TLS_GATEWAYS)
                       + ") to check")]
    return [r for results in found.values() for r in results]


# ---------------------------------------------------------------------------- 10. memlock


def _memlock_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]


_MEMLOCK_ENOUGH = 512 << 20


def check_memlock(env: _Env) -> list[Result]:
    v = parse_release(env.release)
    if v is not None and v[:2] >= (5, 11):
        return [Result(OK, "memlock: not limiting (kernel >= 5.11 charges BPF memory to the "
                           "memory cgroup)")]
    soft = _memlock_limit()
    if soft == resource.RLIM_INFINITY or soft >= _MEMLOCK_ENOUGH:
        shown = "unlimited" if soft == resource.RLIM_INFINITY else f"{soft >> 20} MiB"
        return [Result(OK, f"memlock: RLIMIT_MEMLOCK {shown}")]
    return [Result(WARN, f"memlock: RLIMIT_MEMLOCK is {soft >> 10} KiB; kernels < 5.11 charge BPF "
                         "maps against it (bcc raises it itself only as root)",
                   [("LimitMEMLOCK=infinity in the systemd unit, or `ulimit -l unlimited` in the "
                    "shell that starts tenantwatch")])]


# ---------------------------------------------------------------------------- 11. bpftool


def check_bpftool(env: _Env) -> list[Result]:
    found = shutil.which("bpftool")
    if not found:
        for rel in ("usr/sbin/bpftool", "sbin/bpftool", "usr/local/sbin/bpftool"):
            p = env.path(rel)
            if os.access(p, os.X_OK):
                found = env.shown(p)
                break
    if found:
        return [Result(OK, f"bpftool: {found} (used by tests)")]
    return [Result(INFO, "bpftool: not found (only tests use it)", ["apt-get install bpftool"])]


CHECKS: tuple[tuple[str, Callable[[_Env], list[Result]]], ...] = (
    ("kernel", check_kernel),
    ("privileges", check_privileges),
    ("bcc", check_bcc),
    ("kernel headers", check_headers),
    ("tracefs", check_tracefs),
    ("kprobes", check_kprobes),
    ("BTF", check_btf),
    ("cgroups", check_cgroups),
    ("PSI", check_psi),
    ("TLS", check_tls),
    ("memlock", check_memlock),
    ("bpftool", check_bpftool),
)


def _print(out: TextIO, results: Iterable[Result]) -> bool:
    failed = False
    for r in results:
        failed |= r.status == FAIL
        out.write(f"{_TAGS[r.status]} {r.message}\n")
        out.writelines(f"{_INDENT}fix: {fix}\n" for fix in r.fixes)
    return failed


def run_doctor(out: TextIO | None = None, *, proc: str = "/proc", sys_root: str = "/",
               release: str | None = None,
               import_bcc: Callable[[], object] = _import_bcc) -> int:
    """Print every check and its fix to `out` (default sys.stdout); 0 when nothing FAILs."""
    out = out if out is not None else sys.stdout
    env = _Env(proc=proc, sys_root=sys_root, release=release or platform.release(),
               import_bcc=import_bcc)
    out.write(f"tenantwatch doctor: kernel {env.release}, {_os_release(env)}, "
              f"Python {platform.python_version()} ({sys.executable})\n")
    failed = False
    for name, check in CHECKS:
        try:
            results = check(env)
        except Exception as e:  # noqa: BLE001 - a check must never crash the doctor
            results = [Result(FAIL, f"{name}: check failed: {type(e).__name__}: {e}",
                              ["fix what the error names, or report it as a tenantwatch bug"])]
        failed |= _print(out, results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_doctor())
