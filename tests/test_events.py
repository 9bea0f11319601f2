import json

import pytest

from edged.diarize.binarize import Activity, Turn
from edged.messages import ActivityEvent, TurnEvent, format_rttm, speaker_label


def test_turn_event_from_turn_and_round_trip():
    e = TurnEvent.from_turn(Turn(3, 1.23456, 4.56789, 0.876543), seq=7, wall_origin=1_700_000_000.0)
    assert e == TurnEvent("speaker_3", 1.235, 4.568, 0.8765, 7, 1_700_000_001.235, 1_700_000_004.568)
    d = e.to_dict()
    assert d["type"] == "turn" and d["duration"] == pytest.approx(3.333)
    assert TurnEvent.from_dict(json.loads(json.dumps(d))) == e


def test_turn_event_without_wall_clock():
    e = TurnEvent.from_turn(Turn(0, 0.0, 0.5, 0.9), seq=0)
    d = e.to_dict()
    assert "wall_start" not in d and "wall_end" not in d
    assert d == {"type": "turn", "speaker": "speaker_0", "start": 0.0, "end": 0.5,
                 "duration": 0.5, "confidence": 0.9, "seq": 0}
    assert TurnEvent.from_dict(d) == e
    assert TurnEvent.from_dict({k: v for k, v in d.items() if k not in ("type", "duration")}) == e


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(start="1"), "start"),
        (dict(seq=1.5), "seq"),
        (dict(seq=True), "seq"),
        (dict(speaker=3), "speaker"),
        (dict(duration=9.0), "duration"),
        (dict(confidence=float("nan")), "confidence"),
        (dict(color="red"), "unknown"),
        (dict(type="activity"), "type"),
    ],
)
def test_turn_event_from_dict_rejects_bad_payloads(change, match):
    d = TurnEvent("speaker_1", 1.0, 2.0, 0.5, 3).to_dict()
    d.update(change)
    with pytest.raises(ValueError, match=match):
        TurnEvent.from_dict(d)


def test_turn_event_missing_field():
    d = TurnEvent("speaker_1", 1.0, 2.0, 0.5, 3).to_dict()
    del d["end"]
    with pytest.raises(ValueError, match="missing end"):
        TurnEvent.from_dict(d)


def test_activity_event_round_trip():
    e = ActivityEvent.from_activity(Activity(12.34567, frozenset({10, 2})), seq=4)
    assert e == ActivityEvent(12.346, ("speaker_2", "speaker_10"), 4)
    d = e.to_dict()
    assert d == {"type": "activity", "time": 12.346, "speakers": ["speaker_2", "speaker_10"], "seq": 4}
    assert ActivityEvent.from_dict(json.loads(json.dumps(d))) == e
    assert ActivityEvent.from_activity(Activity(1.0, frozenset()), 5).to_dict()["speakers"] == []


@pytest.mark.parametrize(
    "change, match",
    [(dict(speakers="speaker_1"), "speakers"), (dict(time=None), "time"), (dict(extra=1), "unknown")],
)
def test_activity_event_rejects_bad_payloads(change, match):
    d = ActivityEvent(1.0, ("speaker_1",), 0).to_dict()
    d.update(change)
    with pytest.raises(ValueError, match=match):
        ActivityEvent.from_dict(d)


def test_format_rttm():
    turns = [Turn(0, 0.5, 2.25, 0.9), Turn(12, 3.0, 3.5, 0.7)]
    text = format_rttm("meeting_1", turns)
    assert text == (
        "SPEAKER meeting_1 1 0.500 1.750 <NA> <NA> speaker_0 <NA> <NA>\n"
        "SPEAKER meeting_1 1 3.000 0.500 <NA> <NA> speaker_12 <NA> <NA>\n"
    )
    events = [TurnEvent.from_turn(t, i) for i, t in enumerate(turns)]
    assert format_rttm("meeting_1", events) == text
    assert format_rttm("x", []) == ""
    fields = text.splitlines()[0].split()
    assert len(fields) == 10 and fields[0] == "SPEAKER"


def test_format_rttm_rejects_whitespace():
    with pytest.raises(ValueError, match="uri"):
        format_rttm("my meeting", [])
    with pytest.raises(ValueError, match="label"):
        format_rttm("m", [TurnEvent("alice smith", 0.0, 1.0, 1.0, 0)])


def test_speaker_label():
    assert speaker_label(0) == "speaker_0" and speaker_label(19) == "speaker_19"
