"""The one message schema: pipeline events -> MQTT payloads = events.jsonl records, and RTTM."""

import json

import pytest

from edged.diarize.binarize import Activity, Turn
from edged.diarize.events import ActivityEvent, TurnEvent, speaker_label
from edged.messages import ActivityMessage, TurnMessage, format_rttm, iso, stats_payload


def test_turn_event_from_turn_rounds_and_adds_wall_clock():
    e = TurnEvent.from_turn(Turn(3, 1.23456, 4.56789, 0.876543), stream_seq=7, wall_origin=1_700_000_000.0)
    assert e == TurnEvent("speaker_3", 1.235, 4.568, 0.8765, 7, 1_700_000_001.235, 1_700_000_004.568)
    assert TurnEvent.from_turn(Turn(0, 0.0, 0.5, 0.9), 0).wall_start is None


def test_turn_payload_is_the_published_schema_and_round_trips():
    e = TurnEvent.from_turn(Turn(3, 1.23456, 4.56789, 0.876543), stream_seq=7, wall_origin=1_700_000_000.0)
    m = TurnMessage.from_event(e, "kitchen", seq=1042)
    d = m.payload()
    assert list(d) == ["seq", "type", "speaker", "start", "end", "duration", "confidence", "wall_start", "wall_end",
                       "stream_seq", "device_id", "wall_start_iso", "wall_end_iso"]
    assert d["type"] == "turn" and d["duration"] == pytest.approx(3.333) and d["seq"] == 1042
    assert d["wall_start_iso"] == "2023-11-14T22:13:21.235+00:00"
    assert TurnMessage.from_payload(json.loads(json.dumps(d))) == m


def test_turn_payload_before_the_spool_assigns_seq_and_without_wall_clock():
    m = TurnMessage.from_event(TurnEvent("speaker_0", 0.0, 0.5, 0.9, 0), "file")
    d = m.payload()
    assert d == {"seq": None, "type": "turn", "speaker": "speaker_0", "start": 0.0, "end": 0.5, "duration": 0.5,
                 "confidence": 0.9, "stream_seq": 0, "device_id": "file", "wall_start_iso": None,
                 "wall_end_iso": None}
    assert TurnMessage.from_payload(d) == m


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(start="1"), "start"),
        (dict(seq=1.5), "seq"),
        (dict(stream_seq=True), "stream_seq"),
        (dict(speaker=3), "speaker"),
        (dict(duration=9.0), "duration"),
        (dict(confidence=float("nan")), "confidence"),
        (dict(color="red"), "unknown"),
        (dict(type="activity"), "type"),
    ],
)
def test_turn_payload_parser_rejects_bad_payloads(change, match):
    d = TurnMessage("speaker_1", 1.0, 2.0, 0.5, 3, "dev", seq=4).payload()
    d.update(change)
    with pytest.raises(ValueError, match=match):
        TurnMessage.from_payload(d)


def test_turn_payload_missing_field():
    d = TurnMessage("speaker_1", 1.0, 2.0, 0.5, 3, "dev").payload()
    del d["end"]
    with pytest.raises(ValueError, match="missing end"):
        TurnMessage.from_payload(d)


def test_activity_payload_round_trip():
    e = ActivityEvent.from_activity(Activity(12.34567, frozenset({10, 2})), stream_seq=4, wall_origin=100.0)
    assert e == ActivityEvent(12.346, ("speaker_2", "speaker_10"), 4, 112.346)
    d = ActivityMessage.from_event(e, "kitchen").payload()
    assert d == {"type": "activity", "device_id": "kitchen", "speakers": ["speaker_2", "speaker_10"], "count": 2,
                 "time": 12.346, "wall_time": 112.346, "wall_time_iso": iso(112.346), "stream_seq": 4}
    assert ActivityMessage.from_payload(json.loads(json.dumps(d))) == ActivityMessage.from_event(e, "kitchen")
    silent = ActivityMessage.from_event(ActivityEvent.from_activity(Activity(1.0, frozenset()), 5), "k").payload()
    assert silent["speakers"] == [] and silent["count"] == 0 and silent["wall_time"] is None


@pytest.mark.parametrize(
    "change, match",
    [(dict(speakers="speaker_1"), "speakers"), (dict(time=None), "time"), (dict(extra=1), "unknown"),
     (dict(count=3), "count")],
)
def test_activity_payload_parser_rejects_bad_payloads(change, match):
    d = ActivityMessage(("speaker_1",), 1.0, 0, "dev").payload()
    d.update(change)
    with pytest.raises(ValueError, match=match):
        ActivityMessage.from_payload(d)


def test_stats_payload_leads_with_type_device_and_time():
    d = stats_payload("kitchen", 0.0, {"steps": 3})
    assert list(d) == ["type", "device_id", "time_iso", "steps"]
    assert d["type"] == "stats" and d["time_iso"] == "1970-01-01T00:00:00.000+00:00"


def test_format_rttm_from_turns_events_and_messages():
    turns = [Turn(0, 0.5, 2.25, 0.9), Turn(12, 3.0, 3.5, 0.7)]
    text = format_rttm("meeting_1", turns)
    assert text == (
        "SPEAKER meeting_1 1 0.500 1.750 <NA> <NA> speaker_0 <NA> <NA>\n"
        "SPEAKER meeting_1 1 3.000 0.500 <NA> <NA> speaker_12 <NA> <NA>\n"
    )
    events = [TurnEvent.from_turn(t, i) for i, t in enumerate(turns)]
    assert format_rttm("meeting_1", events) == text
    assert format_rttm("meeting_1", [TurnMessage.from_event(e, "d") for e in events]) == text
    assert format_rttm("x", []) == ""


def test_format_rttm_rejects_whitespace():
    with pytest.raises(ValueError, match="uri"):
        format_rttm("my meeting", [])
    with pytest.raises(ValueError, match="label"):
        format_rttm("m", [TurnEvent("alice smith", 0.0, 1.0, 1.0, 0)])


def test_speaker_label():
    assert speaker_label(0) == "speaker_0" and speaker_label(19) == "speaker_19"
