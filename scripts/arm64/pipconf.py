"""Print the host's pip configuration as a pip.conf for the arm64 root (stdlib only).

Reads pip's configuration files in pip's own order, then the ``PIP_*`` environment (which wins),
as ``pip config list`` shows them. Kept: the registry settings (index-url, trusted-host, proxy,
timeout, retries, ...). Dropped: indexes and find-links that are folders on this host (x86-64
wheels; they do not exist in the root). ``cert`` is set to the CA bundle chroot.sh copies into
the root, so pip reaches the registry through the same TLS path as the host.
"""

from __future__ import annotations

import configparser
import os
import sys
from pathlib import Path

CERT_INSIDE = "/etc/ssl/certs/ca-certificates.crt"
LOCATION_KEYS = {"index-url", "extra-index-url", "find-links"}
# not pip settings, or settings that describe this host only
SKIP_ENV = {"PIP_CONFIG_FILE", "PIP_CONSTRAINT", "PIP_REQUIREMENT", "PIP_TARGET", "PIP_PREFIX", "PIP_USER",
            "PIP_CACHE_DIR", "PIP_BUILD_TRACKER"}


def config_files() -> list[Path]:
    home = Path.home()
    xdg_dirs = os.environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(":")
    files = [Path(d) / "pip" / "pip.conf" for d in xdg_dirs] + [Path("/etc/pip.conf")]
    files += [home / ".pip" / "pip.conf", Path(os.environ.get("XDG_CONFIG_HOME", home / ".config")) / "pip" / "pip.conf"]
    if os.environ.get("PIP_CONFIG_FILE") and os.environ["PIP_CONFIG_FILE"] != os.devnull:
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    return [f for f in files if f.is_file()]


def is_local(value: str) -> bool:
    return value.startswith(("file:", "/", ".", "~"))


def merged() -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    for path in config_files():
        parser = configparser.RawConfigParser()
        parser.read(path)
        for name in parser.sections():
            sections.setdefault(name, {}).update(dict(parser.items(name)))
    for var, value in os.environ.items():
        if var.startswith("PIP_") and var not in SKIP_ENV:
            sections.setdefault("global", {})[var[4:].lower().replace("_", "-")] = value
    for options in sections.values():
        for key in list(options):
            if key in LOCATION_KEYS:
                kept = [v for v in options[key].split() if not is_local(v)]
                if kept:
                    options[key] = " ".join(kept)
                else:
                    del options[key]
        options.pop("cert", None)
    sections.setdefault("global", {})["cert"] = CERT_INSIDE
    return sections


def main() -> int:
    out = sys.stdout
    out.write("# written by scripts/arm64/pipconf.py from the host's pip configuration\n")
    for name, options in merged().items():
        if not options:
            continue
        out.write(f"[{name}]\n")
        for key, value in sorted(options.items()):
            out.write(f"{key} = {value}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
