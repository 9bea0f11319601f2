#!/bin/bash
# Runs INSIDE the arm64 root (started by run.sh through chroot.sh), as root, like a person on a Pi:
#   1. scripts/install.sh from the checkout (apt packages, user edged, /opt/edged/venv with
#      edged[alsa] -- pyaudio compiled here against portaudio19-dev --, the bundle, the config,
#      the unit enabled), unchanged;
#   2. `edged check` as the service user, on the installed config with file audio and the host's broker;
#   3. `edged run` as the service user (the unit's command line plus --set overrides), replaying
#      one recording and publishing to the broker on the host's loopback, and meanwhile
#   4. `edged diarize` of the recordings with the installed int8 bundle.
# usage: inside.sh PORT DEVICE_ID REPLAY_SPEED DAEMON_FILE FILE...
# Folders bound in by run.sh: /src/edged (checkout, ro), /src/models (bundle, ro),
# /src/data (recordings, ro), /src/work (results, rw).
set -euo pipefail

PORT=$1 DEVICE=$2 SPEED=$3 DAEMON_FILE=$4
shift 4
WORK=/src/work
EDGED=/opt/edged/venv/bin/edged
t0=$(date +%s)
step() { echo "== arm64 [$(($(date +%s) - t0)) s] $*"; }
fail() { echo "arm64: FAIL: $*" >&2; exit 1; }

[ "$(uname -m)" = aarch64 ] || fail "uname -m is $(uname -m), not aarch64: the chroot is not running under arm64 emulation"
. /etc/os-release
step "inside $PRETTY_NAME, $(uname -m), qemu cpu ${QEMU_CPU:-max}"

step "install: bash scripts/install.sh --models /src/models"
bash /src/edged/scripts/install.sh --models /src/models >"$WORK/install.log" 2>&1 || {
    tail -30 "$WORK/install.log" >&2
    fail "scripts/install.sh failed inside the arm64 root (log: install.log)"
}
sed 's/^/   /' "$WORK/install.log"
{
    echo "uname -m: $(uname -m)"
    echo "os: $PRETTY_NAME"
    echo "python: $(/opt/edged/venv/bin/python -V 2>&1)"
    echo "enabled: $(systemctl is-enabled edged.service 2>&1 || true)"
    /opt/edged/venv/bin/python -m pip list --disable-pip-version-check --format=freeze 2>/dev/null
} >"$WORK/versions.txt"
/opt/edged/venv/bin/python - <<'EOF'
import platform, sysconfig
import onnxruntime, numpy, pyaudio
print(f"   python {platform.python_version()} {sysconfig.get_platform()}, onnxruntime {onnxruntime.__version__} "
      f"{onnxruntime.get_available_providers()}, numpy {numpy.__version__}, pyaudio {pyaudio.__version__} "
      f"(portaudio {pyaudio.get_portaudio_version_text()})")
EOF

# the daemon's settings: the installed /etc/edged/config.yaml plus these overrides
SETS=(--set "device_id=$DEVICE" --set audio.source=file --set "audio.file=$DAEMON_FILE"
      --set mqtt.host=127.0.0.1 --set "mqtt.port=$PORT" --set mqtt.stats_interval=10
      --set logging.events_file=/var/lib/edged/arm64-events.jsonl)
as_edged() { runuser -u edged -g edged -G audio -- env PYTHONUNBUFFERED=1 "$@"; }

step "edged check (as user edged)"
as_edged "$EDGED" check --config /etc/edged/config.yaml "${SETS[@]}" >"$WORK/check.txt" 2>&1 || {
    cat "$WORK/check.txt" >&2
    fail "edged check failed inside the arm64 root"
}
sed 's/^/   /' "$WORK/check.txt"

# The daemon and `edged diarize` run side by side (each uses one core, as on a Pi): the
# emulated inference is the slow part of this script.
step "edged run (as user edged, the unit's command line) on $DAEMON_FILE, replay speed $SPEED, broker 127.0.0.1:$PORT, in the background"
rm -f /var/lib/edged/arm64-events.jsonl
# a cached root keeps the last run's speakers (they survive restarts); the x86-64 reference
# starts with none, so the daemon must too
rm -f /var/lib/edged/speakers.state.npz
as_edged "$EDGED" run --config /etc/edged/config.yaml "${SETS[@]}" --replay-speed "$SPEED" >"$WORK/daemon.log" 2>&1 &
DAEMON=$!
trap 'kill "$DAEMON" 2>/dev/null || true' EXIT

step "edged diarize $* (int8, installed bundle)"
mkdir -p "$WORK/arm64"
"$EDGED" diarize "$@" --models /var/lib/edged/models --variant int8 --output "$WORK/arm64" >"$WORK/diarize.log" 2>&1 || {
    tail -30 "$WORK/diarize.log" >&2
    fail "edged diarize failed inside the arm64 root"
}
sed 's/^/   /' "$WORK/diarize.log" | tail -5

step "waiting for the daemon to reach the end of $DAEMON_FILE"
status=0
wait "$DAEMON" || status=$?
trap - EXIT
sed 's/^/   /' "$WORK/daemon.log" | tail -8
[ "$status" = 0 ] || fail "edged run exited with status $status"
cp /var/lib/edged/arm64-events.jsonl "$WORK/daemon-events.jsonl"
step "done"
