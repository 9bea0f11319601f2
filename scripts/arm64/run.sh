#!/usr/bin/env bash
# Proof on 64-bit Arm: the Raspberry Pi install path and the edge pipeline, run under qemu user
# emulation in an arm64 Debian bookworm chroot. As root, from a checkout:
#   sudo bash scripts/arm64/run.sh [--models DIR] [--fresh] [--root DIR]
#
#  1. host: apt packages (qemu-user-static binfmt-support debootstrap mosquitto), .venv
#     (scripts/setup.sh), qemu-aarch64 registered with binfmt_misc, the int8 bundle (--models,
#     default models/default, exported with `edged-export --quantize` when it does not verify);
#  2. the arm64 root: reused from the cache (EDGED_ARM64_ROOT, default /var/cache/edged-arm64/root)
#     when its build key matches and its dpkg state is whole (common.sh root_damage: no
#     interrupted dpkg run, e.g. apt-get on a full disk), else built again by build-root.sh; --fresh (the default when CI is set)
#     builds a new one in a temporary folder and deletes it at the end;
#  3. x86-64 reference: `edged diarize` of the same recordings (and the daemon's) with the same
#     bundle, on the host;
#  4. a mosquitto broker on the host's 127.0.0.1 and a subscriber (`edged listen --json`);
#  5. inside the root (chroot.sh -> inside.sh): scripts/install.sh, `edged check`, then side by
#     side `edged diarize` of --files and `edged run` replaying --daemon-file to the host's broker;
#  6. compare.py: arm64 RTTMs (diarize, and the daemon's turns) vs x86-64 RTTMs, and the turns the
#     subscriber got vs the daemon's spooled turns;
#  7. tear-down (EXIT trap): broker and subscriber stopped, nothing left mounted under the root
#     (checked with findmnt), a --fresh root removed.
# Results and logs: out/arm64/ (EDGED_ARM64_WORK). Emulation is 40-65x slower than a device:
# nothing here measures speed.
#   EDGED_ARM64_CPU     qemu CPU model (default cortex-a72, a Raspberry Pi 4; cortex-a76: Pi 5)
#   EDGED_ARM64_PIN     1 (default): install the host venv's versions of the runtime's
#                       dependencies in the root (PIP_CONSTRAINT), so both sides run the same
#                       onnxruntime/numpy; 0: whatever the registry resolves, as on a new device
#   EDGED_ARM64_MIRROR  Debian mirror (default: the one the host's apt uses)
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
HERE=$REPO/scripts/arm64

MODELS=${EDGED_MODELS:-models/default}
DATA=${EDGED_DATA:-$(cd .. && pwd)/shared/data}
CACHE_ROOT=${EDGED_ARM64_ROOT:-/var/cache/edged-arm64/root}
WORK=${EDGED_ARM64_WORK:-$REPO/out/arm64}
# kept short: emulated inference runs ~15-25x slower than real time per process; 30 s of speech
# keeps one 17 ms frame of difference below 0.1 DER point
FILES=(sample/sample.wav)
DAEMON_FILE=sample/sample.wav
DEVICE=arm64pi
SPEED=4
FRESH=0
[ -z "${CI:-}" ] || FRESH=1

usage() {
    sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'
    cat <<EOF
options:
  --models DIR        int8 model bundle exported on the host (default models/default)
  --fresh             build a new root in a temporary folder and remove it at the end (default with CI set)
  --cached            reuse/keep the cached root even when CI is set
  --root DIR          cached root folder (default $CACHE_ROOT)
  --files "A B"       recordings under \$EDGED_DATA to diarize (default: ${FILES[*]})
  --daemon-file F     recording the daemon replays (default $DAEMON_FILE)
EOF
}
die() { echo "arm64: error: $*" >&2; exit 1; }
say() { echo "arm64 [$(($(date +%s) - T0)) s]: $*"; }
T0=$(date +%s)

while [ $# -gt 0 ]; do
    case "$1" in
    --models) MODELS=$2; shift 2 ;;
    --fresh) FRESH=1; shift ;;
    --cached) FRESH=0; shift ;;
    --root) CACHE_ROOT=$2; shift 2 ;;
    --files) read -r -a FILES <<<"$2"; shift 2 ;;
    --daemon-file) DAEMON_FILE=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option '$1'; see --help" ;;
    esac
done

# ---- checks and host packages --------------------------------------------------------------
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, mount, chroot); use sudo"
[ -d "$DATA" ] || die "shared data not found at $DATA; set EDGED_DATA"
for f in "${FILES[@]}" "$DAEMON_FILE"; do
    [ -f "$DATA/$f" ] || die "recording $DATA/$f not found; pass --files with paths under \$EDGED_DATA"
    [ -f "$DATA/${f%.*}.rttm" ] || die "reference $DATA/${f%.*}.rttm not found; every recording needs its RTTM"
done
HOST_APT="qemu-user-static binfmt-support debootstrap mosquitto"
[ "$(uname -m)" != aarch64 ] || HOST_APT="debootstrap mosquitto"
missing=$(for p in $HOST_APT; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done | tr '\n' ' ')
if [ -n "${missing// /}" ]; then
    say "installing host apt packages: $missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null \
        || die "apt-get install $missing failed"
fi
bash scripts/setup.sh
PY=$REPO/.venv/bin/python

# ---- binfmt_misc: run arm64 ELF files through qemu-aarch64-static --------------------------
if [ "$(uname -m)" != aarch64 ]; then
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
            || die "cannot mount binfmt_misc; this kernel or container does not allow foreign binaries"
    fi
    if ! grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null; then
        update-binfmts --enable qemu-aarch64 || die "update-binfmts --enable qemu-aarch64 failed"
    fi
    # F (fix binary): the kernel opens the interpreter now, so the root needs no qemu binary
    grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
        || die "qemu-aarch64 is registered without the F flag; reinstall qemu-user-static (Debian registers it with F)"
fi

# ---- the bundle ----------------------------------------------------------------------------
if ! "$PY" -c "import sys; from edged.models.bundle import load_bundle; load_bundle(sys.argv[1])" "$MODELS" 2>/dev/null; then
    [ "$MODELS" = models/default ] || die "--models $MODELS is not a valid bundle; export one with 'edged-export --quantize --out DIR'"
    say "exporting the int8 bundle: edged-export --quantize --out $MODELS"
    .venv/bin/edged-export --quantize --out "$MODELS"
fi
MODELS=$(cd "$MODELS" && pwd)

# ---- tear-down ------------------------------------------------------------------------------
BROKER_PID= LISTEN_PID= FRESH_DIR= LOCK_FD=
cleanup() {
    local rc=$? left
    [ -z "$LISTEN_PID" ] || kill "$LISTEN_PID" 2>/dev/null || true
    [ -z "$BROKER_PID" ] || kill "$BROKER_PID" 2>/dev/null || true
    [ -z "$LISTEN_PID" ] || wait "$LISTEN_PID" 2>/dev/null || true
    [ -z "$BROKER_PID" ] || wait "$BROKER_PID" 2>/dev/null || true
    if [ -n "${ROOT:-}" ]; then
        left=$(findmnt -rn -o TARGET | awk -v r="$ROOT" '$0 == r || index($0, r "/") == 1' || true)
        if [ -n "$left" ]; then
            echo "arm64: error: still mounted under $ROOT: $left" >&2
            rc=1
        else
            echo "arm64: tear-down: nothing mounted under $ROOT (findmnt)"
        fi
    fi
    if [ -n "$FRESH_DIR" ] && [ -z "${left:-}" ]; then
        rm -rf --one-file-system "$FRESH_DIR"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- the arm64 root -------------------------------------------------------------------------
. "$HERE/common.sh"
KEY=$(root_key "$(debian_mirror)")
if [ "$FRESH" = 1 ]; then
    FRESH_DIR=$(mktemp -d /var/tmp/edged-arm64.XXXXXX)
    ROOT=$FRESH_DIR/root
    say "building a fresh arm64 root in $ROOT"
    bash "$HERE/build-root.sh" "$ROOT"
else
    ROOT=$CACHE_ROOT
    mkdir -p "$(dirname "$ROOT")"
    exec {LOCK_FD}>"$(dirname "$ROOT")/.lock"
    flock -w 3600 "$LOCK_FD" || die "another run holds $(dirname "$ROOT")/.lock"
    damage=$(root_damage "$ROOT" "$KEY")
    if [ -z "$damage" ]; then
        say "reusing the cached arm64 root $ROOT"
    else
        left=$(findmnt -rn -o TARGET | awk -v r="$ROOT" '$0 == r || index($0, r "/") == 1' || true)
        [ -z "$left" ] || die "cannot rebuild $ROOT: still mounted under it: $left; unmount them first"
        say "building the cached arm64 root $ROOT ($damage)"
        bash "$HERE/build-root.sh" "$ROOT"
    fi
fi
T_ROOT=$(date +%s)

# ---- x86-64 reference -----------------------------------------------------------------------
rm -rf "$WORK" && mkdir -p "$WORK/x86"
chmod 0755 "$WORK"
REF_FILES=("${FILES[@]}")
case " ${FILES[*]} " in *" $DAEMON_FILE "*) ;; *) REF_FILES+=("$DAEMON_FILE") ;; esac
say "x86-64 reference: edged diarize ${REF_FILES[*]} (int8, $MODELS)"
.venv/bin/edged diarize "${REF_FILES[@]/#/$DATA/}" --models "$MODELS" --variant int8 --output "$WORK/x86" >"$WORK/x86.log" 2>&1 \
    || { tail -20 "$WORK/x86.log" >&2; die "edged diarize failed on the host"; }
if [ "${EDGED_ARM64_PIN:-1}" = 1 ]; then
    # the runtime's dependency closure, at the host's versions
    "$PY" -m pip list --disable-pip-version-check --format=freeze 2>/dev/null \
        | grep -iE '^(numpy|onnxruntime|scipy|soundfile|paho-mqtt|pyyaml|pyaudio|cffi|pycparser|flatbuffers|protobuf|packaging|sympy|mpmath|coloredlogs|humanfriendly|typing.extensions)==' \
        >"$WORK/constraints.txt"
    export PIP_CONSTRAINT=/src/work/constraints.txt
    say "pinned to the host's versions: $(tr '\n' ' ' <"$WORK/constraints.txt")"
fi

# ---- broker and subscriber on the host's loopback -------------------------------------------
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$WORK/broker"
cat >"$WORK/broker/mosquitto.conf" <<EOF
listener $PORT 127.0.0.1
allow_anonymous true
persistence false
log_dest file $WORK/broker/mosquitto.log
log_type error
log_type warning
log_type notice
log_type information
log_type subscribe
user root
EOF
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
"$MOSQUITTO" -c "$WORK/broker/mosquitto.conf" >"$WORK/broker/stdout.log" 2>&1 &
BROKER_PID=$!
.venv/bin/edged listen --host 127.0.0.1 --port "$PORT" --device-id "$DEVICE" --json --until-offline \
    --timeout 7200 >"$WORK/listen.jsonl" 2>"$WORK/listen.err" &
LISTEN_PID=$!
for _ in $(seq 600); do
    grep -q "edged/$DEVICE/#" "$WORK/broker/mosquitto.log" 2>/dev/null && break
    kill -0 "$LISTEN_PID" 2>/dev/null || { cat "$WORK/listen.err" >&2; die "the subscriber exited"; }
    sleep 0.1
done
grep -q "edged/$DEVICE/#" "$WORK/broker/mosquitto.log" || die "the subscriber did not subscribe within 60 s"
say "broker mosquitto on 127.0.0.1:$PORT, subscriber edged listen on edged/$DEVICE/#"

# ---- inside the arm64 root ------------------------------------------------------------------
say "entering the arm64 root (qemu cpu ${EDGED_ARM64_CPU:-cortex-a72})"
bash "$HERE/chroot.sh" "$ROOT" --bind "$REPO:/src/edged:ro" --bind "$MODELS:/src/models:ro" \
    --bind "$DATA:/src/data:ro" --bind "$WORK:/src/work" -- \
    bash /src/edged/scripts/arm64/inside.sh "$PORT" "$DEVICE" "$SPEED" "/src/data/$DAEMON_FILE" "${FILES[@]/#//src/data/}"
T_INSIDE=$(date +%s)

# the subscriber stops at the daemon's offline message
for _ in $(seq 600); do kill -0 "$LISTEN_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$LISTEN_PID" 2>/dev/null && die "the subscriber got no offline message within 60 s of the daemon's exit"
wait "$LISTEN_PID" || true
LISTEN_PID=

# ---- compare ---------------------------------------------------------------------------------
say "arm64 vs x86-64, and MQTT"
"$PY" "$HERE/compare.py" --work "$WORK" --x86 "$WORK/x86" --data "$DATA" --daemon-file "$DAEMON_FILE" \
    --device "$DEVICE" "${FILES[@]}" | tee "$WORK/compare.txt"
[ "${PIPESTATUS[0]}" = 0 ] || die "arm64 results do not match (see above; logs in $WORK)"
say "PASS: root $((T_ROOT - T0)) s, inside the root $((T_INSIDE - T_ROOT)) s, total $(($(date +%s) - T0)) s"
