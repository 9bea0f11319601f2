#!/usr/bin/env bash
# Boot a real systemd in systemd-nspawn (a throw-away overlay of this machine's root), with the
# checkout bind-mounted read-only at /src/edged; run a command inside, then power off.
#   sudo tests/nspawn/boot.sh -- systemctl is-system-running
#   sudo tests/nspawn/boot.sh -- bash /src/edged/scripts/install.sh --models /src/edged/models/default --start
#   sudo tests/nspawn/boot.sh                  # interactive shell inside
# Needs root and the apt packages systemd-container and util-linux. Stdlib python3 only.
set -euo pipefail
exec python3 "$(dirname "$0")/container.py" "$@"
