#!/usr/bin/env bash
# Install the edged daemon on a Debian-based device (Raspberry Pi OS, Debian, Ubuntu, Jetson L4T).
# Run as root from a checkout:  sudo bash scripts/install.sh [options]
#
# What it does (idempotent; a second run updates the code and keeps the device's settings):
#   apt packages   python3-venv python3-dev gcc portaudio19-dev libsndfile1 (only the missing ones)
#   user           system user `edged` (group `edged`, also in `audio` for /dev/snd)
#   /opt/edged/venv          the edge runtime only: edged[alsa] (numpy, onnxruntime, ...), never torch
#   /var/lib/edged/models    the model bundle (root:edged, read-only to the daemon)
#   /etc/edged/config.yaml   copied from config/edged.yaml only when absent (never overwritten)
#   /etc/systemd/system/edged.service, daemon-reload, enable (and restart with --start)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=/opt/edged
VENV=$PREFIX/venv
STATE=/var/lib/edged
ETC=/etc/edged
UNIT_DEST=/etc/systemd/system/edged.service
APT_PACKAGES="python3-venv python3-dev gcc portaudio19-dev libsndfile1"

MODELS=""
CONFIG="$REPO/config/edged.yaml"
PYTHON=/usr/bin/python3
WHEELS=""
APT=1
ENABLE=1
START=0

usage() {
    cat <<EOF
usage: sudo bash scripts/install.sh [options]
  --models DIR     model bundle folder holding manifest.json (default: models/default; when that is
                   absent and $STATE/models already holds a bundle, the installed one is kept)
  --config FILE    config copied to $ETC/config.yaml when that file does not exist yet
                   (default: config/edged.yaml)
  --python PATH    interpreter for the virtualenv (default: /usr/bin/python3)
  --wheels DIR     install offline from a folder of wheels (pip --no-index --find-links DIR)
  --no-apt         do not install apt packages (they must be present already)
  --no-enable      install but do not enable the service at boot
  --start          (re)start the service at the end and wait until it is running
  -h, --help       this help
EOF
}

die() { echo "install.sh: error: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

while [ $# -gt 0 ]; do
    case "$1" in
    --models) [ $# -ge 2 ] || die "--models needs a folder"; MODELS=$2; shift 2 ;;
    --models=*) MODELS=${1#*=}; shift ;;
    --config) [ $# -ge 2 ] || die "--config needs a file"; CONFIG=$2; shift 2 ;;
    --config=*) CONFIG=${1#*=}; shift ;;
    --python) [ $# -ge 2 ] || die "--python needs a path"; PYTHON=$2; shift 2 ;;
    --python=*) PYTHON=${1#*=}; shift ;;
    --wheels) [ $# -ge 2 ] || die "--wheels needs a folder"; WHEELS=$2; shift 2 ;;
    --wheels=*) WHEELS=${1#*=}; shift ;;
    --no-apt) APT=0; shift ;;
    --no-enable) ENABLE=0; shift ;;
    --start) START=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option '$1'; see --help" ;;
    esac
done

# ---- checks first: fail before changing anything -------------------------------------------
[ "$(id -u)" = 0 ] || die "must run as root; use: sudo bash scripts/install.sh"
command -v systemctl >/dev/null || die "systemctl not found; edged needs a systemd-based system"
case "$(uname -m)" in
armv6l | armv7l) die "onnxruntime publishes no 32-bit ARM wheels; install a 64-bit OS (e.g. 64-bit Raspberry Pi OS)" ;;
esac
[ -f "$REPO/systemd/edged.service" ] || die "$REPO/systemd/edged.service missing; run install.sh from an edged checkout"
[ -f "$REPO/pyproject.toml" ] || die "$REPO/pyproject.toml missing; run install.sh from an edged checkout"

if [ -z "$MODELS" ]; then
    if [ -f "$REPO/models/default/manifest.json" ]; then
        MODELS="$REPO/models/default"
    elif [ -f "$STATE/models/manifest.json" ]; then
        MODELS=keep
    else
        die "no model bundle: models/default/manifest.json not found; export one with 'edged-export --quantize --out models/default' or pass --models DIR"
    fi
fi
if [ "$MODELS" != keep ]; then
    [ -f "$MODELS/manifest.json" ] || die "--models $MODELS is not a model bundle (no manifest.json); pass the folder written by edged-export"
    MODELS=$(cd "$MODELS" && pwd)
fi
if [ ! -f "$ETC/config.yaml" ]; then
    [ -f "$CONFIG" ] || die "config $CONFIG not found and $ETC/config.yaml does not exist; pass --config FILE"
fi
[ -z "$WHEELS" ] || [ -d "$WHEELS" ] || die "--wheels $WHEELS is not a folder"
[ -d /run/systemd/system ] && SYSTEMD_RUNNING=1 || SYSTEMD_RUNNING=0
[ "$START" = 0 ] || [ "$SYSTEMD_RUNNING" = 1 ] || die "--start needs a running systemd (this looks like a chroot or image build); drop --start"

# ---- apt ----------------------------------------------------------------------------------
if [ "$APT" = 1 ]; then
    command -v dpkg >/dev/null || die "dpkg not found; this is not Debian-based: install $APT_PACKAGES yourself and pass --no-apt"
    missing=$(for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done | tr '\n' ' ')
    if [ -n "${missing// /}" ]; then
        say "installing apt packages: $missing"
        apt-get update -qq || die "apt-get update failed; check the network or pass --no-apt"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null \
            || die "apt-get install $missing failed"
    fi
fi
[ -x "$PYTHON" ] || die "python $PYTHON not found; install python3 (apt-get install python3) or pass --python PATH"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || die "$PYTHON is $("$PYTHON" -V 2>&1); edged needs python >= 3.10 (Debian 12, Ubuntu 22.04 or newer) or pass --python PATH"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || die "$PYTHON cannot create virtualenvs; apt-get install python3-venv"

# ---- user ---------------------------------------------------------------------------------
getent group audio >/dev/null || groupadd --system audio
getent group edged >/dev/null || groupadd --system edged
if ! id edged >/dev/null 2>&1; then
    say "creating system user edged"
    useradd --system --gid edged --groups audio --home-dir "$STATE" --no-create-home \
        --shell /usr/sbin/nologin --comment "edged daemon" edged
elif ! id -nG edged | tr ' ' '\n' | grep -qx audio; then
    usermod -a -G audio edged
fi

# ---- virtualenv: the edge runtime only ------------------------------------------------------
want_py=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ -x "$VENV/bin/python" ] && [ "$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" != "$want_py" ]; then
    say "recreating $VENV for python $want_py"
    rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtualenv $VENV"
    install -d -m 0755 "$PREFIX"
    "$PYTHON" -m venv "$VENV"
fi
# Build from a clean copy of the sources: leaves no build/ in the checkout and works from a
# read-only checkout.
src=$(mktemp -d /tmp/edged-install.XXXXXX)
trap 'rm -rf "$src"' EXIT
tar -C "$REPO" --exclude=./.git --exclude=./.venv --exclude=./models --exclude=./out --exclude=./cache \
    --exclude=./build --exclude=./dist --exclude='*.egg-info' --exclude=__pycache__ --exclude='*.onnx' \
    -cf - . | tar -C "$src" -xf - || die "cannot copy the sources from $REPO to $src"
pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-warn-script-location)
[ -z "$WHEELS" ] || pip+=(--no-index --find-links "$WHEELS")
say "installing edged[alsa] into $VENV"
# --force-reinstall --no-deps: the version number does not change between checkouts, the code does
"${pip[@]}" "$src[alsa]" || die "pip install edged[alsa] failed (see above); for pyaudio: apt-get install portaudio19-dev python3-dev gcc"
"${pip[@]}" --force-reinstall --no-deps "$src" || die "pip reinstall of edged failed (see above)"
if "$VENV/bin/python" -m pip list --disable-pip-version-check 2>/dev/null | grep -qiE '^(torch|nvidia-)'; then
    die "torch got installed into $VENV; the edge runtime must not need it: report which requirement pulled it"
fi
"$VENV/bin/python" -c 'import edged, onnxruntime, numpy, pyaudio, paho.mqtt' \
    || die "the installed runtime does not import (see above); remove $VENV and run install.sh again"
[ -x "$VENV/bin/edged" ] || die "$VENV/bin/edged missing after pip install"

# ---- state, models, config ------------------------------------------------------------------
install -d -m 0750 -o edged -g edged "$STATE"
if [ "$MODELS" = keep ]; then
    say "keeping the installed model bundle $STATE/models"
else
    say "installing model bundle $MODELS -> $STATE/models"
    rm -rf "$STATE/models.new" "$STATE/models.old"
    cp -R "$MODELS" "$STATE/models.new"
    chown -R root:edged "$STATE/models.new"
    find "$STATE/models.new" -type d -exec chmod 0750 {} +
    find "$STATE/models.new" -type f -exec chmod 0640 {} +
    [ ! -e "$STATE/models" ] || mv "$STATE/models" "$STATE/models.old"
    mv "$STATE/models.new" "$STATE/models"
    rm -rf "$STATE/models.old"
fi
install -d -m 0750 -o root -g edged "$ETC"
if [ -e "$ETC/config.yaml" ]; then
    say "keeping the existing $ETC/config.yaml"
else
    say "installing $CONFIG -> $ETC/config.yaml"
    install -m 0640 -o root -g edged "$CONFIG" "$ETC/config.yaml"
fi

# ---- systemd ------------------------------------------------------------------------------
install -m 0644 "$REPO/systemd/edged.service" "$UNIT_DEST"
if [ "$SYSTEMD_RUNNING" = 1 ]; then
    systemctl daemon-reload
else
    say "systemd is not running here (chroot or image build): skipping daemon-reload"
fi
if [ "$ENABLE" = 1 ]; then
    systemctl enable --quiet edged.service
    say "enabled edged.service (starts at boot)"
fi
if [ "$START" = 1 ]; then
    say "restarting edged.service"
    if ! systemctl restart edged.service; then
        journalctl -u edged.service -n 20 --no-pager >&2 || true
        die "edged.service did not start; see 'journalctl -u edged' and check $ETC/config.yaml"
    fi
    say "edged.service is $(systemctl is-active edged.service)"
elif [ "$SYSTEMD_RUNNING" = 1 ] && systemctl is-active --quiet edged.service; then
    say "done; edged.service still runs the previous install: systemctl restart edged"
else
    say "done; start it with: systemctl start edged  (logs: journalctl -u edged -f)"
fi
