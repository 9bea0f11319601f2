"""Voice profiles: ``edged enroll`` / ``edged speakers`` on real recordings and the real bundle;
every bad input gives one line of error and changes nothing."""

from __future__ import annotations

import fcntl
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from edged.diarize.enrollment import SECOND_VOICE_S, voice_sample
from edged.diarize.identify import Identifier, NameError_, check_name
from edged.profiles.store import Profile, ProfileError, ProfileStore, profile_path
from edged.service.enroll import embedding_sha256, enroll_files, load_identifier
from edged.sources.file import read_audio

sys.path.insert(0, str(Path(__file__).parent))
from smallfs import fill, small_tmpfs  # noqa: E402

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


def voice(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(192)
    return vector / np.linalg.norm(vector)


def enrolled(folder: Path, **voices: int) -> ProfileStore:
    """A store with one profile per name (``name=seed``), no model needed."""
    store = ProfileStore(folder)
    for name, seed in voices.items():
        store.save(Profile(name, voice(seed), "a" * 64, 6.0, 0.0, (f"{name}.wav",)))
    return store


def test_rename_through_the_store_keeps_the_voice_and_refusals_change_nothing(tmp_path):
    folder = tmp_path / "speakers"
    store = enrolled(folder, Alice=1, Keep=2)
    before = snapshot(folder)
    for old, new, error, words in [("Nobody", "Zed", ProfileError, "no enrolled speaker 'Nobody'"),
                                   ("Alice", "Keep", ProfileError, "'Keep' is already enrolled"),
                                   ("Alice", "Alice", ProfileError, "already has that name"),
                                   ("Alice", "a/b", NameError_, "'/'"), ("Alice", "speaker_1", NameError_, "anonymous")]:
        with pytest.raises(error) as exc:
            store.rename(old, new)
        assert words in str(exc.value) and "\n" not in str(exc.value), exc.value
        assert snapshot(folder) == before, (old, new)

    renamed = store.rename("Alice", "Carol")
    assert renamed.name == "Carol" and store.names() == ["Carol", "Keep"]
    assert sorted(snapshot(folder)) == sorted(profile_path(folder, n).name for n in ("Carol", "Keep"))
    assert stat.S_IMODE(profile_path(folder, "Carol").stat().st_mode) == 0o600
    carol = store.get("Carol")
    assert np.allclose(carol.vector, voice(1)) and carol.sources == ("Alice.wav",) and store.get("Alice") is None

    enrolled(folder, Alice=3)  # the old name enrolled again is another voice, kept beside Carol
    assert [p.name for p in store.load("a" * 64)] == ["Alice", "Carol", "Keep"]
    store.rename("Carol", "Keep", replace=True)
    assert store.names() == ["Alice", "Keep"] and np.allclose(store.get("Keep").vector, voice(1))


def test_rename_and_its_refusals_through_the_cli(tmp_path):
    folder = tmp_path / "speakers"
    enrolled(folder, Alice=1, Keep=2)
    before = snapshot(folder)
    one_line_error(edged("speakers", "rename", "Alice", "Keep", "--profiles", str(folder)), "'Keep' is already enrolled",
                   "--replace")
    one_line_error(edged("speakers", "rename", "Alice", "a+b", "--profiles", str(folder)), "'+'")
    assert snapshot(folder) == before
    proc = edged("speakers", "rename", "Alice", "Keep", "--replace", "--profiles", str(folder))
    assert proc.returncode == 0 and proc.stdout == "renamed Alice -> Keep\n", proc.stderr
    assert ProfileStore(folder).names() == ["Keep"] and np.allclose(ProfileStore(folder).get("Keep").vector, voice(1))
    assert list(snapshot(folder)) == [profile_path(folder, "Keep").name]


# A rename in a child that SIGKILLs itself just before its N-th call of a file system step
CRASH_AT_STEP = """
import os, signal, sys
from edged.profiles.store import ProfileStore

folder, crash_at, replace = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "replace"
calls = 0

def crashing(step):
    def call(*args, **kwargs):
        global calls
        calls += 1
        if calls == crash_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return step(*args, **kwargs)
    return call

for name in ("fsync", "replace", "rename", "unlink", "link"):
    setattr(os, name, crashing(getattr(os, name)))
ProfileStore(folder).rename("Alice", "Carol", replace=replace)
"""


@pytest.mark.parametrize("replace", ["new name free", "replace"])
def test_a_rename_killed_at_any_step_leaves_the_voice_under_exactly_one_name(replace, tmp_path, caplog):
    """After a SIGKILL before each fsync, replace, rename, unlink or link of a rename, the next load
    finds Alice's voice under Alice or Carol, never both nor neither, and tidies the folder: no
    temporary file left, at most one log line, nothing left to do at the load after."""
    seen_outcomes, seen_stray = set(), False
    for crash_at in range(1, 30):
        folder = tmp_path / f"crash{crash_at}"
        voices = {"Alice": 1, "Keep": 2, **({"Carol": 3} if replace == "replace" else {})}
        enrolled(folder, **voices)
        proc = subprocess.run([sys.executable, "-c", CRASH_AT_STEP, str(folder), str(crash_at), replace], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        if proc.returncode == 0:
            break  # no step left to crash at: the rename completed
        assert proc.returncode == -9, proc.stderr
        seen_stray |= any(p.name.startswith(".") for p in folder.iterdir())
        caplog.clear()
        with caplog.at_level("INFO", logger="edged.profiles"):
            profiles = {p.name: p for p in ProfileStore(folder).load("a" * 64)}
        assert len(caplog.records) <= 1, [r.getMessage() for r in caplog.records]
        holders = [n for n, p in profiles.items() if np.allclose(p.vector, voice(1))]
        assert holders in (["Alice"], ["Carol"]), (crash_at, sorted(profiles))
        seen_outcomes.add(holders[0])
        expected = {"Keep": 2, holders[0]: 1, **({"Carol": 3} if replace == "replace" and holders == ["Alice"] else {})}
        assert {n: int(np.argmax([np.dot(p.vector, voice(s)) for s in (1, 2, 3)])) + 1 for n, p in profiles.items()} \
            == expected, crash_at
        assert sorted(snapshot(folder)) == sorted(profile_path(folder, n).name for n in expected), crash_at
        tidied = snapshot(folder)
        caplog.clear()
        with caplog.at_level("INFO", logger="edged.profiles"):
            assert ProfileStore(folder).names() == sorted(expected)
        assert not caplog.records and snapshot(folder) == tidied
    else:
        pytest.fail("the rename never completed")
    assert crash_at > 3 and seen_outcomes == {"Alice", "Carol"} and seen_stray, (crash_at, seen_outcomes, seen_stray)


def test_an_unfinished_rename_loads_under_the_new_name_even_when_the_tidying_fails(tmp_path, monkeypatch, caplog):
    folder = tmp_path / "speakers"
    enrolled(folder, Alice=1, Carol=3)
    renamed = {**Profile("Carol", voice(1), "a" * 64, 6.0, 0.0).to_dict(), "renamed_from": "Alice"}
    profile_path(folder, "Alice").write_text(json.dumps(renamed))  # as a crash between the two steps leaves it

    def read_only(*args):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr("os.replace", read_only)
    with caplog.at_level("INFO", logger="edged.profiles"):
        profiles = ProfileStore(folder).load("a" * 64)
    assert [p.name for p in profiles] == ["Carol"] and np.allclose(profiles[0].vector, voice(1))
    assert [r.getMessage() for r in caplog.records] == \
        [f"cannot tidy the profiles folder {folder} after a crash (Permission denied); fix its permissions"]

    monkeypatch.undo()
    caplog.clear()
    with caplog.at_level("INFO", logger="edged.profiles"):
        assert ProfileStore(folder).names() == ["Carol"]
    assert [r.getMessage() for r in caplog.records] == \
        [f"profiles folder {folder}, after a crash: finished renaming 'Alice' to 'Carol'"]
    assert list(snapshot(folder)) == [profile_path(folder, "Carol").name]


def test_the_tidying_waits_for_a_live_writer(tmp_path):
    """A temporary file is a crash's leftover only when nobody holds the folder's lock."""
    folder = tmp_path / "speakers"
    enrolled(folder, Alice=1)
    writing = folder / (".tmp-live" + profile_path(folder, "Bob").name)
    fd = os.open(folder, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a writer in another process holds it
    writing.write_text("half a profi")
    reader = threading.Thread(target=ProfileStore(folder).names)
    reader.start()
    reader.join(0.5)
    assert reader.is_alive() and writing.exists()
    os.close(fd)
    reader.join(10)
    assert not reader.is_alive() and not writing.exists()


def test_a_full_disk_is_one_line_and_changes_nothing(tmp_path):
    """A real full file system: enrolling and renaming fail with one ProfileError naming the file
    and the fix (an OSError used to escape, stopping the daemon's command loop)."""
    with small_tmpfs(tmp_path / "fs", "256k") as fs:
        store = ProfileStore(fs / "speakers")
        store.save(Profile("Alice", np.ones(8), "a" * 64, 6.0, 0.0))
        before = sorted((p.name, p.read_bytes()) for p in store.folder.iterdir())
        fill(fs)
        with pytest.raises(ProfileError) as err:
            store.save(Profile("Bob", np.ones(8), "a" * 64, 6.0, 0.0))
        assert "cannot write the profile" in str(err.value) and "No space left on device" in str(err.value)
        assert "free space" in str(err.value) and "\n" not in str(err.value)
        with pytest.raises(ProfileError, match="No space left on device"):
            store.rename("Alice", "Alicia")
        assert sorted((p.name, p.read_bytes()) for p in store.folder.iterdir()) == before
        assert store.names() == ["Alice"]
