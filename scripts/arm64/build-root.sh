#!/usr/bin/env bash
# Build an arm64 Debian bookworm root for the emulated Raspberry Pi run (scripts/arm64/run.sh).
#   sudo bash scripts/arm64/build-root.sh ROOT
# debootstrap --variant=minbase plus systemd (install.sh needs systemctl, as on Raspberry Pi OS),
# from the Debian mirror this host's apt already uses (override: EDGED_ARM64_MIRROR). The root
# is written to ROOT.partial and renamed to ROOT only when complete, with a stamp file holding
# the build key, so an interrupted build is never mistaken for a cached root.
# Runs in a private mount namespace: what debootstrap mounts inside the root vanishes with it,
# even when it is killed.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
die() { echo "arm64/build-root: error: $*" >&2; exit 1; }
say() { echo "arm64/build-root: $*"; }

[ $# = 1 ] || die "usage: build-root.sh ROOT"
ROOT=$1
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot)"
if [ -z "${EDGED_ARM64_PRIVATE_NS:-}" ]; then
    exec env EDGED_ARM64_PRIVATE_NS=1 unshare --mount --propagation private -- bash "$0" "$@"
fi

# shellcheck source=common.sh
. "$HERE/common.sh"

command -v debootstrap >/dev/null || die "debootstrap not found; apt-get install debootstrap"
MIRROR=$(debian_mirror)
SECURITY=$(debian_security_mirror)
KEY=$(root_key "$MIRROR")
PARTIAL="$ROOT.partial"

rm -rf "$PARTIAL"
mkdir -p "$(dirname "$ROOT")"
say "debootstrap --arch=arm64 --variant=minbase --include=$ARM64_INCLUDE $ARM64_SUITE from $MIRROR"
log="$(dirname "$ROOT")/debootstrap.log"
if ! debootstrap --arch=arm64 --variant=minbase --include="$ARM64_INCLUDE" "$ARM64_SUITE" "$PARTIAL" "$MIRROR" >"$log" 2>&1; then
    tail -20 "$log" >&2
    [ -f "$PARTIAL/debootstrap/debootstrap.log" ] && tail -20 "$PARTIAL/debootstrap/debootstrap.log" >&2
    die "debootstrap failed (log above, full log $log); check the mirror $MIRROR and that qemu-aarch64 is registered with binfmt_misc"
fi

# apt: the same mirror, plus updates and security, like a maintained Pi
rm -f "$PARTIAL/etc/apt/sources.list"
{
    printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$MIRROR" "$ARM64_SUITE" "$ARM64_SUITE"
    if [ -n "$SECURITY" ]; then
        printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            "$SECURITY" "$ARM64_SUITE"
    fi
} >"$PARTIAL/etc/apt/sources.list.d/debian.sources"
# the host's Acquire:: settings (e.g. a snapshot mirror's Check-Valid-Until), nothing else
for f in /etc/apt/apt.conf.d/*; do
    [ -f "$f" ] && grep -q '^Acquire::' "$f" && cp "$f" "$PARTIAL/etc/apt/apt.conf.d/"
done
# no service may start inside a chroot
printf '#!/bin/sh\nexit 101\n' >"$PARTIAL/usr/sbin/policy-rc.d"
chmod 0755 "$PARTIAL/usr/sbin/policy-rc.d"
chroot "$PARTIAL" apt-get clean

echo "$KEY" >"$PARTIAL/.edged-arm64-root"
rm -rf "$ROOT"
mv "$PARTIAL" "$ROOT"
say "built $ROOT ($(du -sm "$ROOT" | cut -f1) MB, $(chroot "$ROOT" uname -m))"
