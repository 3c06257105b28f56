#!/usr/bin/env bash
# Install tenantwatch as a systemd service (`make install`; docs/operations.md).
#
#   /opt/tenantwatch/venv                     the package (pip, not editable), in a venv made by
#                                             /usr/bin/python3 --system-site-packages (bcc is the
#                                             system's python3-bpfcc)
#   /usr/local/bin/tenantwatch                -> /opt/tenantwatch/venv/bin/tenantwatch
#   /usr/share/tenantwatch/bpf                the BPF C sources (kernel/loader.py compiles them)
#   /etc/systemd/system/tenantwatch.service   the unit (overwritten: local changes go in drop-ins)
#   /etc/tenantwatch/tenantwatch.yaml         examples/tenantwatch.yaml, only when there is none:
#                                             an operator's config is never overwritten
#   /var/lib/tenantwatch                      state (also the unit's StateDirectory=)
#
# Running it again upgrades in place. It does not enable or start the service.
#
# Environment:
#   TW_ROOT  install under this directory instead of / (tests). A venv is not relocatable, so
#            this is a test root, not a packaging DESTDIR.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT="${TW_ROOT:-}"
ROOT="${ROOT%/}"
SYS_PY=/usr/bin/python3   # not the `python3` on PATH: bcc is a package of the system Python

VENV="$ROOT/opt/tenantwatch/venv"
BIN_LINK="$ROOT/usr/local/bin/tenantwatch"
SHARE="$ROOT/usr/share/tenantwatch"
UNIT_DIR="$ROOT/etc/systemd/system"
UNIT="$UNIT_DIR/tenantwatch.service"
CONF_DIR="$ROOT/etc/tenantwatch"
CONF="$CONF_DIR/tenantwatch.yaml"
STATE="$ROOT/var/lib/tenantwatch"

say() { printf '%-28s %s\n' "$1" "$2"; }
die() { echo "install: $*" >&2; exit 1; }

if [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
    die "must run as root (writes /opt, /etc, /usr/local); try: sudo make install"
fi
[ -x "$SYS_PY" ] || die "$SYS_PY not found (apt-get install python3 python3-venv)"
"$SYS_PY" -c 'import venv, ensurepip' 2>/dev/null \
    || die "$SYS_PY cannot create venvs (apt-get install python3-venv)"

# ---------------------------------------------------------------- the package, in its own venv
if [ -x "$VENV/bin/python" ] && ! grep -qi '^include-system-site-packages *= *true' "$VENV/pyvenv.cfg"; then
    die "$VENV exists without --system-site-packages (bcc would not import); remove it and rerun"
fi
if [ -x "$VENV/bin/python" ]; then
    say "venv" "ok ($VENV)"
else
    mkdir -p "$(dirname "$VENV")"
    "$SYS_PY" -m venv --system-site-packages "$VENV"
    say "venv" "done ($VENV, --system-site-packages)"
fi
# Build from a copy: pip builds in the source tree, which must stay clean (build/, egg-info).
SRC="$(mktemp -d)"
trap 'rm -rf "$SRC"' EXIT
cp -r "$REPO/pyproject.toml" "$REPO/tenantwatch" "$SRC/"
find "$SRC" -name __pycache__ -type d -prune -exec rm -rf {} +
# pip reinstalls a local directory even at the same version: an upgrade in place.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "$SRC"
version="$("$VENV/bin/tenantwatch" --version)"
say "package" "done ($version in $VENV)"
if ! "$VENV/bin/python" -c 'import bcc' 2>/dev/null; then
    echo "install: warning: bcc is not importable from $VENV/bin/python:" \
         "apt-get install python3-bpfcc (or: make deps); then run: tenantwatch doctor" >&2
fi

mkdir -p "$(dirname "$BIN_LINK")"
ln -sfn "$VENV/bin/tenantwatch" "$BIN_LINK"
say "command" "done ($BIN_LINK -> $VENV/bin/tenantwatch)"

# The compiled HTTP/2 decoder of the tree (make deps builds it), when it is of these very
# sources: tenantwatch/h2/compiled.py finds it beside the venv, and uses it only then.
rm -rf "$VENV/share/tenantwatch/h2-native"
if (cd / && TW_H2_BUILD_DIR="$REPO/build/h2-native" PYTHONPATH="$REPO" "$VENV/bin/python" -c \
      'import sys; from tenantwatch.h2 import compiled; sys.exit(compiled.check()[0] is None)') \
      2>/dev/null; then
    mkdir -p "$VENV/share/tenantwatch"
    cp -r "$REPO/build/h2-native" "$VENV/share/tenantwatch/h2-native"
    say "compiled HTTP/2 decoder" "done ($VENV/share/tenantwatch/h2-native)"
else
    say "compiled HTTP/2 decoder" "none (no current build in $REPO/build: make deps; runs as Python)"
fi

# ---------------------------------------------------------------- BPF sources
rm -rf "$SHARE/bpf"
mkdir -p "$SHARE"
cp -r "$REPO/bpf" "$SHARE/bpf"
find "$SHARE/bpf" -type d -exec chmod 0755 {} +
find "$SHARE/bpf" -type f -exec chmod 0644 {} +
# also beside the venv (share/tenantwatch/bpf): found without TENANTWATCH_BPF_DIR wherever
# the tree is installed (kernel/paths.py)
mkdir -p "$VENV/share/tenantwatch"
rm -rf "$VENV/share/tenantwatch/bpf"
cp -r "$SHARE/bpf" "$VENV/share/tenantwatch/bpf"
say "bpf sources" "done ($SHARE/bpf)"

# ---------------------------------------------------------------- systemd unit
install -D -m 0644 "$REPO/systemd/tenantwatch.service" "$UNIT"
say "unit" "done ($UNIT)"

# ---------------------------------------------------------------- config and state
mkdir -p "$CONF_DIR"
if [ -e "$CONF" ]; then
    say "config" "ok ($CONF exists, left as is)"
else
    install -m 0644 "$REPO/examples/tenantwatch.yaml" "$CONF"
    say "config" "done ($CONF from examples/tenantwatch.yaml)"
fi
install -d -m 0750 "$STATE"
say "state directory" "done ($STATE)"

# Under TW_ROOT the package must find the staged BPF sources, not /usr/share's.
if ! TENANTWATCH_BPF_DIR="$SHARE/bpf" "$VENV/bin/tenantwatch" check-config --config "$CONF" >/dev/null; then
    echo "install: warning: $CONF is not valid: $VENV/bin/tenantwatch check-config --config $CONF" >&2
fi

# ---------------------------------------------------------------- tell systemd
if [ -n "$ROOT" ]; then
    say "systemd" "skipped (TW_ROOT=$ROOT)"
elif [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload
    say "systemd" "done (daemon-reload)"
    echo "next: systemctl enable --now tenantwatch; journalctl -u tenantwatch -f"
else
    say "systemd" "note: systemd is not running here (not PID 1); run 'systemctl daemon-reload' where it is"
fi
