"""The export run: sources -> ONNX fp32 -> int8 -> parity gates -> timed -> bundle on disk."""

from __future__ import annotations

import logging
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import onnxruntime
import torch

import edged
from edged.sources.file import read_audio
from edged.models.bundle import FORMAT_NAME, MANIFEST_NAME, MANIFEST_VERSION, load_bundle, read_manifest, sha256_file
from edged.errors import BundleError
from edged.dsp.features import Fbank, FbankConfig
from edged.models.runtime import create_session
from edged.dsp.frames import FrameGrid
from edged.models.weights import embedding_weights

from . import embedding as emb
from . import parity, quantize, segmentation as seg, timing
from .errors import ExportError
from .presets import shipped_presets
from .sources import default_cache_dir, resolve_source

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
FILES = {
    ("segmentation", "fp32"): "segmentation.fp32.onnx",
    ("segmentation", "int8"): "segmentation.int8.onnx",
    ("embedding", "fp32"): "embedding.fp32.onnx",
    ("embedding", "int8"): "embedding.int8.onnx",
}


@dataclass
class ExportOptions:
    """Everything an export run needs; the CLI fills it."""

    out: Path
    quantize: bool = False
    segmentation: str | None = None
    embedding: str | None = None
    hf_token: str | None = None
    cache_dir: Path = field(default_factory=default_cache_dir)
    calibration_audio: Sequence[Path] = ()
    parity_audio: Sequence[Path] = ()
    chunk_duration: float = 5.0
    opset: int = DEFAULT_OPSET
    gates: parity.Gates = field(default_factory=parity.Gates)
    torch_threads: int = 2


def bundled_sample() -> Path:
    """pyannote.audio's own 30 s two-speaker sample (MIT), present wherever pyannote.audio is."""
    import pyannote.audio

    path = Path(pyannote.audio.__file__).parent / "sample" / "sample.wav"
    if not path.is_file():
        raise ExportError(f"{path}: pyannote.audio's sample is missing; pass --calibration-audio and --parity-audio")
    return path


def default_audio(sample_rate: int) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, Any]]:
    """Calibration = first half of the bundled sample, parity = second half (disjoint audio)."""
    path = bundled_sample()
    wav = read_audio(path, sample_rate)
    half = len(wav) // 2
    info = {"calibration": [f"{path.name}[0:{half / sample_rate:.1f}s]"], "parity": [f"{path.name}[{half / sample_rate:.1f}s:end]"]}
    return [wav[:half]], [wav[half:]], info


def load_audio_set(paths: Sequence[Path], sample_rate: int) -> list[np.ndarray]:
    return [read_audio(p, sample_rate) for p in paths]


def onnx_run_all(path: Path, feeds: dict[str, np.ndarray], batch: int = 16) -> list[np.ndarray]:
    """Run an ONNX model over batched numpy inputs (two threads: this is the host); all outputs."""
    session = create_session(path, intra_op_threads=2)
    n = next(iter(feeds.values())).shape[0]
    outs = [session.run(None, {k: v[i : i + batch] for k, v in feeds.items()}) for i in range(0, n, batch)]
    return [np.concatenate(parts) for parts in zip(*outs)]


def onnx_run(path: Path, feeds: dict[str, np.ndarray], batch: int = 16) -> np.ndarray:
    """The first output of ``onnx_run_all``."""
    return onnx_run_all(path, feeds, batch)[0]


def embedding_inputs(chunks: np.ndarray, activations: np.ndarray, fbank: Fbank, seg_grid: FrameGrid) -> dict[str, np.ndarray]:
    """fbank features and overlap-aware per-speaker weights on fbank frames, for a batch of chunks
    (the edge's own feature and weight code)."""
    feats = fbank.batch(chunks)
    frames, fbank_grid = feats.shape[1], fbank.config.frame_grid()
    weights = np.stack([embedding_weights(a, frames, source=seg_grid, target=fbank_grid) for a in activations])
    return {"fbank": feats, "weights": weights.astype(np.float32)}


def model_entry(path: Path, root: Path, precision: str, method: str) -> dict[str, Any]:
    """Manifest entry of one ONNX file: size, checksum, opset and I/O signature."""
    model = onnx.load(str(path), load_external_data=False)

    def describe(values) -> list[dict[str, Any]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            out.append({
                "name": v.name,
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                "shape": [d.dim_param or d.dim_value for d in t.shape.dim],
            })
        return out

    initializers = {i.name for i in model.graph.initializer}
    return {
        "path": path.relative_to(root).as_posix(),
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "inputs": describe([i for i in model.graph.input if i.name not in initializers]),
        "outputs": describe(model.graph.output),
        "precision": precision,
        "quantization": method,
    }


def tool_versions() -> dict[str, str]:
    import pyannote.audio

    return {
        "edged": edged.__version__,
        "torch": torch.__version__,
        "pyannote.audio": pyannote.audio.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _prepare_out(out: Path) -> None:
    """Refuse to overwrite a folder that is not a bundle (no data loss)."""
    if out.exists():
        if not out.is_dir():
            raise ExportError(f"{out}: exists and is not a folder; choose another --out")
        if any(out.iterdir()):
            try:
                read_manifest(out)
            except BundleError:
                raise ExportError(f"{out}: folder is not empty and holds no edged bundle; choose an empty or new --out") from None


def _install(staging: Path, out: Path) -> None:
    """Move a finished bundle into place, replacing an older bundle only after success."""
    out.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if out.exists():
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def run_export(opts: ExportOptions) -> dict[str, Any]:
    """Export, quantize, check parity and write the bundle; returns the manifest."""
    started = time.time()
    onnxruntime.set_default_logger_severity(3)  # graph-cleanup warnings are not the user's concern
    torch.set_num_threads(opts.torch_threads)
    out = opts.out.resolve()
    _prepare_out(out)
    seg_source = resolve_source("segmentation", opts.segmentation, opts.cache_dir)
    emb_source = resolve_source("embedding", opts.embedding, opts.cache_dir)
    log.info("loading segmentation model from %s", seg_source.path or seg_source.hub_id)
    seg_model = seg.load_segmentation(seg_source, token=opts.hf_token)
    log.info("loading embedding model from %s", emb_source.path or emb_source.hub_id)
    campplus = emb.load_campplus(emb_source)
    weighted = emb.WeightedCAMPPlus(campplus).eval()
    geometry = seg.geometry(seg_model)
    sr = geometry["sample_rate"]
    seg_grid = FrameGrid(start=geometry["frame_start"], step=geometry["frame_step"], duration=geometry["frame_duration"])
    fbank_config = FbankConfig(sample_rate=sr)
    fbank = Fbank(fbank_config)

    if opts.parity_audio:
        parity_wavs = load_audio_set(opts.parity_audio, sr)
        calib_wavs = load_audio_set(opts.calibration_audio, sr) if opts.calibration_audio else None
        audio_info = {"parity": [Path(p).name for p in opts.parity_audio], "calibration": [Path(p).name for p in opts.calibration_audio]}
        if calib_wavs is None:
            calib_wavs, _, info = default_audio(sr)
            audio_info["calibration"] = info["calibration"]
    elif opts.calibration_audio:
        raise ExportError("--calibration-audio needs --parity-audio too (calibration and parity audio must differ)")
    else:
        calib_wavs, parity_wavs, audio_info = default_audio(sr)
    chunk = int(round(opts.chunk_duration * sr))
    parity_chunks = parity.chunk_waveforms(parity_wavs, chunk, chunk // 2)
    calib_chunks = parity.chunk_waveforms(calib_wavs, chunk, chunk // 2)

    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None))
    try:
        paths = {key: staging / name for key, name in FILES.items()}
        log.info("exporting ONNX (opset %d)", opts.opset)
        seg.export_segmentation(seg_model, paths[("segmentation", "fp32")], opts.opset, sr)
        emb.export_embedding(emb.ExportCAMPPlus(campplus).eval(), paths[("embedding", "fp32")], opts.opset, num_frames=fbank.num_frames(chunk))

        # Reference outputs from PyTorch on the parity audio.
        activations_ref, active_ref = parity.torch_batched(seg.SpeakerActivations(seg_model).eval(), parity_chunks[:, None, :])
        seg_fp32, active_fp32 = onnx_run_all(paths[("segmentation", "fp32")], {"waveform": parity_chunks[:, None, :]})
        emb_in = embedding_inputs(parity_chunks, activations_ref, fbank, seg_grid)
        (emb_ref,) = parity.torch_batched(weighted, emb_in["fbank"], emb_in["weights"])
        emb_fp32 = onnx_run(paths[("embedding", "fp32")], emb_in)
        active = activations_ref.max(axis=1) >= opts.gates.active_threshold  # (chunks, speakers)
        # Uniform weights through the exported graph must equal the unmodified CAM++.
        ones = np.ones((len(parity_chunks), 1, emb_in["fbank"].shape[1]), np.float32)
        uniform_onnx = onnx_run(paths[("embedding", "fp32")], {"fbank": emb_in["fbank"], "weights": ones})[:, 0]
        (uniform_ref,) = parity.torch_batched(campplus, emb_in["fbank"])

        seg_int8 = emb_int8 = active_int8 = None
        if opts.quantize:
            log.info("quantizing segmentation (dynamic int8)")
            quantize.quantize_segmentation(paths[("segmentation", "fp32")], paths[("segmentation", "int8")])
            log.info("quantizing embedding (static QDQ int8, %d calibration chunks)", len(calib_chunks))
            calib_act = onnx_run(paths[("segmentation", "fp32")], {"waveform": calib_chunks[:, None, :]})
            calib_in = embedding_inputs(calib_chunks, calib_act, fbank, seg_grid)
            quantize.quantize_embedding(
                paths[("embedding", "fp32")], paths[("embedding", "int8")],
                ({"fbank": calib_in["fbank"][i : i + 1], "weights": calib_in["weights"][i : i + 1]} for i in range(len(calib_chunks))),
            )
            seg_int8, active_int8 = onnx_run_all(paths[("segmentation", "int8")], {"waveform": parity_chunks[:, None, :]})
            emb_int8 = onnx_run(paths[("embedding", "int8")], emb_in)

        seg_fig = parity.segmentation_figures(activations_ref, seg_fp32, seg_int8, (active_ref, active_fp32, active_int8))
        emb_fig = parity.embedding_figures(emb_ref, emb_fp32, emb_int8, active)
        uniform_cos = parity.cosine_rows(uniform_ref, uniform_onnx)
        emb_fig["fp32_uniform_cosine_min"] = float(uniform_cos.min())
        emb_fig["fp32_cosine_min"] = min(emb_fig["fp32_cosine_min"], emb_fig["fp32_uniform_cosine_min"])
        report = parity.enforce(seg_fig, emb_fig, opts.gates)
        report["audio"] = audio_info

        log.info("timing one %.1f s chunk with one thread", opts.chunk_duration)
        timings: dict[str, Any] = {}
        seg_feed = {"waveform": parity_chunks[:1, None, :]}
        emb_feed = {"fbank": emb_in["fbank"][:1], "weights": emb_in["weights"][:1]}
        for (role, variant), path in paths.items():
            if path.exists():
                timings.setdefault(role, {})[variant] = timing.median_ms(path, seg_feed if role == "segmentation" else emb_feed)

        seg_method = {"fp32": "none", "int8": quantize.SEGMENTATION_METHOD}
        emb_method = {"fp32": "none", "int8": quantize.EMBEDDING_METHOD}
        models: dict[str, dict[str, Any]] = {"segmentation": {}, "embedding": {}}
        for (role, variant), path in paths.items():
            if path.exists():
                method = (seg_method if role == "segmentation" else emb_method)[variant]
                models[role][variant] = model_entry(path, staging, variant, method)
        manifest = {
            "format": FORMAT_NAME,
            "version": MANIFEST_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "sample_rate": sr,
            "chunk_duration": opts.chunk_duration,
            "segmentation": {**geometry, "outputs": {
                "activations": "per-speaker activation probability (powerset marginals)",
                "active": "0/1 speakers of the most likely powerset class",
            }},
            "embedding": {
                "model": "CAM++ (3D-Speaker), weighted statistics pooling",
                "dim": emb.EMBEDDING_DIM,
                "fbank": fbank_config.to_dict(),
                "fbank_frames_per_chunk": fbank.num_frames(chunk),
                "trunk_stride": emb.TRUNK_STRIDE,
                "weights": "per local speaker on fbank frames; overlap-aware (diart gamma/beta) at the edge",
            },
            "models": models,
            "parity": report,
            "timing_one_thread": timings,
            "sources": {"segmentation": seg_source.provenance, "embedding": emb_source.provenance},
            "tools": tool_versions(),
            "export_seconds": round(time.time() - started, 1),
        }
        presets = shipped_presets(seg_source.provenance.get("sha256"), emb_source.provenance.get("sha256"))
        if presets is not None:
            manifest["presets"] = presets
        else:
            log.warning("no tuned presets for these checkpoints: the bundle runs diart's AMI preset until "
                        "edged-tune --write-bundle adds its own")
        import json

        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        load_bundle(staging)  # the edge loader must accept what we wrote
        _install(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
