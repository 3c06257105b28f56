#!/usr/bin/env bash
# Build the container image localhost/tenantwatch:<version> from Debian packages only (`make
# image`; docs/operations.md, "Container image"): mmdebstrap makes a Debian 12 root file system
# with the .deb of scripts/build-deb.sh installed by apt (its dependencies from the Debian
# archive, the .deb itself with the network cut off: nothing is fetched by its installation),
# and podman imports it. No Dockerfile, no base image from a registry.
#
# Environment:
#   DEB     the .deb to install [dist/tenantwatch_<version>-1_amd64.deb, built when missing]
#   TAR     also keep the root file system tarball here (tests reuse it) [not kept]
#   MIRROR  Debian mirror [http://deb.debian.org/debian]
#   NO_IMPORT=1  build the tarball only (TAR must be set), no podman
#   ROOTFS  import this root file system tarball (one TAR= made) instead of building one
#   IMAGE   the image name [localhost/tenantwatch:<version>]
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/pyproject.toml" | head -1)"
DEB="${DEB:-$REPO/dist/tenantwatch_${version}-1_amd64.deb}"
IMAGE="${IMAGE:-localhost/tenantwatch:${version}}"

say() { printf '%-28s %s\n' "$1" "$2"; }
die() { echo "build-image: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (mmdebstrap into a directory, podman)"
command -v mmdebstrap >/dev/null || die "mmdebstrap not found (apt-get install mmdebstrap; make deps)"
[ -n "${NO_IMPORT:-}" ] || command -v podman >/dev/null \
    || die "podman not found (apt-get install podman runc; make deps)"
[ -n "${NO_IMPORT:-}" ] && [ -z "${TAR:-}" ] && die "NO_IMPORT=1 needs TAR=FILE"
import_image() {
    podman import \
        --change 'ENTRYPOINT ["/usr/bin/tenantwatch"]' \
        --change 'CMD ["run", "--config", "/etc/tenantwatch/tenantwatch.yaml"]' \
        --change 'ENV PYTHONUNBUFFERED=1' \
        --change "LABEL org.opencontainers.image.title=tenantwatch org.opencontainers.image.version=$version" \
        "$1" "$IMAGE" >/dev/null
    say "image" "done ($IMAGE)"
}

if [ -n "${ROOTFS:-}" ]; then
    [ -f "$ROOTFS" ] || die "ROOTFS=$ROOTFS not found"
    import_image "$ROOTFS"
    exit 0
fi
[ -f "$DEB" ] || bash "$REPO/scripts/build-deb.sh"
[ -f "$DEB" ] || die "$DEB not found"

out="${TAR:-$(mktemp --suffix=.tar)}"
cleanup() { [ -n "${TAR:-}" ] || rm -f "$out"; }
trap cleanup EXIT

name="$(basename "$DEB")"
# python3-bpfcc (and the rest of the .deb's Depends) come from the archive first; then the .deb
# is installed with no network (unshare -n): its installation fetches nothing.
mmdebstrap --variant=apt --quiet --include=python3-bpfcc,python3 \
    --customize-hook="copy-in '$DEB' /tmp" \
    --customize-hook='chroot "$1" sh -c "apt-cache policy >/dev/null"' \
    --customize-hook="unshare -n chroot \"\$1\" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q /tmp/$name" \
    --customize-hook='chroot "$1" tenantwatch --version' \
    --customize-hook="rm -f \"\$1/tmp/$name\"" \
    --customize-hook='chroot "$1" apt-get clean' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/*' \
    bookworm "$out" "deb $MIRROR bookworm main" \
    "deb ${MIRROR%/debian}/debian-security bookworm-security main"
say "root file system" "done ($(du -h "$out" | cut -f1)${TAR:+, $TAR})"
[ -z "${NO_IMPORT:-}" ] || exit 0
import_image "$out"
