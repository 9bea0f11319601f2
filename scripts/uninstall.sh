#!/usr/bin/env bash
# Remove what scripts/install.sh installed:  sudo bash scripts/uninstall.sh [--purge]
#   always   stop + disable edged.service, remove the unit, /opt/edged (venv) and /var/lib/edged/models
#   kept     /etc/edged (config), /var/lib/edged (spool of unsent turns), drop-ins in
#            /etc/systemd/system/edged.service.d, the user edged
#   --purge  also removes those
# Idempotent: running it on a device without edged is not an error.
set -euo pipefail

PURGE=0
die() { echo "uninstall.sh: error: $*" >&2; exit 1; }
say() { echo "uninstall.sh: $*"; }

while [ $# -gt 0 ]; do
    case "$1" in
    --purge) PURGE=1; shift ;;
    -h | --help)
        echo "usage: sudo bash scripts/uninstall.sh [--purge]"
        echo "  removes the service, /opt/edged and the installed models; keeps /etc/edged and"
        echo "  /var/lib/edged (the spool) unless --purge, which also removes the user edged"
        exit 0 ;;
    *) die "unknown option '$1'; see --help" ;;
    esac
done
[ "$(id -u)" = 0 ] || die "must run as root; use: sudo bash scripts/uninstall.sh"

UNIT=/etc/systemd/system/edged.service
if command -v systemctl >/dev/null; then
    if [ -d /run/systemd/system ]; then
        systemctl stop edged.service 2>/dev/null || true
    fi
    if [ -e "$UNIT" ]; then
        systemctl disable --quiet edged.service 2>/dev/null || true
    fi
fi
rm -f "$UNIT"
rm -rf /opt/edged /var/lib/edged/models /var/lib/edged/models.new /var/lib/edged/models.old
say "removed the unit, /opt/edged and /var/lib/edged/models"

if [ "$PURGE" = 1 ]; then
    rm -rf /etc/edged /var/lib/edged /etc/systemd/system/edged.service.d
    if id edged >/dev/null 2>&1; then
        userdel edged 2>/dev/null || die "userdel edged failed; is a process of user edged still running?"
    fi
    getent group edged >/dev/null && groupdel edged 2>/dev/null || true
    say "purged /etc/edged, /var/lib/edged, the drop-ins and the user edged"
else
    say "kept /etc/edged and /var/lib/edged (use --purge to remove them and the user edged)"
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl reset-failed edged.service 2>/dev/null || true
fi
