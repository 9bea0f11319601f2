"""Voice profiles: ``edged enroll`` / ``edged speakers`` on real recordings and the real bundle;
every bad input gives one line of error and changes nothing."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edged.diarize.enrollment import SECOND_VOICE_S, voice_sample
from edged.diarize.identify import Identifier, NameError_, check_name
from edged.profiles.store import Profile, ProfileStore, profile_path
from edged.service.enroll import embedding_sha256, enroll_files, load_identifier
from edged.sources.file import read_audio

REPO = Path(__file__).resolve().parents[1]
EDGED = [sys.executable, "-m", "edged.cli"]


def edged(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*EDGED, *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def one_line_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edged: error: "), proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


@pytest.mark.parametrize("name, words", [
    ("", "empty"), ("x" * 65, "65 characters"), ("a/b", "'/'"), ("a+b", "'+'"), ("a#b", "'#'"),
    ("a\x07b", "control character"), ("Alice Smith", "Alice_Smith"), ("speaker_3", "anonymous"),
    ("SPEAKER_12", "anonymous"), (None, "text"),
])
def test_bad_names_are_refused_with_the_fix(name, words):
    with pytest.raises(NameError_) as exc:
        check_name(name)
    assert words in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("name", ["Alice", "Zoë", "x" * 64, "speaker_", "speaker_3b", "O'Brien"])
def test_good_names_pass(name):
    assert check_name(name) == name


def test_enroll_list_rename_remove_through_the_cli(bundle, models, libri, tmp_path):
    folder = tmp_path / "speakers"
    files = [str(p) for p in libri["3005"][:2]]
    proc = edged("enroll", "Alice", *files, "--profiles", str(folder), "--models", str(bundle))
    assert proc.returncode == 0, proc.stderr
    assert "enrolled Alice" in proc.stdout
    path = profile_path(folder, "Alice")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert [p.name for p in folder.iterdir()] == [path.name]  # no temporary file left behind
    data = json.loads(path.read_text())
    assert data["name"] == "Alice" and data["dim"] == 192 and data["speech_s"] >= 5.0
    assert data["embedding_sha256"] == embedding_sha256(models)
    assert abs(np.linalg.norm(data["vector"]) - 1) < 1e-6

    listed = edged("speakers", "list", "--profiles", str(folder))
    assert listed.returncode == 0 and listed.stdout.startswith("Alice\t")

    before = snapshot(folder)
    one_line_error(edged("enroll", "Alice", files[0], "--profiles", str(folder), "--models", str(bundle)),
                   "already enrolled", "--replace")
    assert snapshot(folder) == before

    assert edged("speakers", "rename", "Alice", "Carol", "--profiles", str(folder)).returncode == 0
    assert ProfileStore(folder).names() == ["Carol"]
    one_line_error(edged("speakers", "rename", "Alice", "Dan", "--profiles", str(folder)), "no enrolled speaker 'Alice'",
                   "Carol")
    one_line_error(edged("speakers", "rename", "Carol", "speaker_1", "--profiles", str(folder)), "anonymous")
    one_line_error(edged("speakers", "remove", "Zed", "--profiles", str(folder)), "no enrolled speaker 'Zed'")
    assert edged("speakers", "remove", "Carol", "--profiles", str(folder)).returncode == 0
    assert ProfileStore(folder).names() == []


@pytest.mark.parametrize("case", ["two voices", "too short", "not audio", "missing", "bad name", "slash"])
def test_bad_enrollment_changes_nothing(case, bundle, data_dir, libri, tmp_path):
    folder = tmp_path / "speakers"
    ProfileStore(folder).save(Profile("Keep", np.ones(192) / np.sqrt(192), "0" * 64, 6.0, 0.0))
    before = snapshot(folder)
    short = sorted((data_dir / "speakers" / "arctic_slt").glob("*.flac"))[0]  # 3 s of speech
    junk = tmp_path / "junk.wav"
    junk.write_text("not audio at all")
    name, audio, words = {
        "two voices": ("Bob", data_dir / "falcon" / "falcon.wav", ("two voices", "one person alone")),
        "too short": ("Bob", short, ("s of speech", "at least 5 s")),
        "not audio": ("Bob", junk, ("cannot decode audio", "WAV, FLAC or OGG")),
        "missing": ("Bob", tmp_path / "nope.wav", ("not found",)),
        "bad name": ("speaker_7", libri["3005"][0], ("anonymous",)),
        "slash": ("a/b", libri["3005"][0], ("'/'",)),
    }[case]
    one_line_error(edged("enroll", name, str(audio), "--profiles", str(folder), "--models", str(bundle)), *words)
    assert snapshot(folder) == before


def test_second_voice_threshold_separates_the_data(models, data_dir, libri):
    """The two-voice check, measured on real clips: single speakers pass, conversations do not."""
    singles = [libri[s][0] for s in sorted(libri)[:4]] + sorted((data_dir / "speakers").glob("vctk_p2*/*.flac"))[:4]
    for path in singles:
        assert voice_sample(models, read_audio(path)).second_voice_s < SECOND_VOICE_S, path
    for path in (data_dir / "sample" / "sample.wav", data_dir / "ami-debug" / "dev00.wav"):
        assert voice_sample(models, read_audio(path)).second_voice_s >= SECOND_VOICE_S, path


def test_corrupt_and_foreign_profiles_are_skipped_with_a_warning(models, libri, tmp_path, caplog):
    folder = tmp_path / "speakers"
    store = ProfileStore(folder)
    enroll_files(models, store, "Alice", libri["3005"][:1])
    enroll_files(models, store, "Bob", libri["1688"][:2])
    profile_path(folder, "Bob").write_text('{"format": "edged-voice-profile", "vers')  # torn by hand
    foreign = store.get("Alice")
    store.save(Profile("Eve", foreign.vector, "f" * 64, 6.0, 0.0))
    with caplog.at_level("WARNING"):
        identifier = load_identifier(store, models, 0.6, 0.55)
    assert identifier.names == ["Alice"]
    text = [r.getMessage() for r in caplog.records]
    assert any(str(profile_path(folder, "Bob")) in t and "corrupt" in t for t in text), text
    assert any("'Eve'" in t and "re-enroll" in t for t in text), text
    assert all("\n" not in t for t in text)


def test_profile_recognises_its_voice_and_not_others(models, libri):
    """Enrolled from one utterance, another utterance of the same reader scores above the threshold
    and other readers below (real voices, real model)."""
    speakers = sorted(libri)[:4]
    vectors, names = [], []
    for i, s in enumerate(speakers):
        sample = voice_sample(models, np.concatenate([read_audio(f) for f in libri[s][:2]]))
        vectors.append(sample.embedding_sum / np.linalg.norm(sample.embedding_sum))
        names.append(f"S{i}")
    identifier = Identifier(names, np.asarray(vectors), 0.6, 0.55)
    for i, s in enumerate(speakers):
        test = voice_sample(models, read_audio(libri[s][5]))
        sims = identifier.similarities(test.embedding_sum[None])[0]
        assert int(np.argmax(sims)) == i and sims[i] >= 0.6, (s, sims)
        assert np.sort(sims)[-2] < 0.6, (s, sims)
