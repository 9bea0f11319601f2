#!/usr/bin/env bash
# Set up edged on a Debian machine: apt packages (when root), a virtualenv in .venv with the
# pinned CPU torch installed FIRST (so nothing can pull a CUDA build), then edged with its extras.
# Idempotent: a second run with unchanged requirements only checks.
#   EDGED_VENV         virtualenv folder (default .venv)
#   EDGED_EXTRAS       extras to install (default export,host,alsa,test)
#   EDGED_TORCH_INDEX  optional pip index holding the torch 2.13.0 CPU wheel, for machines
#                      that have no local copy of it (PyTorch publishes a CPU-only index)
#   EDGED_APT_EXTRA    more apt packages (scripts/test.sh adds the services the tests start)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${EDGED_VENV:-.venv}
EXTRAS=${EDGED_EXTRAS:-export,host,alsa,test}
TORCH_PIN="torch==2.13.0"
# portaudio: pyaudio's build; mosquitto: the local broker of the demo
APT_PACKAGES="portaudio19-dev libsndfile1 gcc mosquitto mosquitto-clients ${EDGED_APT_EXTRA:-}"

say() { echo "setup: $*"; }

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    python3 -c 'import ensurepip, venv' 2>/dev/null || APT_PACKAGES="$APT_PACKAGES python3-venv python3-dev"
    missing=$(for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
    if [ -n "$missing" ]; then
        say "installing apt packages: $(echo $missing)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    fi
elif ! dpkg -s portaudio19-dev >/dev/null 2>&1; then
    say "warning: portaudio19-dev is missing and this is not root; run 'sudo apt-get install portaudio19-dev' for the alsa extra"
fi

if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtualenv $VENV"
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
stamp="$VENV/.edged-setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$EXTRAS
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    say "up to date ($VENV)"
    exit 0
fi

"$PY" -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel
case ",$EXTRAS," in
*,export,*)
    say "installing $TORCH_PIN (CPU) first"
    "$PY" -m pip install -q --disable-pip-version-check ${EDGED_TORCH_INDEX:+--index-url "$EDGED_TORCH_INDEX"} "$TORCH_PIN"
    ;;
esac
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "$TORCH_PIN" >"$constraints"
say "installing edged[$EXTRAS]"
"$PY" -m pip install -q --disable-pip-version-check -c "$constraints" -e ".[$EXTRAS]"
case ",$EXTRAS," in
*,export,*)
    # UIS-RNN reference for `edged-export uisrnn`; its metadata also requires codecov/coverage and a
    # bare torch, so it goes in without dependencies (torch is pinned above)
    "$PY" -m pip install -q --disable-pip-version-check --no-deps uisrnn==0.1.2 colortimelog==0.0.9
    ;;
esac

if "$PY" -m pip list 2>/dev/null | grep -qiE '^nvidia-|^torch .*\+cu'; then
    say "error: a CUDA torch or nvidia-* package got installed; remove $VENV and report which requirement pulled it"
    exit 1
fi
# The registry's torchaudio is a CUDA build whose compiled extension cannot load with CPU torch;
# without its compiled libraries it runs in pure-Python mode, which pyannote.audio needs.
"$PY" - <<'PYEOF'
import importlib.util, pathlib
spec = importlib.util.find_spec("torchaudio")
if spec and spec.origin:
    for lib in (pathlib.Path(spec.origin).parent / "lib").glob("*.so"):
        lib.unlink()
PYEOF
echo "$want" >"$stamp"
say "done: $("$PY" -c 'import torch; print("torch", torch.__version__)' 2>/dev/null || echo 'edge runtime only')"
