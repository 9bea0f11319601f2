"""Stateless model blocks over a verified bundle: segmentation and overlap-aware embeddings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from edged.errors import BundleError
from edged.models.bundle import Bundle, ModelFile, check_io, check_output_shape, load_bundle, runtime_io
from edged.dsp.features import Fbank, FbankConfig, RollingFbank
from edged.dsp.frames import FrameGrid
from edged.models.runtime import DEFAULT_PROVIDERS, create_session, session_io
from edged.models.weights import embedding_weights


class SegmentationModel:
    """Chunk waveform (samples,) -> local speaker activation probabilities (frames, speakers)."""

    def __init__(self, path: Path, grid: FrameGrid, **session_options):
        self.session = create_session(path, **session_options)
        self.grid = grid

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        wav = np.ascontiguousarray(samples, dtype=np.float32)[None, None, :]
        return self.session.run(["activations"], {"waveform": wav})[0][0]


class EmbeddingModel:
    """Chunk waveform + activations -> one L2-normalised embedding per local speaker.

    fbank once per chunk, overlap-aware weights (diart's gamma/beta penalty) resampled from
    segmentation frames onto fbank frames, one model call for all local speakers. Consecutive
    overlapping chunks of a stream share their fbank frames (``RollingFbank``: only the frames
    of new audio are computed; the result is the same as a fresh ``fbank(samples)``).
    """

    def __init__(self, path: Path, fbank: Fbank, seg_grid: FrameGrid, gamma: float = 3.0, beta: float = 10.0,
                 **session_options):
        self.session = create_session(path, **session_options)
        self.fbank = fbank
        self.features = RollingFbank(fbank)
        self.fbank_grid = fbank.config.frame_grid()
        self.seg_grid = seg_grid
        self.gamma = gamma
        self.beta = beta

    def weights(self, segmentation: np.ndarray, num_frames: int, gamma: float | None = None,
                beta: float | None = None) -> np.ndarray:
        """(frames, speakers) activations -> (speakers, fbank frames) pooling weights.

        ``gamma``/``beta`` override the model's defaults for this call (the pipeline passes its own)."""
        gamma = self.gamma if gamma is None else gamma
        beta = self.beta if beta is None else beta
        return embedding_weights(segmentation, num_frames, gamma, beta, self.seg_grid, self.fbank_grid)

    def __call__(self, samples: np.ndarray, segmentation: np.ndarray, gamma: float | None = None,
                 beta: float | None = None) -> np.ndarray:
        feats = self.features(samples)
        weights = self.weights(segmentation, feats.shape[0], gamma, beta)
        emb = self.session.run(None, {"fbank": feats[None], "weights": weights[None].astype(np.float32)})[0][0]
        norm = np.linalg.norm(emb, axis=-1, keepdims=True)
        return emb / np.maximum(norm, 1e-12)


@dataclass
class Models:
    """The two model blocks of one bundle variant, plus the bundle they came from."""

    bundle: Bundle
    variant: str
    segmentation: SegmentationModel
    embedding: EmbeddingModel

    @property
    def sample_rate(self) -> int:
        return self.bundle.segmentation.sample_rate


def load_models(
    root: Path | str,
    variant: str = "int8",
    threads: int = 1,
    providers: Sequence[str] = DEFAULT_PROVIDERS,
    gamma: float = 3.0,
    beta: float = 10.0,
) -> Models:
    """Verify the bundle (only ``variant``'s files are hashed) and open both models."""
    bundle = load_bundle(root, variants=(variant,))
    seg_info = bundle.segmentation
    grid = FrameGrid(start=seg_info.frame_start, step=seg_info.frame_step, duration=seg_info.frame_duration)
    options = {"intra_op_threads": threads, "inter_op_threads": 1, "providers": providers}
    seg = SegmentationModel(bundle.model("segmentation", variant).path, grid, **options)
    fbank = Fbank(FbankConfig.from_dict(bundle.embedding.fbank))
    emb = EmbeddingModel(bundle.model("embedding", variant).path, fbank, grid, gamma, beta, **options)
    verify_models(bundle, variant, seg, emb)
    return Models(bundle=bundle, variant=variant, segmentation=seg, embedding=emb)


def verify_models(bundle: Bundle, variant: str, seg: SegmentationModel, emb: EmbeddingModel) -> None:
    """Each open model against the manifest and the runtime (names, ranks, dtypes, fixed sizes),
    then one probe call on silence whose output shapes must match too; BundleError naming the file."""
    rate = bundle.segmentation.sample_rate
    samples = np.zeros(int(float(bundle.manifest.get("chunk_duration", 5.0)) * rate), dtype=np.float32)
    speakers = bundle.segmentation.num_speakers
    frames = 100
    probes = (
        ("segmentation", seg.session, {"waveform": samples[None, None, :]}),
        ("embedding", emb.session, {"fbank": np.zeros((1, frames, emb.fbank.config.num_mel_bins), np.float32),
                                    "weights": np.full((1, speakers, frames), 1.0 / frames, np.float32)}),
    )
    for role, session, feed in probes:
        file = bundle.model(role, variant)
        needed = runtime_io(bundle, role)
        check_io(file, *session_io(session), needed)
        output = needed[1][0]
        shape = _probe(file, session, output.name, feed)
        check_output_shape(file, output.name, shape, output)


def _probe(file: ModelFile, session, name: str, feed: dict[str, np.ndarray]) -> tuple[int, ...]:
    try:
        return tuple(session.run([name], feed)[0].shape)
    except Exception as exc:  # onnxruntime raises its own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"{file.path}: the model fails on a probe input ({first[:300]}); the file is not the "
                          "model the manifest describes; re-export the bundle with edged-export") from None
