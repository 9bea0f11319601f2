"""Scoring: pyannote.metrics DER/JER with components, summed totals, options, and bad references."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from edged.errors import AudioError, EdgedError
from edged_host.inputs import load_dataset
from edged_host.scoring import (
    ErrorRates,
    ScoreOptions,
    ScoringError,
    annotation_from_turns,
    load_rttm,
    load_uem,
    score_file,
    score_set,
)


def wav(path, seconds, rate=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.zeros(int(seconds * rate), np.float32), rate, subtype="PCM_16")
    return path


def rttm(path, lines):
    path.write_text("".join(f"SPEAKER {u} 1 {s:.3f} {d:.3f} <NA> <NA> {label} <NA> <NA>\n" for u, s, d, label in lines),
                    encoding="utf-8")
    return path


def test_known_error_parts(tmp_path):
    wav(tmp_path / "a" / "rec.wav", 25)
    ref = rttm(tmp_path / "ref.rttm", [("rec", 0, 10, "A"), ("rec", 10, 10, "B")])
    data = load_dataset([tmp_path / "a"], [ref])
    item = data.items["rec"]
    assert item.uem_source == "audio" and item.uem.extent().end == pytest.approx(25)
    # X covers A's 0-8 s, Y covers 8-22 s: 2 s confused (8-10), 2 s false alarm (20-22), no miss
    r = score_file(item, annotation_from_turns("rec", [("X", 0, 8), ("Y", 8, 22)]))
    assert (r.der, r.miss, r.false_alarm, r.confusion) == pytest.approx((20.0, 0.0, 10.0, 10.0))
    assert r.speech_s == pytest.approx(20)
    # JER: A -> X: |union 10| error 2 -> 0.2; B -> Y: |union 14| error 4 -> 4/14
    assert r.jer == pytest.approx(100 * (0.2 + 4 / 14) / 2)


def test_totals_come_from_summed_components(tmp_path):
    wav(tmp_path / "d" / "short.wav", 12)
    wav(tmp_path / "d" / "long.wav", 100)
    ref = rttm(tmp_path / "ref.rttm", [("short", 0, 10, "A"), ("long", 0, 90, "B")])
    data = load_dataset([tmp_path / "d"], [ref])
    hyps = {"short": annotation_from_turns("short", [("X", 0, 5)]),  # 5 s missed of 10: 50%
            "long": annotation_from_turns("long", [("Y", 0, 90)])}  # perfect
    total, per_file = score_set(data.items, hyps)
    assert per_file["short"].der == pytest.approx(50.0) and per_file["long"].der == pytest.approx(0.0)
    assert total.der == pytest.approx(5.0)  # 5 s / 100 s, not the mean 25%
    assert total.miss == pytest.approx(5.0) and total.speech_s == pytest.approx(100)
    assert ErrorRates.total(per_file.values()).der == pytest.approx(total.der)


def test_ami_reference_with_non_ascii_label_and_uem(data_dir):
    root = data_dir / "ami-debug"
    data = load_dataset([root / "trn00.wav", root / "dev00.wav"], [root / "reference.rttm"], [root / "reference.uem"])
    assert "MÉO069" in data.items["trn00"].reference.labels()
    assert all(i.uem_source == "file" for i in data.items.values())
    hyps = {u: i.reference.rename_labels(generator="int") for u, i in data.items.items()}  # perfect, relabelled
    total, _ = score_set(data.items, hyps)
    assert total.der == pytest.approx(0.0) and total.jer == pytest.approx(0.0)


def test_options_match_pyannote(data_dir):
    from pyannote.metrics.diarization import DiarizationErrorRate

    root = data_dir / "sample"
    data = load_dataset([root / "sample.wav"], [root / "sample.rttm"])
    item = data.items["sample"]
    hyp = annotation_from_turns("sample", [("s0", 6.5, 8.5), ("s1", 8.5, 14.0), ("s0", 14.0, 18.5), ("s1", 18.5, 30.0)])
    for collar, skip in ((0.0, False), (0.5, False), (0.0, True), (0.25, True)):
        ours = score_file(item, hyp, ScoreOptions(collar, skip))
        theirs = DiarizationErrorRate(collar=collar, skip_overlap=skip)(item.reference, hyp, uem=item.uem)
        assert ours.der == pytest.approx(100 * theirs)
    assert score_file(item, hyp, ScoreOptions(0.5)).speech_s < score_file(item, hyp).speech_s
    with pytest.raises(ScoringError, match="collar"):
        ScoreOptions(collar=-1)


def test_uem_limits_the_scored_region(tmp_path):
    wav(tmp_path / "d" / "rec.wav", 30)
    ref = rttm(tmp_path / "ref.rttm", [("rec", 0, 10, "A")])
    (tmp_path / "rec.uem").write_text("rec NA 0.000 15.000\n")
    data = load_dataset([tmp_path / "d"], [ref], [tmp_path / "rec.uem"])
    hyp = annotation_from_turns("rec", [("X", 0, 10), ("X", 20, 30)])  # false alarm only outside the UEM
    assert score_file(data.items["rec"], hyp).der == pytest.approx(0.0)


def test_input_without_reference_names_the_unknown_uris(tmp_path):
    wav(tmp_path / "d" / "sample.wav", 10)
    ref = rttm(tmp_path / "ref.rttm", [("sampel", 1, 2, "A")])  # a typo in the uri
    with pytest.raises(ScoringError, match=r"no reference for 'sample'.*matching no input: sampel"):
        load_dataset([tmp_path / "d"], [ref])


def test_reference_uris_without_input_are_ignored(data_dir):
    root = data_dir / "ami-debug"  # the reference covers 12 recordings, one is benchmarked
    data = load_dataset([root / "dev01.wav"], [root / "reference.rttm"], [root / "reference.uem"])
    assert list(data.items) == ["dev01"]


def test_uem_listed_recording_without_turns_has_an_empty_reference(tmp_path):
    wav(tmp_path / "d" / "quiet.wav", 10)
    wav(tmp_path / "d" / "talk.wav", 10)
    ref = rttm(tmp_path / "ref.rttm", [("talk", 0, 5, "A")])
    (tmp_path / "all.uem").write_text("quiet NA 0 10\ntalk NA 0 10\n")
    data = load_dataset([tmp_path / "d"], [ref], [tmp_path / "all.uem"])
    assert len(data.items["quiet"].reference) == 0
    hyps = {"quiet": annotation_from_turns("quiet", [("X", 0, 1)]), "talk": annotation_from_turns("talk", [("X", 0, 5)])}
    total, per_file = score_set(data.items, hyps)
    assert per_file["quiet"].der is None  # no reference speech: the rate is undefined, not 0
    assert total.der == pytest.approx(20.0)  # its 1 s false alarm still counts in the total


def test_recording_missing_from_uem_is_scored_on_its_whole_audio(tmp_path):
    wav(tmp_path / "d" / "a.wav", 10)
    wav(tmp_path / "d" / "b.wav", 10)
    ref = rttm(tmp_path / "ref.rttm", [("a", 0, 5, "A"), ("b", 0, 5, "B")])
    (tmp_path / "a.uem").write_text("a NA 0 8\n")
    data = load_dataset([tmp_path / "d"], [ref], [tmp_path / "a.uem"])
    assert data.items["a"].uem_source == "file" and data.items["b"].uem_source == "audio"


def test_uem_beyond_the_audio_is_refused(tmp_path):
    wav(tmp_path / "d" / "rec.wav", 30)
    ref = rttm(tmp_path / "ref.rttm", [("rec", 0, 10, "A")])
    (tmp_path / "bad.uem").write_text("rec NA 0.000 60.000\n")
    with pytest.raises(ScoringError, match=r"UEM of 'rec'.*covers 0.0-60.0 s but the audio lasts 30.0 s"):
        load_dataset([tmp_path / "d"], [ref], [tmp_path / "bad.uem"])
    (tmp_path / "bad.uem").write_text("rec NA 40 50\n")
    with pytest.raises(ScoringError, match="covers 40.0-50.0 s"):
        load_dataset([tmp_path / "d"], [ref], [tmp_path / "bad.uem"])


def test_reference_longer_than_the_audio_is_refused(tmp_path):
    wav(tmp_path / "d" / "rec.wav", 10)
    ref = rttm(tmp_path / "ref.rttm", [("rec", 0, 5, "A"), ("rec", 20, 5, "B")])
    with pytest.raises(ScoringError, match=r"speech until 25.0 s but the audio lasts 10.0 s"):
        load_dataset([tmp_path / "d"], [ref])


@pytest.mark.parametrize("line, message", [
    ("SPEAKER rec 1 0.0 1.0\n", r"ref.rttm:1: RTTM SPEAKER line has 5 fields"),
    ("SPEAKER rec 1 x 1.0 <NA> <NA> A <NA> <NA>\n", r"ref.rttm:1: start 'x'"),
    ("SPEAKER rec 1 0.0 -1 <NA> <NA> A <NA> <NA>\n", r"duration '-1'"),
    ("SPEAKER rec 1 nan 1 <NA> <NA> A <NA> <NA>\n", r"start 'nan'"),
])
def test_malformed_rttm_lines(tmp_path, line, message):
    (tmp_path / "ref.rttm").write_text(line)
    with pytest.raises(ScoringError, match=message):
        load_rttm([tmp_path / "ref.rttm"])


def test_rttm_must_be_utf8_and_other_line_types_are_skipped(tmp_path):
    path = tmp_path / "ref.rttm"
    path.write_bytes("SPEAKER rec 1 0.0 1.0 <NA> <NA> MÉO069 <NA> <NA>\n".encode("latin-1"))
    with pytest.raises(ScoringError, match="not UTF-8.*re-save it as UTF-8"):
        load_rttm([path])
    path.write_text(";; comment\nSPKR-INFO rec 1 <NA> <NA> <NA> unknown A <NA>\n"
                    "SPEAKER rec 1 0.0 1.0 <NA> <NA> MÉO069 <NA> <NA>\n", encoding="utf-8")
    assert load_rttm([path]).annotations["rec"].labels() == ["MÉO069"]


def test_same_uri_in_two_references_is_refused(tmp_path):
    a = rttm(tmp_path / "a.rttm", [("rec", 0, 1, "A")])
    b = rttm(tmp_path / "b.rttm", [("rec", 2, 1, "A")])
    with pytest.raises(ScoringError, match="'rec' is in both"):
        load_rttm([a, b])


def test_empty_folders_and_missing_paths(tmp_path):
    (tmp_path / "empty").mkdir()
    wav(tmp_path / "d" / "rec.wav", 5)
    ref = rttm(tmp_path / "ref.rttm", [("rec", 0, 1, "A")])
    with pytest.raises(AudioError, match=r"empty: no audio files \(.wav, .flac, .ogg\) in this folder"):
        load_dataset([tmp_path / "empty"], [ref])
    with pytest.raises(ScoringError, match=r"empty: no .rttm files in this folder"):
        load_dataset([tmp_path / "d"], [tmp_path / "empty"])
    with pytest.raises(ScoringError, match=r"empty: no .uem files"):
        load_uem([tmp_path / "empty"])
    with pytest.raises(AudioError, match="nowhere.wav: audio file or folder not found"):
        load_dataset([tmp_path / "nowhere.wav"], [ref])
    with pytest.raises(ScoringError, match="nothing.rttm: reference RTTM not found"):
        load_dataset([tmp_path / "d"], [tmp_path / "nothing.rttm"])
    (tmp_path / "blank.rttm").write_text("")
    with pytest.raises(ScoringError, match="no SPEAKER lines"):
        load_dataset([tmp_path / "d"], [tmp_path / "blank.rttm"])
    (tmp_path / "bad.uem").write_text("rec NA 5 2\n")
    with pytest.raises(ScoringError, match=r"bad.uem:1: UEM region ends \(2.0\) before it starts"):
        load_uem([tmp_path / "bad.uem"])


def test_duplicate_uris_and_undecodable_audio(tmp_path):
    wav(tmp_path / "x" / "rec.wav", 5)
    wav(tmp_path / "y" / "rec.wav", 5)
    ref = rttm(tmp_path / "ref.rttm", [("rec", 0, 1, "A")])
    with pytest.raises(AudioError, match="two inputs have the uri 'rec'"):
        load_dataset([tmp_path / "x", tmp_path / "y"], [ref])
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "rec.wav").write_bytes(b"not audio")
    with pytest.raises(AudioError, match="rec.wav: cannot decode audio"):
        load_dataset([tmp_path / "z"], [ref])


def test_errors_are_one_line(tmp_path):
    wav(tmp_path / "d" / "rec.wav", 5)
    ref = rttm(tmp_path / "ref.rttm", [("other", 0, 1, "A")])
    with pytest.raises(EdgedError) as info:
        load_dataset([tmp_path / "d"], [ref])
    assert "\n" not in str(info.value)
