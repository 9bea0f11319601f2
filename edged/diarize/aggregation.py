"""Delayed aggregation of overlapping chunk predictions (diart's DelayedAggregation).

Chunk scores are placed on one output frame grid anchored at the stream start, with the same
step and duration as the model frames: chunk frame ``i`` lands on output frame
``offset + i`` where ``offset`` is the chunk start in whole frames, rounded (as pyannote's
``Inference.aggregate`` does).  Each output frame is emitted exactly once, in the push whose
region ``[chunk_end - latency, chunk_end - latency + step)`` contains its centre.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from edged.dsp.frames import FrameGrid

STRATEGIES = ("hamming", "mean", "first")


def decisions_at(probabilities: np.ndarray, local: np.ndarray, threshold: float, local_threshold: float) -> np.ndarray:
    """The 0/1 decisions to blend: ``local`` (taken at ``local_threshold``) when the thresholds are
    equal, else the probabilities taken at ``threshold``."""
    if threshold == local_threshold:
        return local
    return (np.asarray(probabilities) >= threshold).astype(np.float32)


def blend_decisions(probabilities: np.ndarray, decisions: np.ndarray, weight: float) -> np.ndarray:
    """Chunk scores to aggregate: ``(1 - weight) * probabilities + weight * decisions``.

    ``decisions`` are 0/1 local speaker activities (``decisions_at``).  ``weight`` 0 keeps the
    probabilities; 1 aggregates votes, as diart and pyannote's offline pipeline do."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    probabilities = np.asarray(probabilities)
    if weight == 0.0:
        return probabilities
    decisions = np.asarray(decisions, dtype=probabilities.dtype)
    if decisions.shape != probabilities.shape:
        raise ValueError(f"decisions {decisions.shape} and probabilities {probabilities.shape} differ in shape")
    return (1.0 - weight) * probabilities + weight * decisions


@lru_cache(maxsize=8)
def window_weights(strategy: str, n: int) -> np.ndarray:
    """Weight of each of a chunk's ``n`` frames in a frame's score: a Hamming window for
    "hamming", all 1 otherwise (read-only)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    w = np.hamming(n) if strategy == "hamming" else np.ones(n)
    w.flags.writeable = False
    return w


def aggregate_frames(
    scores: Sequence[np.ndarray],
    offsets: Sequence[int],
    first: int,
    stop: int,
    strategy: str = "hamming",
) -> np.ndarray:
    """Aggregate chunk scores onto output frames ``[first, stop)``.

    ``scores[j]`` is ``(frames_j, speakers)``, oldest chunk first, and covers output frames
    ``offsets[j] + [0, frames_j)``.  "hamming": mean weighted by each chunk's Hamming window;
    "mean": plain mean; "first": the oldest covering chunk.  Frames no chunk covers (at most a
    couple at the stream start or next to the newest chunk's end) repeat the newest chunk's
    nearest frame.  Returns ``(stop - first, speakers)`` float64.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not scores or len(scores) != len(offsets):
        raise ValueError("need at least one chunk and one offset per chunk")
    num_speakers = scores[0].shape[1]
    if any(s.ndim != 2 or s.shape[1] != num_speakers or len(s) == 0 for s in scores):
        raise ValueError(f"all chunk scores must be (frames>0, {num_speakers})")
    frames = np.arange(first, max(first, stop))
    num = np.zeros((len(frames), num_speakers))
    den = np.zeros(len(frames))
    for sc, off in zip(scores, offsets):
        idx = frames - off
        inside = (idx >= 0) & (idx < len(sc))
        if strategy == "first":
            inside &= den == 0
        if not inside.any():
            continue
        w = window_weights(strategy, len(sc))[idx[inside]]
        num[inside] += w[:, None] * sc[idx[inside]]
        den[inside] += w
    out = np.empty_like(num)
    covered = den > 0
    out[covered] = num[covered] / den[covered, None]
    if not covered.all():
        newest, off = scores[-1], offsets[-1]
        out[~covered] = newest[np.clip(frames[~covered] - off, 0, len(newest) - 1)]
    return out


class DelayedAggregator:
    """Keeps the last ``round(latency / step)`` chunk predictions and emits aggregated regions.

    ``push`` returns the output frames whose centre is in ``[end - latency, end - latency + step)``
    of the newest chunk (``end = chunk start + duration``).  The first push also returns every
    frame from the stream start up to that region (using the only chunk available, as diart
    does), so frames are emitted exactly once from time ``start`` on.  ``flush`` returns the frames
    after the last region up to the newest chunk's end.  Frames centred at or after a known stream
    end (``end`` of the last, zero-padded chunk) are never emitted.
    """

    def __init__(
        self,
        step: float = 0.5,
        latency: float = 5.0,
        duration: float = 5.0,
        strategy: str = "hamming",
        start: float | None = None,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if not 0 < step <= duration:
            raise ValueError(f"step={step} must be in (0, duration={duration}]")
        n = latency / step
        if not (step - 1e-9 <= latency <= duration + 1e-9) or abs(n - round(n)) > 1e-6:
            raise ValueError(
                f"latency={latency} must be a whole multiple of step={step} between step and duration={duration}"
            )
        self.step = float(step)
        self.latency = float(latency)
        self.duration = float(duration)
        self.strategy = strategy
        self.num_chunks = int(round(n))
        self._start = start
        self._chunks: deque[tuple[np.ndarray, int]] = deque(maxlen=self.num_chunks)
        self._grid: FrameGrid | None = None
        self._next = 0
        self._last_end = 0.0
        self._limit = np.inf

    def reset(self) -> None:
        """Forget all chunks; the next push starts a new stream."""
        self._chunks.clear()
        self._grid = None
        self._next = 0
        self._limit = np.inf

    @property
    def output_grid(self) -> FrameGrid | None:
        """Output frame grid (frame 0 centred half a frame duration after the stream start)."""
        return self._grid

    def push(
        self, scores: np.ndarray, grid: FrameGrid, end: float | None = None
    ) -> tuple[np.ndarray, FrameGrid]:
        """Add one chunk's ``(frames, speakers)`` scores on its grid; return the region's
        aggregated scores and the grid of their first frame.  ``end``: where the real audio
        stops, for a zero-padded last chunk (later output is clipped there)."""
        scores = np.asarray(scores)
        if scores.ndim != 2 or len(scores) == 0:
            raise ValueError(f"scores must be (frames>0, speakers), got shape {scores.shape}")
        if self._grid is None:
            origin = grid.start if self._start is None else self._start
            self._grid = grid.at(origin)
            self._next = self._grid.first_at(origin)
        elif not self._grid.same_resolution(grid):
            raise ValueError(f"chunk grid {grid} has another step/duration than {self._grid}")
        offset = int(round((grid.start - self._grid.start) / self._grid.step))
        self._chunks.append((scores, offset))
        self._last_end = grid.start + self.duration
        if end is not None:
            self._limit = min(self._limit, end)
        stop = self._grid.first_at(self._last_end - self.latency + self.step)
        return self._emit(stop)

    def flush(self, end: float | None = None) -> tuple[np.ndarray, FrameGrid] | None:
        """End of stream: emit the remaining frames up to the newest chunk's end (or ``end`` if
        earlier, e.g. the last real sample), then reset.  None if nothing was pushed."""
        if self._grid is None:
            return None
        if end is not None:
            self._limit = min(self._limit, end)
        out = self._emit(self._grid.first_at(self._last_end))
        self.reset()
        return out

    def _emit(self, stop: int) -> tuple[np.ndarray, FrameGrid]:
        assert self._grid is not None
        first = self._next
        if np.isfinite(self._limit):
            stop = min(stop, self._grid.first_at(self._limit))
        stop = max(first, stop)
        scores = [s for s, _ in self._chunks]
        offsets = [o for _, o in self._chunks]
        region = aggregate_frames(scores, offsets, first, stop, self.strategy)
        self._next = stop
        return region, self._grid.sub(first)
