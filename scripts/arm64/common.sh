# Shared settings of the scripts in scripts/arm64 (sourced, not run).

ARM64_SUITE=bookworm
# systemd: scripts/install.sh needs systemctl, as on Raspberry Pi OS; everything else the
# installer gets with apt itself, as on a device
ARM64_INCLUDE=systemd
# bump when build-root.sh changes what it builds: a cached root with another key is rebuilt
ARM64_ROOT_VERSION=1

# The host's apt source URIs (deb822 *.sources and one-line *.list), one a line.
_apt_uris() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] && sed -n 's/^[[:space:]]*deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]\+\).*/\2/p' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && sed -n 's/^URIs:[[:space:]]*//p' "$f" | tr ' ' '\n'
    done
}

# The Debian mirror apt already uses (EDGED_ARM64_MIRROR overrides), else deb.debian.org.
debian_mirror() {
    if [ -n "${EDGED_ARM64_MIRROR:-}" ]; then echo "$EDGED_ARM64_MIRROR"; return; fi
    local uri
    uri=$(_apt_uris | grep -E '/debian/?$' | head -1 || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

# The Debian security mirror apt uses (EDGED_ARM64_SECURITY overrides; empty: none).
debian_security_mirror() {
    if [ -n "${EDGED_ARM64_SECURITY+x}" ]; then echo "$EDGED_ARM64_SECURITY"; return; fi
    _apt_uris | grep -E '/debian-security/?$' | head -1 || true
}

# What a cached root must have been built from to be reused.
root_key() {
    echo "v$ARM64_ROOT_VERSION arm64 minbase $ARM64_SUITE include=$ARM64_INCLUDE mirror=$1"
}
