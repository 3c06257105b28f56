#!/usr/bin/env bash
# Install what the kernel matrix (tests/vm, `make test-kernels`) needs: qemu, a static busybox, and
# Debian's stock kernels, extracted (dpkg -x) into a cache -- never installed into /boot.
#
#   6.1   bookworm's linux-image-6.1.0-N-amd64, N = the ABI of the linux-headers-6.1.0-N-amd64
#         installed on this machine (scripts/install-deps.sh); the guest uses those headers.
#   5.10  bullseye's linux-image-5.10.0-N-amd64 and linux-headers-5.10.0-N-{amd64,common}, from
#         Debian's bullseye suite (a separate sources file, pinned so that nothing else is ever
#         taken from it). When it cannot be fetched the kernel is recorded as "not tested" with the
#         reason; the script does not fail for that.
#
# Layout (TW_VM_CACHE, default /var/cache/tenantwatch-vm):
#   debs/                          the downloaded .deb files
#   kernels/<release>/             dpkg -x of the image (+ headers for 5.10); .ready when complete
#   status/<series>                "ok <release>" or "not-tested <reason>" (read by tests/vm)
#
# Usage: install-vm-deps.sh [SERIES...]   (default: 6.1 5.10; `make test` passes 6.1 only, so it
# never touches the bullseye suite)
#
# The cache lives outside the work tree, so a fresh clone (CI) reuses what an earlier run fetched
# and downloads only when the cache is empty or lacks a kernel.
#
# Idempotent and fast when done: every step checks first and prints one line, "ok" or "done".
# Needs root (apt-get).
set -euo pipefail

SERIES=("$@")
[ "${#SERIES[@]}" -gt 0 ] || SERIES=(6.1 5.10)
for s in "${SERIES[@]}"; do
    case "$s" in
        6.1|5.10|host) ;;
        *) echo "install-vm-deps: unknown kernel series '$s' (6.1, 5.10)" >&2; exit 2 ;;
    esac
done
want() { local s; for s in "${SERIES[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }

CACHE="${TW_VM_CACHE:-/var/cache/tenantwatch-vm}"
DEBS="$CACHE/debs"
KERNELS="$CACHE/kernels"
STATUS="$CACHE/status"
BULLSEYE_LIST=/etc/apt/sources.list.d/tenantwatch-bullseye.list
BULLSEYE_PIN=/etc/apt/preferences.d/tenantwatch-bullseye
export DEBIAN_FRONTEND=noninteractive

say() { printf '%-28s %s\n' "$1" "$2"; }
die() { echo "install-vm-deps: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (apt-get); try: sudo $0"
mkdir -p "$DEBS" "$KERNELS" "$STATUS"

APT_UPDATED=0
apt_update_once() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        apt-get update -qq >/dev/null 2>&1 || apt-get update -qq
        APT_UPDATED=1
    fi
}
# No `cmd | grep -q` under pipefail: grep -q exits at its first match and the writer's SIGPIPE
# (exit 141) would fail the pipeline, so the answer would depend on output size and timing.
installed() { [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == *"install ok installed"* ]]; }

# ---------------------------------------------------------------- qemu, busybox
missing=()
# kmod: depmod, to build the extracted kernels' modules.dep (the guest loads modules by it).
for p in qemu-system-x86 busybox-static cpio kmod; do
    installed "$p" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
    say "apt packages (vm)" "ok (qemu-system-x86 busybox-static cpio kmod)"
else
    apt_update_once
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    say "apt packages (vm)" "done (installed ${missing[*]})"
fi

# ---------------------------------------------------------------- helpers for kernels
# fetch PKG...: download the .debs into $DEBS (apt-get download keeps apt's file names).
fetch() {
    local p need=()
    for p in "$@"; do
        compgen -G "$DEBS/${p}_*.deb" >/dev/null || need+=("$p")
    done
    [ "${#need[@]}" -eq 0 ] && return 0
    apt_update_once
    (cd "$DEBS" && apt-get download -qq "${need[@]}" >/dev/null)
}

# ready DIR: an extracted kernel that is complete (an earlier run without depmod left .ready
# without modules.dep: that one is extracted again).
ready() { [ -f "$1/.ready" ] && [ -f "$1/lib/modules/$(basename "$1")/modules.dep" ]; }

# extract RELEASE PKG...: dpkg -x the packages' .debs into $KERNELS/RELEASE, then mark it ready.
extract() {
    local rel="$1"; shift
    local dir="$KERNELS/$rel" tmp="$KERNELS/.$rel.tmp" p deb
    rm -rf "$tmp"
    mkdir -p "$tmp"
    for p in "$@"; do
        deb="$(ls "$DEBS/${p}"_*.deb | sort -V | tail -n 1)"
        dpkg -x "$deb" "$tmp"
    done
    [ -f "$tmp/boot/vmlinuz-$rel" ] || die "no boot/vmlinuz-$rel in the extracted packages"
    [ -d "$tmp/lib/modules/$rel/kernel" ] || die "no lib/modules/$rel in the extracted packages"
    # Module dependency lists are built by the package's postinst, which dpkg -x does not run.
    if [ ! -f "$tmp/lib/modules/$rel/modules.dep" ]; then
        PATH="$PATH:/usr/sbin:/sbin" depmod -b "$tmp" "$rel" \
            || die "depmod -b $tmp $rel failed (package kmod)"
        [ -f "$tmp/lib/modules/$rel/modules.dep" ] || die "depmod wrote no modules.dep for $rel"
    fi
    rm -rf "$dir"
    mv "$tmp" "$dir"
    touch "$dir/.ready"
}

# ---------------------------------------------------------------- 6.1 (bookworm)
install_61() {
build61="$(ls -d /usr/src/linux-headers-6.1.0-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)"
if [ -z "$build61" ]; then
    apt_update_once
    apt-get install -y -qq --no-install-recommends linux-headers-amd64 >/dev/null
    build61="$(ls -d /usr/src/linux-headers-6.1.0-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)"
    [ -n "$build61" ] || die "linux-headers-amd64 installed but no /usr/src/linux-headers-6.1.0-*-amd64"
fi
rel61="${build61#/usr/src/linux-headers-}"
if ready "$KERNELS/$rel61"; then
    say "kernel 6.1" "ok ($rel61 in $KERNELS)"
else
    if fetch "linux-image-$rel61" 2>"$STATUS/6.1.err"; then
        extract "$rel61" "linux-image-$rel61"
        say "kernel 6.1" "done (linux-image-$rel61 -> $KERNELS/$rel61)"
    else
        say "kernel 6.1" "NOT AVAILABLE (linux-image-$rel61: $(tr '\n' ' ' <"$STATUS/6.1.err"))"
    fi
fi
if ready "$KERNELS/$rel61"; then
    echo "ok $rel61" >"$STATUS/6.1"
else
    echo "not-tested linux-image-$rel61 (matching the installed headers) could not be fetched: $(tr '\n' ' ' <"$STATUS/6.1.err" 2>/dev/null)" >"$STATUS/6.1"
fi
}

# ---------------------------------------------------------------- 5.10 (bullseye)
# The image and headers only: the pin keeps every other package on bookworm (priority 1 < 500:
# a bullseye version is never a candidate while bookworm has one, and nothing is installed).
bullseye_sources() {
    local changed=0
    if [ ! -f "$BULLSEYE_LIST" ]; then
        echo "deb http://deb.debian.org/debian bullseye main" >"$BULLSEYE_LIST"
        changed=1
    fi
    if [ ! -f "$BULLSEYE_PIN" ]; then
        printf 'Package: *\nPin: release n=bullseye\nPin-Priority: 1\n' >"$BULLSEYE_PIN"
        changed=1
    fi
    if [ "$changed" -eq 1 ] || ! compgen -G "/var/lib/apt/lists/*_dists_bullseye_*Packages*" >/dev/null; then
        APT_UPDATED=0
        apt_update_once
        say "bullseye sources" "done ($BULLSEYE_LIST, pinned at 1)"
    else
        say "bullseye sources" "ok ($BULLSEYE_LIST)"
    fi
}

install_510() {
rel510="$(ls -d "$KERNELS"/5.10.0-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)"
if [ -n "$rel510" ] && ready "$rel510"; then
    rel510="$(basename "$rel510")"
    say "kernel 5.10" "ok ($rel510 in $KERNELS)"
    echo "ok $rel510" >"$STATUS/5.10"
else
    reason=""
    if ! bullseye_sources 2>"$STATUS/5.10.err"; then
        reason="apt-get update with the bullseye suite failed: $(tr '\n' ' ' <"$STATUS/5.10.err")"
    else
        # The newest 5.10 ABI in bullseye: the one linux-image-amd64 (bullseye) depends on.
        rel510="$(apt-cache show 'linux-image-amd64' 2>/dev/null \
                  | awk '/^Depends:/ && /linux-image-5\.10\.0-/ {print}' \
                  | grep -o 'linux-image-5\.10\.0-[0-9]*-amd64' | sort -V | tail -n 1 || true)"
        rel510="${rel510#linux-image-}"
        if [ -z "$rel510" ]; then
            reason="no linux-image-5.10.0-*-amd64 in Debian's bullseye suite (apt-cache show linux-image-amd64)"
        elif ! fetch "linux-image-$rel510" "linux-headers-$rel510" \
                "linux-headers-${rel510%-amd64}-common" 2>"$STATUS/5.10.err"; then
            reason="downloading linux-image-$rel510 / linux-headers-$rel510 failed: $(tr '\n' ' ' <"$STATUS/5.10.err")"
        else
            extract "$rel510" "linux-image-$rel510" "linux-headers-$rel510" \
                "linux-headers-${rel510%-amd64}-common"
        fi
    fi
    if [ -z "$reason" ]; then
        echo "ok $rel510" >"$STATUS/5.10"
        say "kernel 5.10" "done ($rel510 -> $KERNELS/$rel510, with headers)"
    else
        echo "not-tested $reason" >"$STATUS/5.10"
        say "kernel 5.10" "NOT TESTED ($reason)"
    fi
fi
}

if want 6.1; then install_61; fi
if want 5.10; then install_510; fi
rm -f "$STATUS"/*.err
