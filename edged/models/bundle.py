"""Model bundle: the manifest schema and the edge-side loader that verifies it.

A bundle is a folder with ``manifest.json`` and the ONNX files it lists. The loader checks the
manifest version, the fields the edge needs, and every file's size and sha256 before a model is
opened, so a corrupt, truncated or mismatched bundle is refused with a message naming the file.

Once a model is open, ``check_io`` compares the ONNX file's inputs and outputs (names, ranks,
dtypes, fixed sizes) with the manifest's and with what the runtime feeds and reads, so a wrong
model whose checksum was updated in the manifest is refused at start, naming the file.

An optional ``clustering.uisrnn`` section (written by ``edged-export uisrnn``) adds the UIS-RNN
clustering model; it is verified the same way whenever present (it is small), and a bundle
without it stays valid.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from edged.errors import BundleError

MANIFEST_NAME = "manifest.json"
# Bumped whenever the meaning of a manifest field or a model's inputs/outputs changes.
MANIFEST_VERSION = 1
FORMAT_NAME = "edged-model-bundle"

ROLES = ("segmentation", "embedding")
VARIANTS = ("fp32", "int8")

_REQUIRED_SEGMENTATION = ("sample_rate", "num_speakers", "frame_start", "frame_step", "frame_duration")
_REQUIRED_EMBEDDING = ("dim", "fbank")
_REQUIRED_FILE = ("path", "bytes", "sha256", "inputs", "outputs")
# optional section clustering.uisrnn (edged-export uisrnn): the file fields plus these
_REQUIRED_UISRNN = ("observation_dim", "hidden_size", "depth", "sigma2", "transition_bias", "crp_alpha", "init_hidden")
_UISRNN_FIX = "re-run edged-export uisrnn --out BUNDLE, or remove the clustering.uisrnn section"


def sha256_file(path: Path, block_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(block_size), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, element type (numpy name) and shape (int: fixed size,
    str or None: any size)."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]

    def show(self) -> str:
        dims = ", ".join("?" if not isinstance(d, int) else str(d) for d in self.shape)
        return f"{self.name} {self.dtype}[{dims}]"


@dataclass(frozen=True)
class ModelFile:
    """One ONNX file of the bundle, verified on disk."""

    role: str
    variant: str
    path: Path
    sha256: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    # the manifest's inputs/outputs with dtype and shape (empty when it lists names only)
    input_specs: tuple[TensorSpec, ...] = ()
    output_specs: tuple[TensorSpec, ...] = ()


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
class UISRNNInfo:
    """The optional UIS-RNN clustering model: one GRU step as ONNX, and the decoder's constants."""

    file: ModelFile
    observation_dim: int
    hidden_size: int
    depth: int
    # per-dimension observation variance (length observation_dim)
    sigma2: tuple[float, ...]
    # probability that the next observation belongs to another speaker
    transition_bias: float
    # Chinese restaurant process concentration (new-speaker prior)
    crp_alpha: float
    # GRU initial hidden state of a new speaker, (depth, hidden_size)
    init_hidden: tuple[tuple[float, ...], ...]
    # observation = embedding * input_scale (optional in the manifest, default 1)
    input_scale: float = 1.0


@dataclass(frozen=True)
class BundlePresets:
    """Pipeline parameters tuned for this bundle's embedding model, per output latency (seconds).

    Values are plain mappings here; ``edged.diarize.presets`` validates them as ``PipelineParams``."""

    by_latency: Mapping[float, Mapping[str, Any]]
    # how they were tuned (free text from the tool that wrote them)
    source: str = ""


@dataclass(frozen=True)
class Bundle:
    """A verified model bundle."""

    root: Path
    manifest: Mapping[str, Any]
    segmentation: SegmentationInfo
    embedding: EmbeddingInfo
    files: Mapping[tuple[str, str], ModelFile]
    # clustering.uisrnn, when the bundle has one (edged-export uisrnn)
    uisrnn: UISRNNInfo | None = None
    # tuned pipeline presets, when the bundle has them (edged-export, edged-tune --write-bundle)
    presets: BundlePresets | None = None

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
        input_specs=_specs(entry["inputs"]),
        output_specs=_specs(entry["outputs"]),
    )


def _specs(items: Any) -> tuple[TensorSpec, ...]:
    out = []
    for item in items:
        if "dtype" not in item or "shape" not in item:
            return ()
        shape = tuple(d if isinstance(d, int) and not isinstance(d, bool) else str(d) for d in item["shape"])
        out.append(TensorSpec(str(item["name"]), str(item["dtype"]), shape))
    return tuple(out)


def runtime_io(bundle: Bundle, role: str) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """What the edge runtime feeds a ``role`` model and reads from it (other inputs/outputs may exist
    only when the manifest lists them too)."""
    if role == "segmentation":
        return ((TensorSpec("waveform", "float32", ("batch", 1, "samples")),),
                (TensorSpec("activations", "float32", ("batch", "frames", bundle.segmentation.num_speakers)),))
    if role == "embedding":
        mels = int(bundle.embedding.fbank.get("num_mel_bins", 80))
        return ((TensorSpec("fbank", "float32", ("batch", "frames", mels)),
                 TensorSpec("weights", "float32", ("batch", "speakers", "frames"))),
                (TensorSpec("embeddings", "float32", ("batch", "speakers", bundle.embedding.dim)),))
    raise ValueError(f"unknown role {role!r}")


def check_io(file: ModelFile, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
             needed: tuple[Sequence[TensorSpec], Sequence[TensorSpec]]) -> None:
    """The ONNX file's ``inputs``/``outputs`` against the manifest and the runtime's ``needed``
    specs; BundleError naming the file and the first difference."""
    fix = "the file is not the model the manifest describes; re-export the bundle with edged-export"
    for kind, actual, listed, wanted in (("input", inputs, file.input_specs, needed[0]),
                                         ("output", outputs, file.output_specs, needed[1])):
        names = [t.name for t in actual]
        manifest_names = list(file.inputs if kind == "input" else file.outputs)
        if sorted(names) != sorted(manifest_names):
            raise BundleError(f"{file.path}: {kind}s {', '.join(names) or 'none'} differ from the manifest's "
                              f"{', '.join(manifest_names) or 'none'}; {fix}")
        by_name = {t.name: t for t in actual}
        for spec in listed:
            got = by_name[spec.name]
            if got.dtype != spec.dtype or len(got.shape) != len(spec.shape) or not _sizes_agree(got, spec):
                raise BundleError(f"{file.path}: {kind} {got.show()} differs from the manifest's {spec.show()}; {fix}")
        for spec in wanted:
            got = by_name.get(spec.name)
            if got is None:
                raise BundleError(f"{file.path}: no {kind} {spec.name!r}, which edged uses "
                                  f"({file.role} {kind}s: {', '.join(names)}); {fix}")
            if got.dtype != spec.dtype or len(got.shape) != len(spec.shape) or not _sizes_agree(got, spec):
                raise BundleError(f"{file.path}: {kind} {got.show()}, edged needs {spec.show()} "
                                  f"(from the manifest's {file.role} section); {fix}")


def check_output_shape(file: ModelFile, name: str, shape: tuple[int, ...], spec: TensorSpec) -> None:
    """An output computed on probe input has the rank and fixed sizes of ``spec``; BundleError otherwise."""
    got = TensorSpec(name, spec.dtype, tuple(shape))
    if len(shape) != len(spec.shape) or not _sizes_agree(got, spec):
        raise BundleError(f"{file.path}: output {got.show()} on a probe input, edged needs {spec.show()} "
                          f"(from the manifest's {file.role} section); the file is not the model the manifest "
                          "describes; re-export the bundle with edged-export")


def _sizes_agree(a: TensorSpec, b: TensorSpec) -> bool:
    return all(not isinstance(x, int) or not isinstance(y, int) or x == y for x, y in zip(a.shape, b.shape))


def _number(value: Any, name: str, manifest: Path, low: float, high: float, open_low: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low) and value <= high
    if not ok:
        side = "(" if open_low else "["
        raise BundleError(f"{manifest}: clustering.uisrnn.{name}={value!r} is not in {side}{low}, {high}]; {_UISRNN_FIX}")
    return float(value)


def _verify_uisrnn(root: Path, section: Any, embedding_dim: int, manifest: Path) -> UISRNNInfo:
    """Check the optional clustering.uisrnn section: fields, shapes, ranges and the ONNX file."""
    if not isinstance(section, Mapping):
        raise BundleError(f"{manifest}: clustering.uisrnn must be a mapping; {_UISRNN_FIX}")
    missing = [k for k in _REQUIRED_FILE + _REQUIRED_UISRNN if k not in section]
    if missing:
        raise BundleError(f"{manifest}: clustering.uisrnn lacks {', '.join(missing)}; {_UISRNN_FIX}")
    dim = int(_number(section["observation_dim"], "observation_dim", manifest, 1, 1 << 16))
    hidden = int(_number(section["hidden_size"], "hidden_size", manifest, 1, 1 << 16))
    depth = int(_number(section["depth"], "depth", manifest, 1, 16))
    if dim != embedding_dim:
        raise BundleError(
            f"{manifest}: clustering.uisrnn.observation_dim={dim} differs from the embedding dim {embedding_dim} "
            f"(trained on another embedding model); {_UISRNN_FIX}"
        )
    sigma2 = section["sigma2"]
    if not isinstance(sigma2, list) or len(sigma2) != dim:
        raise BundleError(f"{manifest}: clustering.uisrnn.sigma2 must be a list of {dim} numbers; {_UISRNN_FIX}")
    sigma2 = tuple(_number(v, "sigma2[]", manifest, 0.0, math.inf, open_low=True) for v in sigma2)
    init = section["init_hidden"]
    if not (isinstance(init, list) and len(init) == depth and all(isinstance(r, list) and len(r) == hidden for r in init)):
        raise BundleError(
            f"{manifest}: clustering.uisrnn.init_hidden must be {depth} lists of {hidden} numbers; {_UISRNN_FIX}"
        )
    init_hidden = tuple(tuple(_number(v, "init_hidden[]", manifest, -math.inf, math.inf) for v in r) for r in init)
    bias = _number(section["transition_bias"], "transition_bias", manifest, 0.0, 1.0, open_low=True)
    if bias >= 1.0:
        raise BundleError(f"{manifest}: clustering.uisrnn.transition_bias={bias!r} must be below 1; {_UISRNN_FIX}")
    try:
        file = _verify_file(root, "clustering", "uisrnn", section, manifest)
    except BundleError as exc:  # name the command that writes this file
        raise BundleError(f"{exc} (clustering.uisrnn: {_UISRNN_FIX})") from None
    return UISRNNInfo(
        file=file,
        observation_dim=dim,
        hidden_size=hidden,
        depth=depth,
        sigma2=sigma2,
        transition_bias=bias,
        crp_alpha=_number(section["crp_alpha"], "crp_alpha", manifest, 0.0, math.inf, open_low=True),
        init_hidden=init_hidden,
        input_scale=_number(section.get("input_scale", 1.0), "input_scale", manifest, 0.0, math.inf, open_low=True),
    )


_PRESETS_FIX = "re-run edged-tune --write-bundle, or remove the presets section to use diart's"


def parse_presets(section: Any, manifest: Path) -> BundlePresets:
    """The manifest's ``presets`` section: ``{"latencies": {"5": {param: value}}, "source": text}``."""
    if not isinstance(section, Mapping) or not isinstance(section.get("latencies"), Mapping) or not section["latencies"]:
        raise BundleError(f"{manifest}: presets must hold a non-empty 'latencies' mapping; {_PRESETS_FIX}")
    by_latency: dict[float, Mapping[str, Any]] = {}
    for key, values in section["latencies"].items():
        try:
            latency = float(key)
        except (TypeError, ValueError):
            latency = float("nan")
        if not math.isfinite(latency) or latency <= 0 or not isinstance(values, Mapping):
            raise BundleError(f"{manifest}: presets latency {key!r} must be seconds > 0 with a mapping of "
                              f"parameters; {_PRESETS_FIX}")
        by_latency[latency] = dict(values)
    return BundlePresets(by_latency=dict(sorted(by_latency.items())), source=str(section.get("source", "")))


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
    uisrnn = None
    clustering = manifest.get("clustering")
    if clustering is not None:
        if not isinstance(clustering, Mapping):
            raise BundleError(f"{mpath}: clustering must be a mapping; {_UISRNN_FIX}")
        if "uisrnn" in clustering:
            uisrnn = _verify_uisrnn(root, clustering["uisrnn"], int(emb["dim"]), mpath)
    presets = None if manifest.get("presets") is None else parse_presets(manifest["presets"], mpath)
    return Bundle(
        root=root,
        manifest=manifest,
        presets=presets,
        segmentation=SegmentationInfo(
            sample_rate=int(seg["sample_rate"]),
            num_speakers=int(seg["num_speakers"]),
            frame_start=float(seg["frame_start"]),
            frame_step=float(seg["frame_step"]),
            frame_duration=float(seg["frame_duration"]),
        ),
        embedding=EmbeddingInfo(dim=int(emb["dim"]), fbank=dict(emb["fbank"])),
        files=files,
        uisrnn=uisrnn,
    )
