"""What the streaming pipeline emits: finished speaker turns and changes of who is speaking.

Times are stream seconds (rounded to ms), with wall-clock (Unix) times when the stream has an
origin. ``stream_seq`` counts each kind from 0 within one stream. ``edged.messages`` turns
these into the published payloads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

from edged.diarize.binarize import Activity, Turn


def speaker_label(speaker: int) -> str:
    """Global speaker id -> label, e.g. 3 -> "speaker_3"."""
    return f"speaker_{int(speaker)}"


@dataclass(frozen=True)
class TurnEvent:
    """A finished speaker turn."""

    speaker: str
    start: float
    end: float
    confidence: float
    stream_seq: int
    wall_start: float | None = None
    wall_end: float | None = None

    @property
    def duration(self) -> float:
        return self.end - self.start

    @classmethod
    def from_turn(cls, turn: Turn, stream_seq: int, wall_origin: float | None = None,
                  label: Callable[[int], str] = speaker_label) -> TurnEvent:
        """From a binarizer turn, rounded to ms (confidence to 1e-4); ``wall_origin`` is the
        Unix time of stream time 0; ``label`` names a global speaker id (enrolled names)."""
        start, end = round(turn.start, 3), round(turn.end, 3)
        return cls(
            speaker=label(turn.speaker),
            start=start,
            end=end,
            confidence=round(turn.confidence, 4),
            stream_seq=stream_seq,
            wall_start=None if wall_origin is None else round(wall_origin + start, 3),
            wall_end=None if wall_origin is None else round(wall_origin + end, 3),
        )


@dataclass(frozen=True)
class ActivityEvent:
    """Who is speaking from stream time ``time`` on (labels sorted by speaker id)."""

    time: float
    speakers: tuple[str, ...]
    stream_seq: int
    wall_time: float | None = None

    @classmethod
    def from_activity(cls, activity: Activity, stream_seq: int, wall_origin: float | None = None,
                      label: Callable[[int], str] = speaker_label) -> ActivityEvent:
        """From a binarizer activity change, time rounded to ms."""
        time = round(activity.time, 3)
        return cls(
            time=time,
            speakers=tuple(label(s) for s in sorted(activity.speakers)),
            stream_seq=stream_seq,
            wall_time=None if wall_origin is None else round(wall_origin + time, 3),
        )


Event = Union[TurnEvent, ActivityEvent]
