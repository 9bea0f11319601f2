"""Model bundle: the manifest schema and the edge-side loader that verifies it.

A bundle is a folder with ``manifest.json`` and the ONNX files it lists. The loader checks the
manifest version, the fields the edge needs, and every file's size and sha256 before a model is
opened, so a corrupt, truncated or mismatched bundle is refused with a message naming the file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .errors import BundleError

MANIFEST_NAME = "manifest.json"
# Bumped whenever the meaning of a manifest field or a model's inputs/outputs changes.
MANIFEST_VERSION = 1
FORMAT_NAME = "edged-model-bundle"

ROLES = ("segmentation", "embedding")
VARIANTS = ("fp32", "int8")

_REQUIRED_SEGMENTATION = ("sample_rate", "num_speakers", "frame_start", "frame_step", "frame_duration")
_REQUIRED_EMBEDDING = ("dim", "fbank")
_REQUIRED_FILE = ("path", "bytes", "sha256", "inputs", "outputs")


def sha256_file(path: Path, block_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(block_size), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelFile:
    """One ONNX file of the bundle, verified on disk."""

    role: str
    variant: str
    path: Path
    sha256: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class SegmentationInfo:
    """Geometry of the segmentation model's output frames (seconds, relative to chunk start)."""

    sample_rate: int
    num_speakers: int
    frame_start: float
    frame_step: float
    frame_duration: float


@dataclass(frozen=True)
class EmbeddingInfo:
    """Embedding size and the fbank front end the model expects."""

    dim: int
    fbank: Mapping[str, Any]


@dataclass(frozen=True)
class Bundle:
    """A verified model bundle."""

    root: Path
    manifest: Mapping[str, Any]
    segmentation: SegmentationInfo
    embedding: EmbeddingInfo
    files: Mapping[tuple[str, str], ModelFile]

    @property
    def variants(self) -> tuple[str, ...]:
        """Variants present for both models, in VARIANTS order."""
        return tuple(v for v in VARIANTS if all((r, v) in self.files for r in ROLES))

    def model(self, role: str, variant: str) -> ModelFile:
        """The file for ``role`` in ``variant``; a BundleError names what exists."""
        try:
            return self.files[(role, variant)]
        except KeyError:
            have = ", ".join(sorted(v for r, v in self.files if r == role)) or "none"
            raise BundleError(
                f"{self.root / MANIFEST_NAME}: no {variant} {role} model in this bundle "
                f"(has: {have}); re-export with edged-export{' --quantize' if variant == 'int8' else ''}"
            ) from None


def _need(mapping: Mapping[str, Any], keys: tuple[str, ...], where: str, manifest: Path) -> None:
    missing = [k for k in keys if k not in mapping]
    if missing:
        raise BundleError(
            f"{manifest}: {where} lacks {', '.join(missing)}; the bundle is incomplete, re-export it with edged-export"
        )


def _verify_file(root: Path, role: str, variant: str, entry: Mapping[str, Any], manifest: Path) -> ModelFile:
    _need(entry, _REQUIRED_FILE, f"models.{role}.{variant}", manifest)
    path = (root / entry["path"]).resolve()
    if root.resolve() not in path.parents:
        raise BundleError(f"{manifest}: model path {entry['path']!r} points outside the bundle; re-export it")
    if not path.is_file():
        raise BundleError(f"{path}: model file is missing from the bundle; re-export with edged-export")
    size = path.stat().st_size
    if size != int(entry["bytes"]):
        raise BundleError(
            f"{path}: size {size} bytes, manifest says {entry['bytes']} (truncated or replaced); re-export or copy the bundle again"
        )
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise BundleError(
            f"{path}: sha256 {digest[:12]}... does not match the manifest {str(entry['sha256'])[:12]}... (corrupt file); "
            "re-export or copy the bundle again"
        )
    return ModelFile(
        role=role,
        variant=variant,
        path=path,
        sha256=digest,
        inputs=tuple(i["name"] for i in entry["inputs"]),
        outputs=tuple(o["name"] for o in entry["outputs"]),
    )


def read_manifest(root: Path | str) -> dict[str, Any]:
    """Parse ``manifest.json`` and check its format and version (no file checks)."""
    root = Path(root)
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise BundleError(f"{root}: model bundle folder not found; create one with: edged-export --quantize --out {root}")
    if not path.is_file():
        raise BundleError(f"{path}: manifest missing, this is not a model bundle; create one with edged-export --quantize --out {root}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: manifest is not valid JSON ({exc}); re-export the bundle") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise BundleError(f"{path}: not an {FORMAT_NAME} manifest; re-export the bundle with edged-export")
    version = manifest.get("version")
    if version != MANIFEST_VERSION:
        raise BundleError(
            f"{path}: manifest version {version!r}, this edged reads version {MANIFEST_VERSION}; "
            "re-export the bundle with the edged-export of this release"
        )
    return manifest


def load_bundle(root: Path | str, variants: tuple[str, ...] | None = None) -> Bundle:
    """Open and verify a bundle: manifest fields, then size and sha256 of every model file.

    ``variants`` limits the checksum work to the variants that will be used.
    """
    root = Path(root)
    manifest = read_manifest(root)
    mpath = root / MANIFEST_NAME
    _need(manifest, ("models", "segmentation", "embedding"), "manifest", mpath)
    _need(manifest["segmentation"], _REQUIRED_SEGMENTATION, "segmentation", mpath)
    _need(manifest["embedding"], _REQUIRED_EMBEDDING, "embedding", mpath)
    seg = manifest["segmentation"]
    emb = manifest["embedding"]
    files: dict[tuple[str, str], ModelFile] = {}
    for role in ROLES:
        entries = manifest["models"].get(role)
        if not entries:
            raise BundleError(f"{mpath}: no {role} model listed; re-export the bundle with edged-export")
        for variant, entry in entries.items():
            if variant not in VARIANTS:
                raise BundleError(f"{mpath}: unknown variant {variant!r} for {role} (known: {', '.join(VARIANTS)})")
            if variants is None or variant in variants:
                files[(role, variant)] = _verify_file(root, role, variant, entry, mpath)
    return Bundle(
        root=root,
        manifest=manifest,
        segmentation=SegmentationInfo(
            sample_rate=int(seg["sample_rate"]),
            num_speakers=int(seg["num_speakers"]),
            frame_start=float(seg["frame_start"]),
            frame_step=float(seg["frame_step"]),
            frame_duration=float(seg["frame_duration"]),
        ),
        embedding=EmbeddingInfo(dim=int(emb["dim"]), fbank=dict(emb["fbank"])),
        files=files,
    )
