#!/usr/bin/env bash
# Install Prometheus (Debian package `prometheus`: /usr/bin/prometheus and /usr/bin/promtool) for
# the alert-rule tests (`promtool check rules`, `promtool test rules`) and the e2e test that runs
# a real Prometheus against the daemon (tests/e2e/test_prometheus.py).
#
# Idempotent: installs only when promtool or prometheus is missing, and prints one line, "ok" or
# "done", like scripts/install-deps.sh. The package's postinst may start the system Prometheus
# (init script or daemon wrapper, listening on :9090): when this script did the install, it stops
# the /usr/bin/prometheus processes that were not running before, by pid, and no other process.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

say() { printf '%-28s %s\n' "$1" "$2"; }
die() { echo "install-prometheus: $*" >&2; exit 1; }

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/bin/$1" ]; }

if have prometheus && have promtool; then
    say "prometheus" "ok ($(command -v prometheus || echo /usr/bin/prometheus), $(command -v promtool || echo /usr/bin/promtool))"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || die "prometheus/promtool missing and not root; try: sudo $0"

# pids whose executable is /usr/bin/prometheus (the package's binary), one per line.
prometheus_pids() {
    local d exe
    for d in /proc/[0-9]*; do
        exe="$(readlink "$d/exe" 2>/dev/null || true)"
        case "$exe" in
            /usr/bin/prometheus | "/usr/bin/prometheus (deleted)") echo "${d#/proc/}" ;;
        esac
    done
}

before="$(prometheus_pids | sort -n || true)"

apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
have prometheus && have promtool || die "package prometheus installed but prometheus/promtool not found"

# Stop what the postinst started: only processes that were not running before the install.
started=()
for pid in $(prometheus_pids); do
    grep -qx "$pid" <<<"$before" || started+=("$pid")
done
stopped=""
if [ "${#started[@]}" -gt 0 ]; then
    # If the init script runs it under a respawning wrapper (daemon(1)), stop the wrapper first,
    # so that it does not start a new one: only a wrapper whose child is one of our pids.
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
    stopped=", stopped pid ${started[*]} started by the package install"
fi
say "prometheus" "done (installed $(dpkg-query -W -f='${Version}' prometheus)$stopped)"
