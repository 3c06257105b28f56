"""Boot a Debian stock kernel in qemu (software emulation) with this machine's userland.

    boot("6.1", "/usr/bin/python3 -c 'print(1)'", timeout=300) -> GuestResult

The guest (docs/kernels.md):
- kernel and modules from the package extracted by scripts/install-vm-deps.sh into
  CACHE/kernels/<release>/ (never from /boot);
- a busybox initramfs (cached per kernel release) loads the virtio, 9p and overlay modules in
  dependency order, mounts this machine's root read-only over 9p (`-virtfs local,path=/,...,
  readonly=on`), puts a tmpfs overlay on top and `switch_root`s into it;
- the second stage (PID 1 in the new root, run by the host's static busybox) mounts proc, sys,
  devtmpfs, tmpfs /run and /tmp, tracefs, debugfs, cgroup2 and bpffs, brings up loopback, links
  /lib/modules/<release>/build (and source) to the kernel's headers, runs the command, prints
  `TW_EXIT=<status> <nonce>` on the serial console and powers off;
- no network device at all (`-nic none`, `-nodefaults`): loopback only.

The exit status and output come back over the serial console (a file). A guest that times out is
killed (only the qemu this module started, by its pid) and reported with the output so far;
GuestResult.check() turns any failure into a GuestFailure carrying the guest's output.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import secrets
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("TW_VM_CACHE", "/var/cache/tenantwatch-vm"))
BUSYBOX = "/bin/busybox"
QEMU = "qemu-system-x86_64"

# docs/kernels.md, in this order; each module's own dependencies (modules.dep) load before it,
# and a name the kernel does not have as a module (older kernels: virtio_pci_*_dev, netfs) is
# skipped.
MODULES = ("virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
           "virtio_pci", "netfs", "fscache", "9pnet", "9pnet_virtio", "9p", "overlay")

# Stage 1: the initramfs's /init.
STAGE1 = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /lower /rw /newroot
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
fail() { echo "TW_STAGE1_FAILED: $*"; /bin/busybox sync; /bin/busybox poweroff -f; }
for m in $(/bin/busybox cat /modules.list); do
    /bin/busybox insmod "/modules/$m.ko" || fail "insmod $m"
done
/bin/busybox mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose \
    hostroot /lower || fail "mount 9p hostroot"
/bin/busybox mount -t tmpfs -o size=1536m,mode=0755 tmpfs /rw || fail "mount tmpfs"
/bin/busybox mkdir -p /rw/upper /rw/work
/bin/busybox mount -t overlay overlay \
    -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot || fail "mount overlay"
/bin/busybox cp /stage2 /newroot/.tw-stage2 || fail "copy stage2"
/bin/busybox umount /proc /sys /dev 2>/dev/null
exec /bin/busybox switch_root /newroot /bin/busybox sh /.tw-stage2
"""

# Stage 2: PID 1 in the new root (the host's userland over 9p + tmpfs overlay).
STAGE2 = r"""BB=/bin/busybox
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 TERM=dumb
$BB mount -t proc proc /proc
$BB mount -t sysfs sysfs /sys
$BB mount -t devtmpfs devtmpfs /dev
$BB mkdir -p /dev/pts /dev/shm
$BB mount -t devpts devpts /dev/pts
$BB mount -t tmpfs tmpfs /dev/shm
$BB mount -t tmpfs tmpfs /run
# /tmp stays the host's (through the overlay, writes go to its tmpfs): a checkout under /tmp,
# as a CI clone may be, must be visible in the guest.
$BB chmod 1777 /tmp
$BB mount -t tracefs tracefs /sys/kernel/tracing
$BB mount -t debugfs debugfs /sys/kernel/debug
$BB mount -t cgroup2 cgroup2 /sys/fs/cgroup
$BB mkdir -p /sys/fs/bpf && $BB mount -t bpf bpf /sys/fs/bpf
$BB ip link set lo up
$BB hostname tw-guest
for arg in $($BB cat /proc/cmdline); do
    case "$arg" in
        tw.cmd=*) CMD="${arg#tw.cmd=}" ;;
        tw.nonce=*) NONCE="${arg#tw.nonce=}" ;;
        tw.cache=*) KCACHE="${arg#tw.cache=}" ;;
    esac
done
REL=$($BB uname -r)
KDIR="$KCACHE/kernels/$REL"
# Headers for bcc: the kernel's own package when extracted beside it (5.10), else this machine's
# /usr/src (6.1); build -> .../linux-headers-REL, source -> the matching -common directory.
for d in "$KDIR"/usr/src/linux-headers-*; do
    [ -d "$d" ] && [ ! -e "/usr/src/${d##*/}" ] && $BB ln -s "$d" "/usr/src/${d##*/}"
done
$BB mkdir -p "/lib/modules/$REL"
[ -e "/lib/modules/$REL/build" ] || $BB ln -sfn "/usr/src/linux-headers-$REL" "/lib/modules/$REL/build"
[ -e "/lib/modules/$REL/source" ] || $BB ln -sfn "/usr/src/linux-headers-${REL%-*}-common" "/lib/modules/$REL/source"
echo "TW_BEGIN $NONCE"
cd /
$BB sh "$CMD" </dev/null
rc=$?
echo "TW_EXIT=$rc $NONCE"
$BB sync
$BB poweroff -f
$BB reboot -f
"""


class GuestFailure(AssertionError):
    """The guest failed, timed out or could not boot; the message has its console output."""


class KernelUnavailable(RuntimeError):
    """The kernel is not in the cache (scripts/install-vm-deps.sh); .reason says why."""


@dataclass(frozen=True)
class Kernel:
    series: str  # "6.1", "5.10"
    release: str | None  # "6.1.0-56-amd64", None when not available
    reason: str = ""  # why it is not available
    # True when scripts/install-vm-deps.sh recorded that the kernel could not be fetched (the
    # only case that is "not tested" rather than a failure under CI); False for a cache that is
    # missing or incomplete (the script did not run, or something removed its files).
    fetch_failed: bool = False

    @property
    def dir(self) -> Path:
        assert self.release is not None
        return CACHE / "kernels" / self.release

    @property
    def vmlinuz(self) -> Path:
        return self.dir / "boot" / f"vmlinuz-{self.release}"


@dataclass
class GuestResult:
    kernel: str  # the release booted
    exit_status: int | None  # None: no TW_EXIT line (timeout, panic, stage 1 failure)
    output: str  # the command's output (between the markers; everything if no markers)
    console: str  # the whole serial console: kernel messages, stage 1, command, exit line
    seconds: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_status == 0 and not self.timed_out

    def describe(self) -> str:
        if self.timed_out:
            what = f"timed out after {self.seconds:.0f}s"
        elif self.exit_status is None:
            what = f"ended without an exit status after {self.seconds:.0f}s"
        else:
            what = f"exited {self.exit_status} after {self.seconds:.0f}s"
        return f"guest {self.kernel} {what}"

    def check(self) -> GuestResult:
        """Raise GuestFailure (with the guest's console) unless the command exited 0."""
        if not self.ok:
            raise GuestFailure(f"{self.describe()}\n--- guest console (tail) ---\n"
                               f"{self.console[-12000:]}")
        return self


def kernel(series: str) -> Kernel:
    """The cached kernel of a series ("6.1", "5.10"), from install-vm-deps.sh's status file."""
    status = CACHE / "status" / series
    try:
        text = status.read_text().strip()
    except OSError:
        return Kernel(series, None, f"{status} missing: run scripts/install-vm-deps.sh (root)")
    word, _, rest = text.partition(" ")
    if word != "ok":
        return Kernel(series, None, rest or text, fetch_failed=word == "not-tested")
    k = Kernel(series, rest.strip())
    if not k.vmlinuz.is_file():
        return Kernel(series, None, f"{k.vmlinuz} missing: run scripts/install-vm-deps.sh")
    return k


def qemu_binary() -> str | None:
    return shutil.which(QEMU) or (f"/usr/bin/{QEMU}" if os.access(f"/usr/bin/{QEMU}", os.X_OK)
                                  else None)


# ---------------------------------------------------------------- initramfs


def _module_index(moddir: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """({name: relative path}, {relative path: [dependency paths]}) from modules.dep."""
    paths: dict[str, str] = {}
    deps: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        name = re.sub(r"\.ko(\.\w+)?$", "", os.path.basename(path)).replace("-", "_")
        paths[name] = path
        deps[path] = rest.split()
    return paths, deps


def module_order(moddir: Path) -> list[str]:
    """Module paths to insmod, in MODULES' order (docs/kernels.md) with each one's dependencies
    before it."""
    paths, deps = _module_index(moddir)
    order: list[str] = []

    def add(path: str) -> None:
        if path in order:
            return
        # modules.dep lists dependencies so that the last one must load first
        for d in reversed(deps.get(path, [])):
            add(d)
        order.append(path)

    for name in MODULES:
        if name in paths:
            add(paths[name])
    return order


def initramfs(k: Kernel) -> Path:
    """The cached initramfs of kernel k (rebuilt when the stage scripts or modules change)."""
    moddir = k.dir / "lib" / "modules" / k.release
    order = module_order(moddir)
    missing = {"virtio_pci", "9pnet_virtio", "9p", "overlay"} - {
        re.sub(r"\.ko.*$", "", os.path.basename(p)) for p in order}
    if missing:
        raise KernelUnavailable(f"{k.release}: no module(s) {sorted(missing)} in {moddir}")
    key = hashlib.sha256("\0".join([STAGE1, STAGE2, *order]).encode()).hexdigest()[:16]
    out = CACHE / "initramfs" / f"{k.release}-{key}.cpio.gz"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tw-initramfs-") as d:
        root = Path(d)
        (root / "bin").mkdir()
        (root / "modules").mkdir()
        shutil.copy2(BUSYBOX, root / "bin" / "busybox")
        names = []
        for rel in order:
            src = moddir / rel
            name = re.sub(r"\.ko(\.\w+)?$", "", src.name)
            data = src.read_bytes()
            if src.name.endswith(".xz"):
                import lzma
                data = lzma.decompress(data)
            elif src.name.endswith(".gz"):
                data = gzip.decompress(data)
            elif src.name.endswith(".zst"):
                data = subprocess.run(["zstd", "-dc", str(src)], check=True,
                                      capture_output=True).stdout
            (root / "modules" / f"{name}.ko").write_bytes(data)
            names.append(name)
        (root / "modules.list").write_text("\n".join(names) + "\n")
        (root / "init").write_text(STAGE1)
        (root / "init").chmod(0o755)
        (root / "stage2").write_text(STAGE2)
        files = subprocess.run(["find", "."], cwd=root, check=True, capture_output=True).stdout
        archive = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=files,
                                 check=True, capture_output=True).stdout
        tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
        tmp.write_bytes(gzip.compress(archive, 6))
        tmp.replace(out)
    return out


# ---------------------------------------------------------------- boot


def qemu_command(k: Kernel, initrd: Path, cmd_file: Path, nonce: str, console: Path,
                 memory: str = "2G", smp: int = 2) -> list[str]:
    append = " ".join([
        "console=ttyS0", "panic=-1", "quiet", "loglevel=3", "mitigations=off",
        "rdinit=/init", f"tw.cmd={cmd_file}", f"tw.nonce={nonce}", f"tw.cache={CACHE}",
    ])
    return [
        qemu_binary() or QEMU,
        "-accel", "tcg",
        "-machine", "pc",
        "-cpu", "max",
        "-m", memory,
        "-smp", str(smp),
        "-nodefaults",
        "-no-reboot",
        "-display", "none",
        "-monitor", "none",
        "-nic", "none",  # no network device at all: the guest has loopback only
        "-serial", f"file:{console}",
        "-kernel", str(k.vmlinuz),
        "-initrd", str(initrd),
        "-append", append,
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
    ]


def boot(kernel_version: str, command: str | list[str], timeout: float = 900.0,
         memory: str = "2G", smp: int = 2) -> GuestResult:
    """Boot kernel series `kernel_version` ("6.1", "5.10"), run `command` (a shell command line,
    or an argv list) as root in the guest, and return its exit status and output.

    Raises KernelUnavailable when the kernel is not cached (the reason says why)."""
    k = kernel(kernel_version)
    if k.release is None:
        raise KernelUnavailable(k.reason)
    if qemu_binary() is None:
        raise KernelUnavailable(f"{QEMU} not found (scripts/install-vm-deps.sh)")
    initrd = initramfs(k)
    if not isinstance(command, str):
        command = shlex.join(command)
    nonce = secrets.token_hex(8)
    # The command file lives under CACHE/run: the guest sees this machine's root (read-only,
    # with a tmpfs overlay for its writes).
    rundir = CACHE / "run"
    rundir.mkdir(parents=True, exist_ok=True)
    cmd_file = rundir / f"{nonce}.sh"
    console = rundir / f"{nonce}.console"
    cmd_file.write_text(command + "\n")
    argv = qemu_command(k, initrd, cmd_file, nonce, console, memory, smp)
    started = time.monotonic()
    timed_out = False
    with tempfile.TemporaryFile() as qemu_err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=qemu_err,
                                stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.kill()  # our own qemu, by its pid
            proc.wait(30)
        seconds = time.monotonic() - started
        qemu_err.seek(0)
        qemu_text = qemu_err.read().decode("utf-8", "replace")
    try:
        text = console.read_text(errors="replace").replace("\r\n", "\n")
    except OSError:
        text = ""
    if qemu_text.strip():
        text += f"\n--- qemu (exit {proc.returncode}) ---\n{qemu_text}"
    for p in (cmd_file, console):
        p.unlink(missing_ok=True)
    return parse_console(k.release, text, nonce, seconds, timed_out)


def parse_console(release: str, text: str, nonce: str, seconds: float,
                  timed_out: bool) -> GuestResult:
    begin = re.search(rf"^TW_BEGIN {nonce}$", text, re.MULTILINE)
    end = re.search(rf"^TW_EXIT=(\d+) {nonce}$", text, re.MULTILINE)
    status = int(end.group(1)) if end and not timed_out else None
    if begin:
        output = text[begin.end() + 1: end.start() if end else len(text)]
    else:
        output = text
    return GuestResult(kernel=release, exit_status=status, output=output, console=text,
                       seconds=seconds, timed_out=timed_out)


if __name__ == "__main__":  # python -m tests.vm.harness 6.1 'uname -a'
    import sys

    r = boot(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "uname -a",
             timeout=float(os.environ.get("TW_VM_TIMEOUT", "600")))
    print(r.console)
    print(f"--- {r.describe()}")
    sys.exit(0 if r.ok else 1)
