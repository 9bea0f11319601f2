"""Frame grids: where frame-level model outputs sit in stream time.

Frame ``i`` of a grid covers ``[start + i*step, start + i*step + duration)`` and is stamped at its
centre.  For bookkeeping each frame *owns* the ``step``-long interval centred on its centre, so the
frames of one grid partition time without gaps or overlaps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Tolerance (in frames) for float rounding when a time falls exactly on a frame centre.
_EPS = 1e-7


@dataclass(frozen=True)
class FrameGrid:
    """Uniform frame grid: ``start`` of frame 0, ``step`` between frames, frame ``duration`` (s)."""

    start: float
    step: float
    duration: float

    def __post_init__(self) -> None:
        for name in ("start", "step", "duration"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ValueError(f"FrameGrid.{name} must be finite, got {value!r}")
        if self.step <= 0 or self.duration <= 0:
            raise ValueError(
                f"FrameGrid step and duration must be > 0, got step={self.step}, duration={self.duration}"
            )

    @classmethod
    def from_samples(
        cls, step: int, duration: int, sample_rate: int, start: float = 0.0
    ) -> FrameGrid:
        """Grid whose step and duration are given in samples at ``sample_rate``."""
        return cls(start=start, step=step / sample_rate, duration=duration / sample_rate)

    def center(self, i: int | np.ndarray) -> float | np.ndarray:
        """Time of frame ``i`` (its centre); works on index arrays."""
        return self.start + i * self.step + 0.5 * self.duration

    def centers(self, n: int) -> np.ndarray:
        """Centres of frames ``0..n-1``."""
        return self.start + np.arange(n) * self.step + 0.5 * self.duration

    def index(self, t: float) -> int:
        """Index of the frame whose centre is closest to ``t`` (pyannote's ``closest_frame``)."""
        return int(np.rint((t - self.start - 0.5 * self.duration) / self.step))

    def first_at(self, t: float) -> int:
        """Smallest frame index whose centre is at or after ``t``."""
        x = (t - self.start - 0.5 * self.duration) / self.step
        return math.ceil(x - _EPS)

    def crop(self, t0: float, t1: float) -> tuple[int, int]:
        """Index range ``[first, stop)`` of the frames whose centre lies in ``[t0, t1)``."""
        first = self.first_at(t0)
        return first, max(first, self.first_at(t1))

    def owned(self, first: int, stop: int) -> tuple[float, float]:
        """Time interval owned by frames ``[first, stop)``: from half a step before the first
        centre to half a step after the last one."""
        half = 0.5 * self.step
        return self.center(first) - half, self.center(stop - 1) + half

    def at(self, start: float) -> FrameGrid:
        """Same step and duration, frame 0 starting at ``start`` (e.g. a chunk's start time)."""
        return FrameGrid(start=start, step=self.step, duration=self.duration)

    def sub(self, first: int) -> FrameGrid:
        """Grid whose frame 0 is this grid's frame ``first``."""
        return FrameGrid(start=self.start + first * self.step, step=self.step, duration=self.duration)

    def num_frames(self, span: float) -> int:
        """Number of whole frames that fit in a window of ``span`` seconds."""
        if span < self.duration:
            return 0
        return 1 + math.floor((span - self.duration) / self.step + _EPS)

    def same_resolution(self, other: FrameGrid, tol: float = 1e-9) -> bool:
        """True when ``other`` has the same step and duration."""
        return abs(self.step - other.step) <= tol and abs(self.duration - other.duration) <= tol


# pyannote segmentation-3.0 at 16 kHz: 270-sample step, 991-sample receptive field (293 / 5 s).
SEGMENTATION_FRAMES = FrameGrid.from_samples(step=270, duration=991, sample_rate=16000)
# Kaldi fbank (snip_edges): 10 ms step, 25 ms window (498 / 5 s).
FBANK_FRAMES = FrameGrid.from_samples(step=160, duration=400, sample_rate=16000)
