#!/usr/bin/env bash
# Build dist/tenantwatch_<version>-1_amd64.deb (`make deb`; docs/operations.md, "Install from
# the package").  Needs no root and no debhelper: dpkg-deb only.
#
# What the package holds:
#   /usr/bin/tenantwatch                      the command (system python3 -s, vendored path first)
#   /usr/lib/tenantwatch/python/              tenantwatch and every Python dependency, vendored
#                                             (pip --target at build time: nothing is fetched at
#                                             install time); bcc comes from python3-bpfcc
#   /usr/share/tenantwatch/bpf/               the BPF C sources (compiled by bcc at start)
#   /usr/share/tenantwatch/dashboards/        Grafana dashboards, alert and fleet rules
#   /lib/systemd/system/tenantwatch.service   the unit (ExecStart /usr/bin/tenantwatch)
#   /etc/tenantwatch/tenantwatch.yaml         conffile (examples/tenantwatch.yaml)
#   /etc/tenantwatch/conf.d/                  drop-ins, merged in name order (docs/config.md)
#   /etc/default/tenantwatch                  conffile: TENANTWATCH_OPTS for the unit
#
# The vendored wheels are CPython 3.11 / x86-64 builds (psutil, cryptography, bcrypt have C
# parts), so the package is for Debian 12 (bookworm) on amd64, which Depends: says.
#
# Environment: PYTHON (a python3.11 with pip, default .venv/bin/python), OUT (default dist/).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
OUT="${OUT:-$REPO/dist}"
REVISION=1
ARCH=amd64

say() { printf '%-28s %s\n' "$1" "$2"; }
die() { echo "build-deb: $*" >&2; exit 1; }

command -v dpkg-deb >/dev/null || die "dpkg-deb not found (apt-get install dpkg)"
[ -x "$PYTHON" ] || die "$PYTHON not found: run make deps first, or set PYTHON"
pyver="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ "$pyver" = 3.11 ] || die "$PYTHON is Python $pyver; the package vendors CPython 3.11 wheels"
[ "$(dpkg --print-architecture)" = "$ARCH" ] || die "builds on $ARCH only"

version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/pyproject.toml" | head -1)"
[ -n "$version" ] || die "no version in pyproject.toml"
pkg="tenantwatch_${version}-${REVISION}_${ARCH}"

STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
ROOT="$STAGE/$pkg"
LIB="$ROOT/usr/lib/tenantwatch/python"
mkdir -p "$LIB" "$ROOT/usr/bin" "$ROOT/usr/share/tenantwatch" "$ROOT/lib/systemd/system" \
    "$ROOT/etc/tenantwatch/conf.d" "$ROOT/etc/default" "$ROOT/usr/share/doc/tenantwatch" \
    "$ROOT/DEBIAN"

# ---------------------------------------------------------------- Python: tenantwatch + deps
SRC="$STAGE/src"
mkdir -p "$SRC"
cp -r "$REPO/pyproject.toml" "$REPO/tenantwatch" "$SRC/"
find "$SRC" -name __pycache__ -type d -prune -exec rm -rf {} +
"$PYTHON" -m pip install -q --disable-pip-version-check --no-compile --only-binary=:all: \
    --no-warn-script-location --target "$LIB" "$SRC[otel,registry]" \
    || "$PYTHON" -m pip install -q --disable-pip-version-check --no-compile \
        --no-warn-script-location --target "$LIB" "$SRC[otel,registry]"
rm -rf "$LIB/bin"  # console scripts of the vendored packages: /usr/bin/tenantwatch is ours
find "$LIB" -name __pycache__ -type d -prune -exec rm -rf {} +
say "python" "done ($(find "$LIB" -maxdepth 1 -name '*.dist-info' | wc -l) distributions vendored)"

cat > "$ROOT/usr/bin/tenantwatch" <<'EOF'
#!/usr/bin/python3 -s
# tenantwatch (Debian package): the vendored packages first, then the system's (bcc); the BPF
# sources beside them (relative to this file, so an unpacked tree works too).
import os
import sys

usr = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
sys.path.insert(0, os.path.join(usr, "lib", "tenantwatch", "python"))
os.environ.setdefault("TENANTWATCH_BPF_DIR", os.path.join(usr, "share", "tenantwatch", "bpf"))
from tenantwatch.cli import main  # noqa: E402

sys.exit(main())
EOF
chmod 0755 "$ROOT/usr/bin/tenantwatch"

# ---------------------------------------------------------------- data, unit, config
cp -r "$REPO/bpf" "$ROOT/usr/share/tenantwatch/bpf"
cp -r "$REPO/dashboards" "$ROOT/usr/share/tenantwatch/dashboards"
sed 's|/usr/local/bin/tenantwatch|/usr/bin/tenantwatch|g' "$REPO/systemd/tenantwatch.service" \
    > "$ROOT/lib/systemd/system/tenantwatch.service"
grep -q 'ExecStart=/usr/bin/tenantwatch run' "$ROOT/lib/systemd/system/tenantwatch.service" \
    || die "the unit's ExecStart was not rewritten to /usr/bin/tenantwatch"
cp "$REPO/examples/tenantwatch.yaml" "$ROOT/etc/tenantwatch/tenantwatch.yaml"
cat > "$ROOT/etc/tenantwatch/conf.d/README" <<'EOF'
Drop-in files for /etc/tenantwatch/tenantwatch.yaml: every *.yaml and *.yml here is merged
over it in name order (mappings key by key, anything else replaced). See
/usr/share/doc/tenantwatch/README.md and docs/config.md in the source.
EOF
cat > "$ROOT/etc/default/tenantwatch" <<'EOF'
# Read by tenantwatch.service (EnvironmentFile=). Extra options of `tenantwatch run`, e.g.
#   TENANTWATCH_OPTS="--log-format json"
# and TENANTWATCH_* overrides of the config (docs/config.md, "Environment"), e.g.
#   TENANTWATCH_ENFORCEMENT_MODE=dry-run
TENANTWATCH_OPTS=""
EOF
cp "$REPO/README.md" "$ROOT/usr/share/doc/tenantwatch/README.md"
cat > "$ROOT/usr/share/doc/tenantwatch/copyright" <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: tenantwatch
Comment: the vendored Python packages under /usr/lib/tenantwatch/python keep their licences in
 their *.dist-info directories.
EOF
find "$ROOT" -type d -exec chmod 0755 {} +
find "$ROOT/usr/share" "$ROOT/etc" "$ROOT/lib" "$LIB" -type f -exec chmod 0644 {} +
find "$LIB" -name '*.so' -exec chmod 0755 {} +

# ---------------------------------------------------------------- control files
installed_kb="$(du -sk --exclude=DEBIAN "$ROOT" | cut -f1)"
cat > "$ROOT/DEBIAN/control" <<EOF
Package: tenantwatch
Version: ${version}-${REVISION}
Architecture: ${ARCH}
Maintainer: tenantwatch developers <tenantwatch@example.invalid>
Installed-Size: ${installed_kb}
Depends: python3 (>= 3.11), python3 (<< 3.12), python3-bpfcc
Recommends: linux-headers-amd64
Suggests: nginx, prometheus, prometheus-alertmanager
Section: net
Priority: optional
Homepage: https://tenantwatch.example/
Description: per-tenant attribution of API gateway traffic and CPU with eBPF
 tenantwatch attaches eBPF probes (bcc) to a gateway's sockets (nginx, HAProxy, Envoy) and
 attributes requests, latency and CPU time to tenants taken from request headers or a
 verified JWT claim; flags hotspots and noisy neighbours; can cap a tenant's CPU through
 cgroups (dry-run by default); exports Prometheus and OpenTelemetry metrics.
 .
 Every Python dependency is vendored under /usr/lib/tenantwatch/python; bcc is the
 system's python3-bpfcc. The service is installed but neither enabled nor started.
EOF
cat > "$ROOT/DEBIAN/conffiles" <<'EOF'
/etc/tenantwatch/tenantwatch.yaml
/etc/default/tenantwatch
/etc/tenantwatch/conf.d/README
EOF
cat > "$ROOT/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    mkdir -p /var/lib/tenantwatch
    chmod 0750 /var/lib/tenantwatch
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null 2>&1 || true
    fi
    if [ -z "$2" ]; then
        echo "tenantwatch: installed, not started. Check the config, then:"
        echo "  tenantwatch check-config --config /etc/tenantwatch/tenantwatch.yaml"
        echo "  systemctl enable --now tenantwatch"
    elif [ -d /run/systemd/system ] && systemctl is-active --quiet tenantwatch; then
        systemctl restart tenantwatch || true  # an upgrade: the running daemon gets the new code
    fi
fi
exit 0
EOF
cat > "$ROOT/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
# byte code Python wrote beside the vendored modules (as py3clean does for Debian's own)
find /usr/lib/tenantwatch/python -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null \
    || true
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    # ExecStopPost releases any CPU cap the daemon wrote
    systemctl stop tenantwatch >/dev/null 2>&1 || true
    systemctl disable tenantwatch >/dev/null 2>&1 || true
fi
exit 0
EOF
cat > "$ROOT/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = purge ]; then
    rm -rf /var/lib/tenantwatch
    rmdir /etc/tenantwatch/conf.d /etc/tenantwatch 2>/dev/null || true
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
EOF
chmod 0755 "$ROOT/DEBIAN/postinst" "$ROOT/DEBIAN/prerm" "$ROOT/DEBIAN/postrm"
chmod 0644 "$ROOT/DEBIAN/control" "$ROOT/DEBIAN/conffiles"

mkdir -p "$OUT"
dpkg-deb --root-owner-group -Zxz --build "$ROOT" "$OUT/$pkg.deb" >/dev/null
say "deb" "done ($OUT/$pkg.deb, $(du -h "$OUT/$pkg.deb" | cut -f1))"
