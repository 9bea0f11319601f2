#!/usr/bin/env bash
# One command on a fresh Debian machine: set up, then run the whole test suite.
# Test data is read from $EDGED_DATA (default ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
# services and tools the tests start for real: a broker, PostgreSQL, systemd-nspawn, ALSA utils, arm64 emulation
EDGED_APT_EXTRA="postgresql systemd-container alsa-utils openssl qemu-user-static binfmt-support debootstrap ${EDGED_APT_EXTRA:-}" bash scripts/setup.sh
export EDGED_DATA=${EDGED_DATA:-$(cd .. && pwd)/shared/data}
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@" tests
