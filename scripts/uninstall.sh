#!/usr/bin/env bash
# Remove what scripts/install.sh put in place (`make uninstall`; docs/operations.md).
#
# Stops and disables the service first where systemd runs. Keeps the operator's config
# (/etc/tenantwatch, drop-ins in /etc/systemd/system/tenantwatch.service.d) and any state left
# in /var/lib/tenantwatch, unless PURGE=1.
#
# Environment:
#   TW_ROOT  the root install.sh used [/]
#   PURGE=1  also remove /etc/tenantwatch, the unit's drop-ins and /var/lib/tenantwatch
set -euo pipefail

ROOT="${TW_ROOT:-}"
ROOT="${ROOT%/}"
PURGE="${PURGE:-0}"

OPT="$ROOT/opt/tenantwatch"
BIN_LINK="$ROOT/usr/local/bin/tenantwatch"
SHARE="$ROOT/usr/share/tenantwatch"
UNIT="$ROOT/etc/systemd/system/tenantwatch.service"
DROPINS="$ROOT/etc/systemd/system/tenantwatch.service.d"
CONF_DIR="$ROOT/etc/tenantwatch"
STATE="$ROOT/var/lib/tenantwatch"

say() { printf '%-28s %s\n' "$1" "$2"; }
die() { echo "uninstall: $*" >&2; exit 1; }

if [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
    die "must run as root; try: sudo make uninstall"
fi

SYSTEMD=0
if [ -z "$ROOT" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    SYSTEMD=1
fi
if [ "$SYSTEMD" -eq 1 ] && [ -e "$UNIT" ]; then
    systemctl disable --now tenantwatch.service || true
    say "service" "done (stopped and disabled)"
fi

remove() {  # remove PATH DESCRIPTION
    if [ -e "$1" ] || [ -L "$1" ]; then
        rm -rf "$1"
        say "$2" "done (removed $1)"
    else
        say "$2" "ok (no $1)"
    fi
}

# The symlink only when it is ours (points into the venv).
if [ -L "$BIN_LINK" ] && [ "$(readlink "$BIN_LINK")" = "$OPT/venv/bin/tenantwatch" ]; then
    remove "$BIN_LINK" "command"
elif [ -e "$BIN_LINK" ]; then
    say "command" "kept ($BIN_LINK is not install.sh's symlink)"
else
    say "command" "ok (no $BIN_LINK)"
fi
remove "$UNIT" "unit"
# Drop-ins (tenantwatch.service.d/) are the operator's configuration: kept unless PURGE=1.
remove "$SHARE" "bpf sources"
remove "$OPT" "package"

if [ "$PURGE" = "1" ]; then
    remove "$CONF_DIR" "config"
    remove "$DROPINS" "unit drop-ins"
    remove "$STATE" "state directory"
else
    [ -e "$CONF_DIR" ] && say "config" "kept ($CONF_DIR; PURGE=1 removes it)"
    [ -e "$DROPINS" ] && say "unit drop-ins" "kept ($DROPINS; PURGE=1 removes it)"
    if [ -d "$STATE" ] && rmdir "$STATE" 2>/dev/null; then
        say "state directory" "done (removed empty $STATE)"
    elif [ -e "$STATE" ]; then
        say "state directory" "kept ($STATE is not empty; PURGE=1 removes it)"
    fi
fi

if [ -n "$ROOT" ]; then
    say "systemd" "skipped (TW_ROOT=$ROOT)"
elif [ "$SYSTEMD" -eq 1 ]; then
    systemctl daemon-reload
    systemctl reset-failed tenantwatch.service 2>/dev/null || true
    say "systemd" "done (daemon-reload)"
else
    say "systemd" "note: systemd is not running here (not PID 1); nothing to reload"
fi
