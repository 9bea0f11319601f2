"""The one message schema: turns, activity and stats as published on MQTT.

The same objects are written as MQTT JSON payloads, as the records of an ``events.jsonl`` log
(a record is the payload: its ``type`` says which), and turns as RTTM lines. ``seq`` is the
durable turn number the spool assigns (``edged diarize`` has no spool: there it equals
``stream_seq``); ``stream_seq`` counts within one audio stream.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from edged.diarize.events import ActivityEvent, TurnEvent, speaker_label

TURN = "turn"
ACTIVITY = "activity"
STATS = "stats"


def iso(epoch: float | None) -> str | None:
    """Unix seconds -> ISO 8601 UTC with milliseconds."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="milliseconds")


def _number(data: Mapping[str, Any], key: str, kind: str) -> float:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{kind} field {key!r} must be a finite number, got {value!r}")
    return float(value)


def _optional_number(data: Mapping[str, Any], key: str, kind: str) -> float | None:
    return None if data.get(key) is None else _number(data, key, kind)


def _integer(data: Mapping[str, Any], key: str, kind: str) -> int:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{kind} field {key!r} must be an integer, got {value!r}")
    return value


def _check_keys(data: Mapping[str, Any], kind: str, required: set[str], optional: set[str]) -> None:
    if data.get("type", kind) != kind:
        raise ValueError(f"expected a {kind!r} message, got type {data.get('type')!r}")
    missing = required - data.keys()
    if missing:
        raise ValueError(f"{kind} message is missing {', '.join(sorted(missing))}")
    unknown = data.keys() - required - optional - {"type"}
    if unknown:
        raise ValueError(f"{kind} message has unknown field(s) {', '.join(sorted(unknown))}")


@dataclass(frozen=True)
class TurnMessage:
    """A finished speaker turn, as published on ``<prefix>/turn``."""

    speaker: str
    start: float
    end: float
    confidence: float
    stream_seq: int
    device_id: str
    seq: int | None = None
    wall_start: float | None = None
    wall_end: float | None = None

    @property
    def duration(self) -> float:
        return self.end - self.start

    @classmethod
    def from_event(cls, event: TurnEvent, device_id: str, seq: int | None = None) -> TurnMessage:
        return cls(speaker=event.speaker, start=event.start, end=event.end, confidence=event.confidence,
                   stream_seq=event.stream_seq, device_id=device_id, seq=seq,
                   wall_start=event.wall_start, wall_end=event.wall_end)

    def payload(self) -> dict[str, Any]:
        """The JSON object (``seq`` first, null until the spool assigns it, and in the event log of
        a turn the spool could not write; wall-clock times only when known)."""
        d: dict[str, Any] = {"seq": self.seq}
        d.update(type=TURN, speaker=self.speaker, start=self.start, end=self.end,
                 duration=round(self.duration, 6), confidence=self.confidence)
        if self.wall_start is not None:
            d["wall_start"] = self.wall_start
        if self.wall_end is not None:
            d["wall_end"] = self.wall_end
        d.update(stream_seq=self.stream_seq, device_id=self.device_id,
                 wall_start_iso=iso(self.wall_start), wall_end_iso=iso(self.wall_end))
        return d

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> TurnMessage:
        """Parse and check a payload (``duration`` and the ISO times are derived, and checked)."""
        _check_keys(data, TURN, {"speaker", "start", "end", "confidence", "stream_seq", "device_id"},
                    {"seq", "duration", "wall_start", "wall_end", "wall_start_iso", "wall_end_iso"})
        for key in ("speaker", "device_id"):
            if not isinstance(data[key], str):
                raise ValueError(f"turn field {key!r} must be a string, got {data[key]!r}")
        message = cls(
            speaker=data["speaker"], start=_number(data, "start", TURN), end=_number(data, "end", TURN),
            confidence=_number(data, "confidence", TURN), stream_seq=_integer(data, "stream_seq", TURN),
            device_id=data["device_id"], seq=None if data.get("seq") is None else _integer(data, "seq", TURN),
            wall_start=_optional_number(data, "wall_start", TURN), wall_end=_optional_number(data, "wall_end", TURN),
        )
        if "duration" in data and abs(_number(data, "duration", TURN) - message.duration) > 1e-3:
            raise ValueError(f"turn duration {data['duration']} does not match end - start = {message.duration:.6f}")
        return message


@dataclass(frozen=True)
class ActivityMessage:
    """Who is speaking from ``time`` on, as published (retained) on ``<prefix>/active``."""

    speakers: tuple[str, ...]
    time: float
    stream_seq: int
    device_id: str
    wall_time: float | None = None

    @classmethod
    def from_event(cls, event: ActivityEvent, device_id: str) -> ActivityMessage:
        return cls(speakers=event.speakers, time=event.time, stream_seq=event.stream_seq, device_id=device_id,
                   wall_time=event.wall_time)

    def payload(self) -> dict[str, Any]:
        return {"type": ACTIVITY, "device_id": self.device_id, "speakers": list(self.speakers),
                "count": len(self.speakers), "time": self.time, "wall_time": self.wall_time,
                "wall_time_iso": iso(self.wall_time), "stream_seq": self.stream_seq}

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> ActivityMessage:
        _check_keys(data, ACTIVITY, {"speakers", "time", "stream_seq", "device_id"},
                    {"count", "wall_time", "wall_time_iso"})
        speakers = data["speakers"]
        if isinstance(speakers, str) or not isinstance(speakers, list) or not all(isinstance(s, str) for s in speakers):
            raise ValueError(f"activity field 'speakers' must be a list of labels, got {speakers!r}")
        if "count" in data and data["count"] != len(speakers):
            raise ValueError(f"activity count {data['count']!r} does not match {len(speakers)} speakers")
        return cls(speakers=tuple(speakers), time=_number(data, "time", ACTIVITY),
                   stream_seq=_integer(data, "stream_seq", ACTIVITY), device_id=str(data["device_id"]),
                   wall_time=_optional_number(data, "wall_time", ACTIVITY))


def stats_payload(device_id: str, now: float, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The ``<prefix>/stats`` object: type, device and time, then the daemon's figures (the
    publisher adds its own)."""
    return {"type": STATS, "device_id": device_id, "time_iso": iso(now), **fields}


class _TurnLike(Protocol):
    speaker: int | str
    start: float
    end: float


def rttm_line(uri: str, turn: _TurnLike) -> str:
    """One RTTM ``SPEAKER`` line, newline-terminated (integer speakers as ``speaker_<id>``)."""
    label = turn.speaker if isinstance(turn.speaker, str) else speaker_label(turn.speaker)
    if not label or any(c.isspace() for c in label):
        raise ValueError(f"RTTM speaker label must be non-empty without whitespace, got {label!r}")
    return f"SPEAKER {uri} 1 {turn.start:.3f} {turn.end - turn.start:.3f} <NA> <NA> {label} <NA> <NA>\n"


def format_rttm(uri: str, turns: Iterable[_TurnLike]) -> str:
    """RTTM lines for ``TurnEvent``, ``TurnMessage`` or a binarizer ``Turn``."""
    if not uri or any(c.isspace() for c in uri):
        raise ValueError(f"RTTM uri must be non-empty without whitespace, got {uri!r}")
    return "".join(rttm_line(uri, turn) for turn in turns)


__all__ = ["TurnMessage", "ActivityMessage", "stats_payload", "format_rttm", "rttm_line", "iso", "speaker_label"]
