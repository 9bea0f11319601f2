"""Conversation builder: controlled turns, pauses, overlap and levels; exact, seeded references."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from edged_host.cli_conversations import main as conversations_main
from edged_host.conversations import (
    ConversationError,
    ConversationSpec,
    build_conversation,
    build_set,
    load_sources,
    measure,
    speech_regions,
)
from edged_host.scoring import load_rttm, load_uem


@pytest.fixture(scope="module")
def sources(data_dir):
    return load_sources(data_dir / "librispeech")


def test_sources_from_manifest_and_from_speaker_folders(data_dir, tmp_path, sources):
    assert len(sources) == 10 and all(len(files) == 10 for files in sources.values())
    for speaker in ("1688", "3005"):
        shutil.copytree(data_dir / "librispeech" / speaker, tmp_path / f"spk{speaker}")
    by_folder = load_sources(tmp_path)
    assert sorted(by_folder) == ["spk1688", "spk3005"] and len(by_folder["spk1688"]) == 10


def test_turns_pauses_overlap_and_levels_are_controlled(sources):
    spec = ConversationSpec(speakers=3, duration=90, turn_min=1.5, turn_max=5, pause_min=0.2, pause_max=0.8,
                            overlap=0.15, loudness_spread_db=10, seed=7)
    conv = build_conversation(sources, spec)
    assert len(conv.audio) == 90 * 16000 and conv.audio.dtype == np.float32
    assert len({t.speaker for t in conv.turns}) == 3
    assert all(a.speaker != b.speaker for a, b in zip(conv.turns, conv.turns[1:]))
    # every turn but the last (cut by the end of the conversation) has the asked length
    assert all(1.5 - 1e-6 <= t.end - t.start <= 5 + 1e-6 for t in conv.turns[:-1])
    stats = measure(conv.segments)
    assert stats == pytest.approx({k: conv.stats[k] for k in stats})
    assert abs(stats["overlap_ratio"] - 0.15) < 0.04
    assert max(conv.levels_db.values()) - min(conv.levels_db.values()) <= 10
    # never three speakers at once
    bounds = sorted({t for _, a, b in conv.segments for t in (a, b)})
    mids = [(a + b) / 2 for a, b in zip(bounds, bounds[1:])]
    assert max(sum(s <= m < e for _, s, e in conv.segments) for m in mids) == 2
    # no overlap asked: none, and pauses between turns within bounds
    quiet = build_conversation(sources, ConversationSpec(speakers=2, duration=40, overlap=0.0, pause_min=0.3,
                                                         pause_max=0.6, seed=1))
    assert measure(quiet.segments)["overlap_s"] == 0
    gaps = [b.start - a.end for a, b in zip(quiet.turns, quiet.turns[1:])]
    assert all(0.3 - 1e-3 <= g <= 0.6 + 1e-3 for g in gaps)


def test_reference_is_exact(sources):
    spec = ConversationSpec(speakers=2, duration=60, overlap=0.1, level_dbfs=-26, loudness_spread_db=6, seed=3)
    conv = build_conversation(sources, spec)
    hop = 160
    frames = conv.audio[: len(conv.audio) // hop * hop].reshape(-1, hop).astype(np.float64)
    level = 10 * np.log10((frames ** 2).mean(axis=1) + 1e-12)
    t = (np.arange(len(level)) + 0.5) * 0.01
    speech = np.zeros(len(level), bool)
    near = np.zeros(len(level), bool)
    for _, start, end in conv.segments:
        speech |= (t >= start) & (t < end)
        near |= (t >= start - 0.03) & (t < end + 0.03)
    # outside the reference there is (near) silence; inside it there is speech at the speakers' levels
    assert level[~near].max() < -26 - 3 - 25
    assert np.mean(level[speech] > -26 - 3 - 30) > 0.85


def test_seeded_and_written_with_references(data_dir, tmp_path):
    spec = ConversationSpec(speakers=2, duration=20, seed=5)
    a = build_set(data_dir / "librispeech", tmp_path / "a", spec, count=2)
    build_set(data_dir / "librispeech", tmp_path / "b", spec, count=2)
    build_set(data_dir / "librispeech", tmp_path / "c", ConversationSpec(speakers=2, duration=20, seed=6), count=1)
    for name in ("conv000.wav", "conv000.rttm", "conv001.wav", "reference.rttm", "reference.uem"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "conv000.wav").read_bytes() != (tmp_path / "c" / "conv000.wav").read_bytes()
    # seed 6 is conversation 1 of the seed-5 set
    assert (tmp_path / "a" / "conv001.wav").read_bytes() == (tmp_path / "c" / "conv000.wav").read_bytes()
    info = sf.info(str(tmp_path / "a" / "conv000.wav"))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", 20 * 16000)
    refs = load_rttm([tmp_path / "a" / "reference.rttm"]).annotations
    uems = load_uem([tmp_path / "a" / "reference.uem"]).timelines
    assert sorted(refs) == sorted(uems) == ["conv000", "conv001"]
    first = a["conversations"][0]
    assert refs["conv000"].get_timeline().support().duration() == pytest.approx(first["speech_s"], abs=0.01)
    assert json.loads((tmp_path / "a" / "conversations.json").read_text())["spec"]["seed"] == 5


def test_cli(data_dir, tmp_path, capsys):
    rc = conversations_main([str(data_dir / "librispeech"), "--output", str(tmp_path / "out"), "--count", "2",
                             "--speakers", "3", "--duration", "15", "--turn", "1,3", "--overlap", "0.2", "--seed", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "conv001.wav: 15 s, 3 speakers" in out and "overlap" in out
    assert (tmp_path / "out" / "reference.uem").read_text().splitlines() == ["conv000 NA 0.000 15.000",
                                                                             "conv001 NA 0.000 15.000"]


def test_bad_input(data_dir, tmp_path, sources, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversationError, match="no speakers found"):
        load_sources(tmp_path / "empty")
    with pytest.raises(ConversationError, match="source folder not found"):
        load_sources(tmp_path / "missing")
    with pytest.raises(ConversationError, match="11 speakers asked but the sources have 10"):
        build_conversation(sources, ConversationSpec(speakers=11))
    with pytest.raises(ConversationError, match="turn_min=5 is above turn_max=2"):
        ConversationSpec(turn_min=5, turn_max=2)
    with pytest.raises(ConversationError, match="overlap=0.9 is out of range"):
        ConversationSpec(overlap=0.9)
    with pytest.raises(ConversationError, match="overlap needs at least 2 speakers"):
        ConversationSpec(speakers=1, overlap=0.1)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.tsv").write_text("path\tspeaker\nnope.flac\tA\n")
    with pytest.raises(ConversationError, match=r"manifest.tsv:2: .*nope.flac not found"):
        load_sources(tmp_path / "m")
    assert conversations_main([str(tmp_path / "empty"), "--output", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("edged-conversations: error:") and err.count("\n") == 1


def test_effects_keep_the_reference_and_give_the_asked_conditions(sources, data_dir):
    from edged_host.conversations import Effects, apply_effects, load_effect_files, telephone_band

    spec = ConversationSpec(speakers=2, duration=30, overlap=0.1, seed=3)
    plain = build_conversation(sources, spec)
    conv = build_conversation(sources, spec, keep_tracks=True)
    assert np.array_equal(plain.audio, conv.audio)  # tracks change nothing of the clean mix
    assert np.allclose(sum(conv.tracks.values()) * conv.stats["peak_scale"], conv.audio, atol=1e-5)
    rooms = data_dir / "rooms"
    rir = load_effect_files([rooms / "rir" / "sim_kitchen_0.wav"])["sim_kitchen_0"]
    noise = load_effect_files([rooms / "noise" / "fan_synthetic.flac"])["fan_synthetic"]
    speakers = sorted(conv.levels_db)
    far = apply_effects(conv, Effects({s: rir for s in speakers}, noise, 10.0), np.random.default_rng(0))
    assert far.segments == conv.segments and len(far.audio) == len(conv.audio)
    assert far.effects["snr_db"] == 10.0
    # measured SNR over the reference's speech time: reverberant speech against the added noise
    speech = np.zeros(len(conv.audio), bool)
    for _, a, b in conv.segments:
        speech[int(a * 16000):int(b * 16000)] = True
    dry_only = apply_effects(conv, Effects({s: rir for s in speakers}), np.random.default_rng(0))
    added = far.audio.astype(np.float64) / far.stats["peak_scale"] - dry_only.audio / dry_only.stats["peak_scale"]
    snr = 10 * np.log10(np.mean((dry_only.audio[speech] / dry_only.stats["peak_scale"]) ** 2) / np.mean(added**2))
    assert abs(snr - 10.0) < 0.3
    # reverberation smears: the wet mix differs from the dry one but keeps its level
    assert not np.allclose(dry_only.audio, conv.audio, atol=1e-3)
    # telephone: nothing left above 4 kHz, little below 300 Hz
    tel = telephone_band(conv.audio.astype(np.float64))
    spectrum = np.abs(np.fft.rfft(tel)) ** 2
    freqs = np.fft.rfftfreq(len(tel), 1 / 16000)
    assert spectrum[freqs > 4100].sum() < 1e-3 * spectrum.sum()
    assert spectrum[freqs < 150].sum() < 0.01 * spectrum.sum()
    with pytest.raises(ConversationError, match="keep_tracks"):
        apply_effects(plain, Effects(telephone=True), np.random.default_rng(0))


def test_cli_builds_far_field_and_telephone_sets(data_dir, tmp_path):
    rooms = data_dir / "rooms"
    args = [str(data_dir / "librispeech"), "--output", str(tmp_path / "far"), "--count", "2", "--duration", "20",
            "--rir", str(rooms / "rir" / "sim_bedroom_0.wav"), str(rooms / "rir" / "sim_bedroom_1.wav"),
            "--noise", str(rooms / "noise" / "kitchen_dishes.flac"), "--snr", "5,20", "--seed", "4"]
    assert conversations_main(args) == 0
    summary = json.loads((tmp_path / "far" / "conversations.json").read_text())
    for c in summary["conversations"]:
        assert set(c["effects"]["rirs"]) == set(c["levels_dbfs"]) and 5 <= c["effects"]["snr_db"] <= 20
    assert conversations_main(args[:3] + ["--count", "1", "--duration", "20", "--telephone", "--output",
                                          str(tmp_path / "tel")]) == 0
    first = sf.read(tmp_path / "far" / "conv000.wav")[0]
    assert conversations_main(args[:1] + ["--output", str(tmp_path / "again")] + args[3:]) == 0
    assert np.array_equal(first, sf.read(tmp_path / "again" / "conv000.wav")[0])


def test_speech_regions_leave_out_pauses_of_a_noisy_recording():
    # 1 s bursts of a voice-like tone with 1 s pauses, over noise 25 dB below the bursts: the
    # pauses are within 35 dB of the loud frames but are only noise
    rng = np.random.default_rng(0)
    sr = 16000
    t = np.arange(sr) / sr
    burst = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    audio = np.concatenate([np.zeros(sr), burst, np.zeros(sr), burst, np.zeros(sr)])
    audio = audio + rng.normal(0, 0.3 / np.sqrt(2) * 10 ** (-25 / 20), len(audio))
    regions = speech_regions(audio.astype(np.float32), sr)
    assert len(regions) == 2
    for (a, b), start in zip(regions, (1.0, 3.0)):
        assert abs(a - start) < 0.05 and abs(b - (start + 1.0)) < 0.05
