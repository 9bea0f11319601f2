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

# Why a cached root cannot be reused (one line), or nothing when it can: another build key, a
# missing tool, or a dpkg run that was interrupted (e.g. apt-get on a full disk), which would
# make every later apt-get fail with "dpkg was interrupted". Reads files only: no arm64 binary runs.
root_damage() {
    local root=$1 key=$2 f audit
    [ -d "$root" ] || { echo "not built yet"; return; }
    [ -f "$root/.edged-arm64-root" ] || { echo "no build stamp (an interrupted build)"; return; }
    [ "$(cat "$root/.edged-arm64-root")" = "$key" ] || { echo "built from another key"; return; }
    for f in usr/bin/dpkg usr/bin/apt-get bin/bash var/lib/dpkg/status; do
        [ -e "$root/$f" ] || { echo "/$f is missing"; return; }
    done
    if [ -n "$(ls -A "$root/var/lib/dpkg/updates" 2>/dev/null)" ]; then
        echo "dpkg was interrupted (pending entries in /var/lib/dpkg/updates)"
        return
    fi
    # what dpkg --audit reports, read from the status file (the host's dpkg may be another arch)
    audit=$(awk '/^Package:/ {p = $2} /^Status:/ && $4 != "installed" && $4 != "not-installed" && $4 != "config-files" {print p " (" $4 ")"}' \
        "$root/var/lib/dpkg/status" | head -3 | tr '\n' ' ')
    [ -z "$audit" ] || echo "dpkg left packages unfinished: ${audit% }"
}
