"""Event payloads published by the daemon, and RTTM output for turns."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from edged.diarize.binarize import Activity, Turn


def speaker_label(speaker: int) -> str:
    """Global speaker id -> label, e.g. 3 -> "speaker_3"."""
    return f"speaker_{int(speaker)}"


def _number(data: Mapping[str, Any], key: str, kind: str) -> float:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{kind} field {key!r} must be a finite number, got {value!r}")
    return float(value)


def _optional_number(data: Mapping[str, Any], key: str, kind: str) -> float | None:
    return None if data.get(key) is None else _number(data, key, kind)


def _check_keys(data: Mapping[str, Any], kind: str, required: set[str], optional: set[str]) -> None:
    if data.get("type", kind) != kind:
        raise ValueError(f"expected a {kind!r} event, got type {data.get('type')!r}")
    missing = required - data.keys()
    if missing:
        raise ValueError(f"{kind} event is missing {', '.join(sorted(missing))}")
    unknown = data.keys() - required - optional - {"type"}
    if unknown:
        raise ValueError(f"{kind} event has unknown field(s) {', '.join(sorted(unknown))}")


@dataclass(frozen=True)
class TurnEvent:
    """A finished speaker turn; times in stream seconds, optional wall-clock (Unix seconds)."""

    speaker: str
    start: float
    end: float
    confidence: float
    seq: int
    wall_start: float | None = None
    wall_end: float | None = None

    @property
    def duration(self) -> float:
        return self.end - self.start

    @classmethod
    def from_turn(cls, turn: Turn, seq: int, wall_origin: float | None = None) -> TurnEvent:
        """Build from a binarizer turn, rounded to ms (confidence to 1e-4); ``wall_origin`` is
        the Unix time of stream time 0."""
        start, end = round(turn.start, 3), round(turn.end, 3)
        return cls(
            speaker=speaker_label(turn.speaker),
            start=start,
            end=end,
            confidence=round(turn.confidence, 4),
            seq=seq,
            wall_start=None if wall_origin is None else round(wall_origin + start, 3),
            wall_end=None if wall_origin is None else round(wall_origin + end, 3),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``duration`` included, wall-clock times only when known)."""
        d: dict[str, Any] = {
            "type": "turn",
            "speaker": self.speaker,
            "start": self.start,
            "end": self.end,
            "duration": round(self.duration, 6),
            "confidence": self.confidence,
            "seq": self.seq,
        }
        if self.wall_start is not None:
            d["wall_start"] = self.wall_start
        if self.wall_end is not None:
            d["wall_end"] = self.wall_end
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TurnEvent:
        """Inverse of ``to_dict``; ``duration`` is derived, and checked when present."""
        _check_keys(
            data, "turn", {"speaker", "start", "end", "confidence", "seq"},
            {"duration", "wall_start", "wall_end"},
        )
        if not isinstance(data["speaker"], str):
            raise ValueError(f"turn field 'speaker' must be a string, got {data['speaker']!r}")
        if isinstance(data["seq"], bool) or not isinstance(data["seq"], int):
            raise ValueError(f"turn field 'seq' must be an integer, got {data['seq']!r}")
        event = cls(
            speaker=data["speaker"],
            start=_number(data, "start", "turn"),
            end=_number(data, "end", "turn"),
            confidence=_number(data, "confidence", "turn"),
            seq=data["seq"],
            wall_start=_optional_number(data, "wall_start", "turn"),
            wall_end=_optional_number(data, "wall_end", "turn"),
        )
        if "duration" in data and abs(_number(data, "duration", "turn") - event.duration) > 1e-3:
            raise ValueError(
                f"turn duration {data['duration']} does not match end - start = {event.duration:.6f}"
            )
        return event


@dataclass(frozen=True)
class ActivityEvent:
    """Who is speaking from stream time ``time`` on (labels sorted by speaker id)."""

    time: float
    speakers: tuple[str, ...]
    seq: int

    @classmethod
    def from_activity(cls, activity: Activity, seq: int) -> ActivityEvent:
        """Build from a binarizer activity change, time rounded to ms."""
        return cls(
            time=round(activity.time, 3),
            speakers=tuple(speaker_label(s) for s in sorted(activity.speakers)),
            seq=seq,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"type": "activity", "time": self.time, "speakers": list(self.speakers), "seq": self.seq}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ActivityEvent:
        """Inverse of ``to_dict``."""
        _check_keys(data, "activity", {"time", "speakers", "seq"}, set())
        speakers = data["speakers"]
        if isinstance(speakers, str) or not all(isinstance(s, str) for s in speakers):
            raise ValueError(f"activity field 'speakers' must be a list of labels, got {speakers!r}")
        if isinstance(data["seq"], bool) or not isinstance(data["seq"], int):
            raise ValueError(f"activity field 'seq' must be an integer, got {data['seq']!r}")
        return cls(time=_number(data, "time", "activity"), speakers=tuple(speakers), seq=data["seq"])


class _TurnLike(Protocol):
    speaker: int | str
    start: float
    end: float


def format_rttm(uri: str, turns: Iterable[_TurnLike]) -> str:
    """RTTM ``SPEAKER`` lines (one per turn, newline-terminated) for ``Turn`` or ``TurnEvent``.

    Integer speakers are written as ``speaker_<id>``.
    """
    if not uri or any(c.isspace() for c in uri):
        raise ValueError(f"RTTM uri must be non-empty without whitespace, got {uri!r}")
    lines = []
    for turn in turns:
        label = turn.speaker if isinstance(turn.speaker, str) else speaker_label(turn.speaker)
        if not label or any(c.isspace() for c in label):
            raise ValueError(f"RTTM speaker label must be non-empty without whitespace, got {label!r}")
        lines.append(
            f"SPEAKER {uri} 1 {turn.start:.3f} {turn.end - turn.start:.3f} <NA> <NA> {label} <NA> <NA>\n"
        )
    return "".join(lines)
