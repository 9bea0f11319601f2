#!/usr/bin/env bash
# Run one command inside the arm64 root, as on a Raspberry Pi 4, and unmount everything after.
#   sudo bash scripts/arm64/chroot.sh ROOT [--bind SRC:DST[:ro]]... -- COMMAND [ARG]...
#
# Mounts (all inside ROOT, all in a private mount namespace so none can outlive this script even
# when it is killed; an EXIT trap also unmounts them in reverse order and checks that none is
# left): proc, a Raspberry Pi 4 /proc/cpuinfo over it (onnxruntime's cpuinfo crashes with signal
# 11 under qemu on the host's x86 cpuinfo), a read-only sysfs, the host's /dev and /dev/pts,
# a tmpfs on /dev/shm and on /run, and the --bind folders. The network namespace is the host's: 127.0.0.1 in here is the host's.
# The command gets a clean environment: PATH, HOME, LANG, the host's pip settings (written to
# ROOT/etc/pip.conf with the host's CA bundle) and QEMU_CPU (EDGED_ARM64_CPU, default cortex-a72,
# the Raspberry Pi 4's core; cortex-a76 is a Raspberry Pi 5).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
die() { echo "arm64/chroot: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (mount, chroot)"
if [ -z "${EDGED_ARM64_PRIVATE_NS:-}" ]; then
    exec env EDGED_ARM64_PRIVATE_NS=1 unshare --mount --propagation private -- bash "$0" "$@"
fi

[ $# -ge 1 ] || die "usage: chroot.sh ROOT [--bind SRC:DST[:ro]]... -- COMMAND..."
ROOT=$(cd "$1" && pwd)
shift
[ -f "$ROOT/.edged-arm64-root" ] || die "$ROOT is not an arm64 root built by build-root.sh"
BINDS=()
while [ $# -gt 0 ]; do
    case "$1" in
    --bind) BINDS+=("$2"); shift 2 ;;
    --) shift; break ;;
    *) die "unknown option '$1'" ;;
    esac
done
[ $# -ge 1 ] || die "no command given after --"

MOUNTED=()
mnt() { # mnt TARGET mount-args...: mount and remember TARGET for the tear-down
    local target=$1
    shift
    mount "$@" "$target"
    MOUNTED+=("$target")
}
teardown() {
    local rc=$? i target left
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
        target=${MOUNTED[i]}
        umount "$target" 2>/dev/null || umount --lazy "$target" 2>/dev/null || true
    done
    left=$(awk -v r="$ROOT" '$5 == r || index($5, r "/") == 1 {print $5}' /proc/self/mountinfo)
    if [ -n "$left" ]; then
        echo "arm64/chroot: error: still mounted after tear-down: $left" >&2
        [ "$rc" != 0 ] || rc=1
    fi
    exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# files copied in at every entry: they follow the host
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
cp /etc/hosts "$ROOT/etc/hosts"
mkdir -p "$ROOT/etc/ssl/certs" "$ROOT/usr/local/share/ca-certificates"
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
# the host's own CAs also go where update-ca-certificates looks, should ca-certificates be installed
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
fi
python3 "$HERE/pipconf.py" >"$ROOT/etc/pip.conf"

mnt "$ROOT/proc" -t proc proc
mnt "$ROOT/proc/cpuinfo" --bind "$HERE/cpuinfo-rpi4"
mount -o remount,bind,ro "$ROOT/proc/cpuinfo"
mnt "$ROOT/sys" -t sysfs -o ro,nosuid,nodev,noexec sysfs
mnt "$ROOT/dev" --bind /dev
# apt opens a pseudo-terminal for its log; the host's devpts, so /dev/ptmx matches it
if mountpoint -q /dev/pts; then mnt "$ROOT/dev/pts" --bind /dev/pts; fi
mnt "$ROOT/dev/shm" -t tmpfs -o mode=1777,nosuid,nodev tmpfs
mnt "$ROOT/run" -t tmpfs -o mode=0755,nosuid,nodev tmpfs
for spec in "${BINDS[@]}"; do
    IFS=: read -r src dst mode <<<"$spec"
    [ -d "$src" ] || die "--bind $spec: $src is not a folder"
    mkdir -p "$ROOT$dst"
    mnt "$ROOT$dst" --bind "$src"
    [ "${mode:-}" != ro ] || mount -o remount,bind,ro "$ROOT$dst"
done

env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    TERM=dumb DEBIAN_FRONTEND=noninteractive QEMU_CPU="${EDGED_ARM64_CPU:-cortex-a72}" \
    ${PIP_CONSTRAINT:+PIP_CONSTRAINT="$PIP_CONSTRAINT"} ${CI:+CI="$CI"} \
    chroot "$ROOT" "$@"
