#!/usr/bin/env bash
# Install Prometheus (Debian package `prometheus`: /usr/bin/prometheus and /usr/bin/promtool) and
# Alertmanager (`prometheus-alertmanager`, with amtool) for the alert-rule tests (`promtool check
# rules`, `promtool test rules`, `amtool check-config`) and the e2e tests that run a real
# Prometheus against the daemon (tests/e2e/test_prometheus.py) and a fleet of three daemons with
# Alertmanager (tests/e2e/test_fleet.py).
#
# Idempotent: installs only when promtool or prometheus is missing, and prints one line, "ok" or
# "done", like scripts/install-deps.sh. A package's postinst may start the system Prometheus or
# Alertmanager (init script or daemon wrapper, listening on :9090 / :9093): when this script did
# the install, it stops the processes of that binary that were not running before, by pid, and
# no other process.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

say() { printf '%-28s %s\n' "$1" "$2"; }
die() { echo "install-prometheus: $*" >&2; exit 1; }

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/bin/$1" ]; }

# pids whose executable is /usr/bin/$1 (a package's binary), one per line.
pids_of() {
    local d exe
    for d in /proc/[0-9]*; do
        exe="$(readlink "$d/exe" 2>/dev/null || true)"
        case "$exe" in
            "/usr/bin/$1" | "/usr/bin/$1 (deleted)") echo "${d#/proc/}" ;;
        esac
    done
}

# Stop what a postinst started: processes of /usr/bin/$1 whose pid is not in $2 (those running
# before the install). If the init script runs one under a respawning wrapper (daemon(1)), stop
# the wrapper first, so that it does not start a new one: only a wrapper whose child is ours.
stop_started() {
    local binary="$1" before="$2" pid ppid started=()
    for pid in $(pids_of "$binary"); do
        grep -qx "$pid" <<<"$before" || started+=("$pid")
    done
    [ "${#started[@]}" -gt 0 ] || return 0
    for pid in "${started[@]}"; do
        ppid="$(awk '{print $4}' "/proc/$pid/stat" 2>/dev/null || true)"
        if [ -n "$ppid" ] && [ "$ppid" -gt 1 ] \
            && [ "$(readlink "/proc/$ppid/exe" 2>/dev/null || true)" = /usr/bin/daemon ]; then
            kill -TERM "$ppid" 2>/dev/null || true
        fi
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${started[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    done
    echo ", stopped pid ${started[*]} started by the package install"
}

# install PACKAGE BINARY...: apt-get install PACKAGE unless every BINARY is there.
install() {
    local package="$1" b missing=0 before stopped
    shift
    for b in "$@"; do have "$b" || missing=1; done
    if [ "$missing" -eq 0 ]; then
        say "$package" "ok ($(for b in "$@"; do printf '%s ' "$(command -v "$b" || echo "/usr/bin/$b")"; done))"
        return 0
    fi
    [ "$(id -u)" -eq 0 ] || die "$* missing and not root; try: sudo $0"
    before="$(pids_of "$1" | sort -n || true)"
    [ -n "${UPDATED:-}" ] || { apt-get update -qq >/dev/null; UPDATED=1; }
    apt-get install -y -qq --no-install-recommends "$package" >/dev/null
    for b in "$@"; do have "$b" || die "package $package installed but $b not found"; done
    stopped="$(stop_started "$1" "$before")"
    say "$package" "done (installed $(dpkg-query -W -f='${Version}' "$package")$stopped)"
}

install prometheus prometheus promtool
install prometheus-alertmanager prometheus-alertmanager amtool
