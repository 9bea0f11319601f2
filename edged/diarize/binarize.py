"""Streaming hysteresis binarization of aggregated speaker scores into turns.

Same rules as pyannote's ``Binarize``: a speaker switches on when its score goes above
``onset`` and off when it goes below ``offset``; gaps shorter than ``min_duration_off`` are
filled, then turns shorter than ``min_duration_on`` are dropped.  Frame ``i`` of a region owns
``[centre - step/2, centre + step/2)``, so turn boundaries fall between frames.  A turn is
emitted as soon as it can no longer change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edged.dsp.frames import FrameGrid


@dataclass(frozen=True)
class Turn:
    """A closed speaker turn in stream seconds; ``confidence`` is the mean score over it."""

    speaker: int
    start: float
    end: float
    confidence: float

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Activity:
    """At stream time ``time`` (end of a region), exactly ``speakers`` are speaking.

    Only confirmed turns count: a speaker appears once its turn has lasted ``min_duration_on``
    and disappears once its turn is closed (gap of ``min_duration_off``).
    """

    time: float
    speakers: frozenset[int]


@dataclass(frozen=True)
class BinarizerOutput:
    """What one ``push``/``flush`` produced, in detection order."""

    turns: list[Turn] = field(default_factory=list)
    activity: list[Activity] = field(default_factory=list)


@dataclass
class _Track:
    """Per-speaker state: O(1) whatever the stream length."""

    on: bool = False  # hysteresis state
    open: bool = False  # a turn is open (speaking, or in a gap that may still be filled)
    start: float = 0.0  # start of the open turn
    end: float = 0.0  # end of the last active frame of the open turn
    total: float = 0.0  # sum of scores over [start, end)
    count: int = 0  # frames over [start, end)
    gap_total: float = 0.0  # scores since ``end`` (added if the gap gets filled)
    gap_count: int = 0


class Binarizer:
    """Consumes consecutive ``(frames, speakers)`` score regions, emits turns and activity.

    Turns come out when final.  Activity is a snapshot taken at the end of each region, emitted
    when the set of confirmed speakers changed since the previous snapshot.  State is a few
    numbers per speaker.
    """

    def __init__(
        self,
        onset: float = 0.5,
        offset: float = 0.5,
        min_duration_on: float = 0.0,
        min_duration_off: float = 0.0,
    ) -> None:
        if min_duration_on < 0 or min_duration_off < 0:
            raise ValueError(
                f"min_duration_on/off must be >= 0, got {min_duration_on}/{min_duration_off}"
            )
        self.onset = float(onset)
        self.offset = float(offset)
        self.min_duration_on = float(min_duration_on)
        self.min_duration_off = float(min_duration_off)
        self.reset()

    def reset(self) -> None:
        """Forget all state (open turns are discarded)."""
        self._tracks: list[_Track] = []
        self._origin: FrameGrid | None = None  # grid of the first region; times come from it
        self._done = 0  # frames consumed since the first region
        self._speaking: frozenset[int] = frozenset()

    @property
    def speaking(self) -> frozenset[int]:
        """Speakers currently speaking (confirmed)."""
        return self._speaking

    def push(self, scores: np.ndarray, grid: FrameGrid) -> BinarizerOutput:
        """Process the next region; ``grid`` frame 0 must follow the previous region's last frame."""
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 2:
            raise ValueError(f"scores must be (frames, speakers), got shape {scores.shape}")
        self._check_grid(scores.shape, grid)
        out = BinarizerOutput()
        assert self._origin is not None
        half = 0.5 * self._origin.step
        centres = self._origin.center(self._done + np.arange(len(scores)))
        for s in range(scores.shape[1]):
            track, y = self._tracks[s], scores[:, s]
            # Nothing can happen to a silent speaker with no open turn: skip the frame loop.
            if not track.open and not (y > self.onset).any():
                continue
            for t, v in zip(centres, y):
                self._step(s, track, float(t - half), self._origin.step, float(v), out)
        self._done += len(scores)
        self._update_activity(float(centres[-1] + half) if len(scores) else None, out)
        out.turns.sort(key=lambda turn: (turn.end, turn.speaker))
        return out

    def flush(self) -> BinarizerOutput:
        """End of stream: close every open turn at the end of the last frame, then reset."""
        out = BinarizerOutput()
        if self._origin is not None:
            now = self._origin.center(self._done) - 0.5 * self._origin.step
            for s, track in enumerate(self._tracks):
                if track.on:
                    track.end = now
                    track.on = False
                if track.open:
                    self._close(s, track, out)
            self._update_activity(now, out)
        out.turns.sort(key=lambda turn: (turn.end, turn.speaker))
        self.reset()
        return out

    def _check_grid(self, shape: tuple[int, ...], grid: FrameGrid) -> None:
        if not self._tracks:
            self._tracks = [_Track() for _ in range(shape[1])]
        elif shape[1] != len(self._tracks):
            raise ValueError(f"got {shape[1]} speakers, expected {len(self._tracks)} as before")
        if self._origin is None:
            self._origin = grid
            return
        expected = self._origin.sub(self._done)
        if not expected.same_resolution(grid) or abs(grid.start - expected.start) > 0.5 * grid.step:
            raise ValueError(
                f"region grid {grid} does not continue the previous region (expected start "
                f"{expected.start:.6f}, step {expected.step}); regions must be consecutive"
            )

    def _step(
        self, s: int, track: _Track, t0: float, step: float, y: float, out: BinarizerOutput
    ) -> None:
        """Advance speaker ``s`` by one frame owning ``[t0, t0 + step)`` with score ``y``."""
        if track.on:
            if y < self.offset:
                track.on = False
                track.gap_total, track.gap_count = y, 1
            else:
                track.end = t0 + step
                track.total += y
                track.count += 1
                return
        elif y > self.onset:
            track.on = True
            if track.open and t0 - track.end < self.min_duration_off:
                track.total += track.gap_total  # fill the short gap
                track.count += track.gap_count
            else:
                if track.open:
                    self._close(s, track, out)
                track.open, track.start = True, t0
                track.total, track.count = 0.0, 0
            track.end = t0 + step
            track.total += y
            track.count += 1
            return
        elif track.open:
            track.gap_total += y
            track.gap_count += 1
        # Inactive after this frame: the next onset starts at t0 + step at the earliest.
        if track.open and t0 + step - track.end >= self.min_duration_off:
            self._close(s, track, out)

    def _close(self, s: int, track: _Track, out: BinarizerOutput) -> None:
        track.open = False
        if track.end - track.start >= self.min_duration_on and track.count:
            out.turns.append(Turn(s, track.start, track.end, track.total / track.count))

    def _update_activity(self, now: float | None, out: BinarizerOutput) -> None:
        if now is None:
            return
        speaking = frozenset(
            s
            for s, tr in enumerate(self._tracks)
            if tr.open and (tr.end if not tr.on else now) - tr.start >= self.min_duration_on
        )
        if speaking != self._speaking:
            self._speaking = speaking
            out.activity.append(Activity(now, speaking))
