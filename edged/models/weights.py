"""Overlap-aware frame weights for speaker embeddings (diart's overlapped speech penalty)."""

from __future__ import annotations

import numpy as np

from edged.dsp.frames import FBANK_FRAMES, SEGMENTATION_FRAMES, FrameGrid


def overlap_aware_weights(
    segmentation: np.ndarray, gamma: float = 3.0, beta: float = 10.0, floor: float = 1e-8
) -> np.ndarray:
    """Per-frame weights, shape ``(frames, speakers)`` like ``segmentation``.

    ``w = seg**gamma * softmax(beta * seg over speakers)**gamma``, clipped below at ``floor``:
    frames where a speaker is alone and confident weigh most, overlapped frames little.
    """
    seg = np.asarray(segmentation, dtype=np.float64)
    if seg.ndim != 2:
        raise ValueError(f"segmentation must be (frames, speakers), got shape {seg.shape}")
    logits = beta * seg
    logits = logits - logits.max(axis=1, keepdims=True)
    soft = np.exp(logits)
    soft /= soft.sum(axis=1, keepdims=True)
    weights = np.power(seg, gamma) * np.power(soft, gamma)
    return np.maximum(weights, floor)


def resample_weights(
    weights: np.ndarray,
    frames_out: int,
    source: FrameGrid = SEGMENTATION_FRAMES,
    target: FrameGrid = FBANK_FRAMES,
) -> np.ndarray:
    """Linearly interpolate ``(speakers, frames_in)`` weights onto ``frames_out`` target frames.

    Both grids are relative to the chunk start; values are interpolated at target frame centres
    from source frame centres (edge values held beyond the first/last source centre).  Defaults:
    segmentation-3.0 frames onto Kaldi fbank frames (293 -> 498 for 5 s at 16 kHz).
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError(f"weights must be (speakers, frames), got shape {w.shape}")
    if frames_out < 1 or w.shape[1] < 1:
        raise ValueError(f"need at least one frame in and out, got {w.shape[1]} -> {frames_out}")
    x_in = source.centers(w.shape[1])
    x_out = target.centers(frames_out)
    return np.stack([np.interp(x_out, x_in, row) for row in w]) if len(w) else np.zeros((0, frames_out))


def embedding_weights(
    segmentation: np.ndarray,
    num_frames: int,
    gamma: float = 3.0,
    beta: float = 10.0,
    source: FrameGrid = SEGMENTATION_FRAMES,
    target: FrameGrid = FBANK_FRAMES,
) -> np.ndarray:
    """(frames, speakers) activations -> (speakers, num_frames) pooling weights on the embedding
    model's frames: the overlap penalty, then resampling from ``source`` to ``target`` frames."""
    return resample_weights(overlap_aware_weights(segmentation, gamma, beta).T, num_frames, source, target)
