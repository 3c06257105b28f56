#!/usr/bin/env bash
# Install what tenantwatch needs to build, test and demo on this machine (Debian 12; Ubuntu mostly).
#
# Idempotent and fast when everything is already there: every step checks first and prints one
# line, "ok" (already done, skipped) or "done" (it did something). Needs root (apt, mounts,
# /lib/modules). Never leaves a system nginx running that the package install started.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
STAMP="$VENV/.installed-stamp"
SYS_PY=/usr/bin/python3
KREL="$(uname -r)"

export DEBIAN_FRONTEND=noninteractive

say() { printf '%-28s %s\n' "$1" "$2"; }
die() { echo "install-deps: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (apt-get, mount, /lib/modules); try: sudo $0"

# ---------------------------------------------------------------- apt helpers
APT_UPDATED=0
apt_update_once() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        apt-get update -qq >/dev/null
        APT_UPDATED=1
    fi
}
# No `cmd | grep -q` under pipefail: grep -q exits at its first match and the writer's SIGPIPE
# (exit 141) would fail the pipeline, so the answer would depend on output size and timing.
installed() { [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == *"install ok installed"* ]]; }
# True when apt has an installable candidate for the package (after apt_update_once).
available() { grep -q 'Candidate: [^(]' <<<"$(apt-cache policy "$1" 2>/dev/null)"; }
apt_install() {
    apt_update_once
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# nginx: remember whether a system nginx was running before we touched packages, so that we only
# stop one the package's postinst started.
sys_nginx_running() {
    [ -f /run/nginx.pid ] || return 1
    local pid
    pid="$(cat /run/nginx.pid 2>/dev/null || true)"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}
NGINX_WAS_RUNNING=0
sys_nginx_running && NGINX_WAS_RUNNING=1

# ---------------------------------------------------------------- packages
# Plain packages: same names on Debian and Ubuntu.
missing=()
# redis-server: only the tests of tenancy.registry run one (their own, on a free port).
# nghttp2-client: nghttp and h2load, HTTP/2 clients for the HTTP/2 tests and benchmarks.
# python3-matplotlib: the plot of bench/soak.py (the venv sees the system packages).
# mmdebstrap, podman, runc: make deb / make image and their test (tests/e2e/test_package.py);
# runc because crun refuses hybrid cgroup layouts like this machine's.
# gcc, python3-dev: the HTTP/2 decoder compiled with mypyc (scripts/build_h2_native.py).
PACKAGES=(python3-bpfcc wrk curl openssl make python3-venv python3-pip redis-server
          nghttp2-client python3-matplotlib mmdebstrap podman runc gcc python3-dev)
for p in "${PACKAGES[@]}"; do
    installed "$p" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
    say "apt packages" "ok (${PACKAGES[*]})"
else
    apt_install "${missing[@]}"
    say "apt packages" "done (installed ${missing[*]})"
fi

# nginx: any package that provides the nginx binary.
if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
    say "nginx" "ok ($(command -v nginx || echo /usr/sbin/nginx))"
else
    apt_update_once
    pkg=""
    for cand in nginx-light nginx; do
        if available "$cand"; then pkg="$cand"; break; fi
    done
    [ -n "$pkg" ] || die "no nginx package available from apt"
    apt_install "$pkg"
    say "nginx" "done (installed $pkg)"
fi

# A package postinst may have started the system nginx on port 80: stop it if it was not running
# before this script (only that pid, from its own pid file).
if [ "$NGINX_WAS_RUNNING" -eq 0 ] && sys_nginx_running; then
    pid="$(cat /run/nginx.pid)"
    kill -QUIT "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    say "system nginx" "done (stopped pid $pid started by the package install)"
else
    say "system nginx" "ok (not started by us)"
fi

# bpftool: Debian has a bpftool package; Ubuntu ships it in linux-tools-*.
if command -v bpftool >/dev/null 2>&1 || [ -x /usr/sbin/bpftool ]; then
    say "bpftool" "ok"
else
    apt_update_once
    pkgs=()
    if available bpftool; then
        pkgs=(bpftool)
    else
        for cand in linux-tools-common "linux-tools-$KREL" linux-tools-generic; do
            available "$cand" && pkgs+=("$cand")
        done
    fi
    [ "${#pkgs[@]}" -gt 0 ] || die "no bpftool package available (tried bpftool, linux-tools-*)"
    apt_install "${pkgs[@]}"
    say "bpftool" "done (installed ${pkgs[*]})"
fi
# perf: only bench/bpf_lines.py needs it (Debian linux-perf; Ubuntu's linux-tools have it).
if command -v perf >/dev/null 2>&1; then
    say "perf" "ok"
else
    apt_update_once
    if available linux-perf; then
        apt_install linux-perf
        say "perf" "done (installed linux-perf)"
    else
        say "perf" "skipped (no linux-perf package; only bench/bpf_lines.py needs it)"
    fi
fi
bash "$REPO/scripts/install-prometheus.sh"

# ---------------------------------------------------------------- kernel headers for bcc
# bcc compiles against /lib/modules/$(uname -r)/build. When the running kernel has no headers
# package (custom kernels), Debian's generic headers work when build -> /usr/src/linux-headers-*-ARCH
# and source -> the matching -common directory (docs/kernels.md).
MODDIR="/lib/modules/$KREL"
if [ -e "$MODDIR/build/Makefile" ] || [ -e "$MODDIR/build/include" ]; then
    say "kernel headers" "ok ($(readlink -f "$MODDIR/build"))"
else
    apt_update_once
    if available "linux-headers-$KREL"; then
        apt_install "linux-headers-$KREL"
        say "kernel headers" "done (installed linux-headers-$KREL)"
    else
        arch="$(dpkg --print-architecture)"
        case "$arch" in
            amd64) flavour=amd64 ;;
            arm64) flavour=arm64 ;;
            i386) flavour=686 ;;
            *) flavour="$arch" ;;
        esac
        meta="linux-headers-$flavour"
        if ! installed "$meta"; then
            available "$meta" || meta=linux-headers-generic     # Ubuntu's metapackage
            available "$meta" || die "no headers for $KREL and no $meta package"
            apt_install "$meta"
        fi
        build="$(ls -d /usr/src/linux-headers-*-"$flavour" 2>/dev/null | sort -V | tail -n 1 || true)"
        [ -z "$build" ] && build="$(ls -d /usr/src/linux-headers-*-generic 2>/dev/null | sort -V | tail -n 1 || true)"
        [ -n "$build" ] && [ -d "$build" ] || die "headers package installed but no /usr/src/linux-headers-*-$flavour"
        common="${build%-*}-common"
        mkdir -p "$MODDIR"
        ln -sfn "$build" "$MODDIR/build"
        if [ -d "$common" ]; then
            ln -sfn "$common" "$MODDIR/source"
        else
            # Ubuntu's header packages are not split the Debian way.
            ln -sfn "$build" "$MODDIR/source"
        fi
        say "kernel headers" "done ($MODDIR/build -> $build, source -> $(readlink "$MODDIR/source"))"
    fi
fi

# ---------------------------------------------------------------- tracefs / debugfs
is_mounted() {
    if command -v mountpoint >/dev/null 2>&1; then
        mountpoint -q "$1"
    else
        awk -v m="$1" '$2 == m { found = 1 } END { exit !found }' /proc/mounts
    fi
}
if is_mounted /sys/kernel/tracing; then
    say "tracefs" "ok (/sys/kernel/tracing)"
else
    mkdir -p /sys/kernel/tracing 2>/dev/null || true
    mount -t tracefs nodev /sys/kernel/tracing
    say "tracefs" "done (mounted /sys/kernel/tracing)"
fi
if is_mounted /sys/kernel/debug; then
    say "debugfs" "ok (/sys/kernel/debug)"
else
    mount -t debugfs nodev /sys/kernel/debug
    say "debugfs" "done (mounted /sys/kernel/debug)"
fi

# ---------------------------------------------------------------- venv + package
if [ -x "$VENV/bin/python" ]; then
    say "venv" "ok ($VENV)"
else
    "$SYS_PY" -m venv --system-site-packages "$VENV"
    say "venv" "done (created $VENV with --system-site-packages)"
fi
if ! grep -qi '^include-system-site-packages *= *true' "$VENV/pyvenv.cfg" 2>/dev/null; then
    die "$VENV was created without --system-site-packages, so bcc is not importable; remove it and rerun"
fi

if [ ! -x "$VENV/bin/tenantwatch" ] || [ ! -f "$STAMP" ] || [ "$REPO/pyproject.toml" -nt "$STAMP" ]; then
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$REPO[test,native]"
    touch "$STAMP"
    say "pip install -e .[test,native]" "done"
else
    say "pip install -e .[test,native]" "ok (stamp newer than pyproject.toml)"
fi

# The HTTP/2 decoder compiled with mypyc (docs/http2.md): about 30 s the first time and after
# a change to tenantwatch/h2/, else a digest check. Without it the same modules run as Python,
# about twice as slow; `make test` requires it (tests/unit/h2/test_compiled.py).
if ! "$VENV/bin/python" "$REPO/scripts/build_h2_native.py"; then
    echo "tenantwatch deps: the compiled HTTP/2 decoder could not be built; it runs as Python" >&2
fi

# The test and benchmark harness (harness/, not part of the package), editable: bench scripts
# (`.venv/bin/python bench/NAME.py`) import it as they import tenantwatch. Checked from / so
# that the repository's own directory on the path does not count.
if (cd / && "$VENV/bin/python" -c 'import harness.many_clients') 2>/dev/null; then
    say "pip install -e harness" "ok"
else
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$REPO/harness"
    say "pip install -e harness" "done"
fi

if "$VENV/bin/python" -c 'import bcc' 2>/dev/null; then
    say "bcc in venv" "ok"
else
    die "bcc is not importable from $VENV/bin/python (python3-bpfcc installed for /usr/bin/python3?)"
fi
