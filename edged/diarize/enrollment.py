"""A voice profile from single-speaker audio, with the pipeline's own models and embeddings.

The audio is cut into windows of the pipeline's chunk length (half overlapping; a shorter clip
is zero-padded to one window, as the pipeline pads). In every window the segmentation model
finds the local speakers; the dominant one's overlap-aware embedding (the same call and
weights as the streaming pipeline) is weighted by its speech time; the profile is the
normalised weighted mean. The audio is refused when it holds under ``MIN_SPEECH_S`` seconds of
speech, or when a window holds a second voice for ``SECOND_VOICE_S`` seconds or more.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edged.diarize.params import PipelineParams
from edged.errors import EdgedError
from edged.models.blocks import Models

MIN_SPEECH_S = 5.0
# a second local speaker this long within one window means two voices (measured: single-speaker
# clips of ../shared/data reach at most 0.47 s of spurious second speaker, the two-speaker clips
# falcon, sample and AMI 1.25 s or more; see tests/test_profiles.py)
SECOND_VOICE_S = 1.0
LOCAL_THRESHOLD = 0.5
_BIN_S = 0.01


class EnrollmentError(EdgedError):
    """Enrollment audio cannot make a profile (one-line message)."""


@dataclass(frozen=True)
class VoiceSample:
    """What one recording gives: the weighted embedding sum and the speech found."""

    embedding_sum: np.ndarray  # sum over windows of weight * unit embedding
    weight: float
    speech_s: float
    second_voice_s: float  # longest second local speaker in one window
    second_voice_at: float  # where (window start, s)


def voice_sample(models: Models, samples: np.ndarray, params: PipelineParams | None = None) -> VoiceSample:
    """Analyse one single-speaker recording (16 kHz mono float32)."""
    p = params or PipelineParams()
    sr = models.sample_rate
    x = np.asarray(samples, dtype=np.float32)
    x = np.where(np.isfinite(x), x, np.float32(0.0))
    win = int(round(p.duration * sr))
    hop = max(1, win // 2)
    real = len(x)
    if real < win:
        starts = [0]
    else:
        starts = list(range(0, real - win + 1, hop))
        if starts[-1] + win < real:
            starts.append(real - win)
    grid = models.segmentation.grid
    bins = np.zeros(int(np.ceil(real / sr / _BIN_S)) + 1, dtype=bool)
    dim = models.bundle.embedding.dim
    total = np.zeros(dim)
    weight = 0.0
    second, second_at = 0.0, 0.0
    for s in starts:
        chunk = x[s:s + win]
        if len(chunk) < win:
            chunk = np.concatenate([chunk, np.zeros(win - len(chunk), np.float32)])
        probs = models.segmentation(chunk)
        local = (probs >= LOCAL_THRESHOLD).astype(np.float32)
        frames = local.shape[0]
        centres = s / sr + grid.center(np.arange(frames))
        inside = centres < real / sr
        local[~inside] = 0.0
        seconds = local.sum(axis=0) * grid.step
        order = np.argsort(-seconds)
        if len(order) > 1 and seconds[order[1]] > second:
            second, second_at = float(seconds[order[1]]), s / sr
        speaking = local.max(axis=1) > 0
        idx = np.clip((centres[speaking] / _BIN_S).astype(int), 0, len(bins) - 1)
        half = int(round(grid.step / 2 / _BIN_S))
        for off in range(-half, half + 1):
            bins[np.clip(idx + off, 0, len(bins) - 1)] = True
        top = order[0]
        if seconds[top] <= 0 or local[:, top].max() < p.tau_active:
            continue
        emb = models.embedding(chunk, local, p.gamma, p.beta)[top]
        if not np.isfinite(emb).all():
            continue
        total += seconds[top] * emb / max(np.linalg.norm(emb), 1e-12)
        weight += float(seconds[top])
    return VoiceSample(total, weight, float(bins.sum() * _BIN_S), second, second_at)


def check_single_voice(sample: VoiceSample, what: str) -> None:
    """EnrollmentError when the segmentation heard a second voice in ``what``."""
    if sample.second_voice_s >= SECOND_VOICE_S:
        raise EnrollmentError(
            f"{what}: the segmentation hears two voices ({sample.second_voice_s:.1f} s of a second voice in the "
            f"window at {sample.second_voice_at:.1f} s); enroll from a recording of one person alone")


def profile_vector(samples: list[VoiceSample], what: str) -> tuple[np.ndarray, float]:
    """Unit profile vector and total speech seconds; EnrollmentError below ``MIN_SPEECH_S``."""
    speech = float(sum(s.speech_s for s in samples))
    weight = float(sum(s.weight for s in samples))
    if speech < MIN_SPEECH_S or weight <= 0:
        raise EnrollmentError(
            f"{what} holds only {speech:.1f} s of speech; enrollment needs at least {MIN_SPEECH_S:g} s: "
            "record longer or give more files")
    total = np.sum([s.embedding_sum for s in samples], axis=0)
    return total / max(np.linalg.norm(total), 1e-12), speech
