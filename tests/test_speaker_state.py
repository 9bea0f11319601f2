"""The speaker state across restarts, below the daemon (``SpeakerService`` and the snapshot file):
each back-end gets its own speakers back and labels the next chunks as if it had never stopped; a
state of another back-end, another shape or another UIS-RNN model, damaged arrays or a torn file
is one warning line and a fresh start; a format 1 file (before the back-end was recorded) is an
incremental state."""

from __future__ import annotations

import io
import json
import logging
import time

import numpy as np
import pytest

from edged.models.blocks import load_models
from edged.profiles.snapshot import FORMAT_1, SpeakerState, load_state, save_state
from edged.profiles.store import Profile, ProfileStore
from edged.service.enroll import embedding_sha256
from edged.service.speakers import SpeakerService
from edged.settings import load_config

FRAMES = 100


@pytest.fixture(scope="module")
def uis_models(uisrnn_bundle):
    """The int8 models of the UIS-RNN bundle (its embedding model is the plain bundle's)."""
    return load_models(uisrnn_bundle, "int8", threads=1)


def start(tmp_path, models, *overrides: str):
    """A daemon's speaker service and its first diarizer (which takes the saved state)."""
    config = load_config(None, [f"models.path={models.bundle.root}", f"spool.path={tmp_path / 'spool'}",
                                *overrides], environ={})
    service = SpeakerService(config, models)
    return service, service.diarizer(models, config.pipeline)


def voices(count: int = 3) -> np.ndarray:
    """``count`` fixed unit voices of dim 192."""
    v = np.random.default_rng(0).normal(size=(count, 192))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def chunk(speaking: list[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One chunk in which the given voices speak (one local speaker each, for a third of it)."""
    rng = np.random.default_rng(seed)
    local = np.zeros((FRAMES, len(speaking)), np.float32)
    for i in range(len(speaking)):
        local[i * FRAMES // 3 : (i + 1) * FRAMES // 3 + 10, i] = 1.0
    emb = voices()[speaking] + 0.02 * rng.normal(size=(len(speaking), 192))
    return local, emb


def feed(diarizer, chunks) -> list[list[int]]:
    """Push chunks through the diarizer's back-ends (names in front); their global ids."""
    out = []
    for local, emb in chunks:
        out += [a.mapping.tolist() for a, _ in diarizer.clustering.push(local, emb, None)]
    return out


CONVERSATION = [chunk(s, i) for i, s in enumerate([[0], [0, 1], [1], [1, 2], [2], [0], [2, 0], [1]] * 2)]
RETURNING = [chunk([2], 100), chunk([1], 101), chunk([2, 1], 102)]  # voices 1 and 2 come back, 0 does not


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("clustering", ["incremental", "uisrnn"])
def test_each_backend_gets_its_speakers_back(uis_models, tmp_path, caplog, clustering):
    caplog.set_level(logging.INFO)
    service, first = start(tmp_path, uis_models, f"pipeline.clustering={clustering}")
    feed(first, CONVERSATION)
    assert first.backend.num_speakers >= 3
    service.save(first)
    saved = np.load(tmp_path / "speakers.state.npz")
    assert json.loads(str(saved["meta"]))["backend"] == first.backend.state_signature()

    _, second = start(tmp_path, uis_models, f"pipeline.clustering={clustering}")
    assert not warnings_of(caplog) and "speaker state reloaded" in caplog.text
    assert second.backend.num_speakers == first.backend.num_speakers
    for k, v in first.backend.state().items():
        assert np.array_equal(second.backend.state()[k], v), k
    for k, v in first.identifying.anonymous_state().items():
        assert np.array_equal(second.identifying.anonymous_state()[k], v), k
    # the returning voices get the labels the stopped diarizer would have given them
    after = feed(second, RETURNING)
    assert after == feed(first, RETURNING) and max(max(m) for m in after) > 0
    (tmp_path / "speakers.state.npz").unlink()
    _, fresh = start(tmp_path, uis_models, f"pipeline.clustering={clustering}")
    assert feed(fresh, RETURNING) != after  # without the state they are numbered afresh


@pytest.mark.parametrize("clustering", ["incremental", "uisrnn"])
def test_a_reload_carries_the_running_speakers_to_a_service_with_other_settings(uis_models, tmp_path, caplog,
                                                                               clustering):
    """SIGHUP with another profiles folder and state directory: a new service reads the new
    profiles, and its diarizer takes the running speakers from memory (not from the file)."""
    caplog.set_level(logging.INFO)
    service, first = start(tmp_path, uis_models, f"pipeline.clustering={clustering}")
    feed(first, CONVERSATION)
    people = tmp_path / "people"
    ProfileStore(people).save(Profile("Dora", voices(4)[3], embedding_sha256(uis_models), 5.0, 0.0))
    config = load_config(None, [f"models.path={uis_models.bundle.root}", f"spool.path={tmp_path / 'moved' / 'spool'}",
                                f"speakers.profiles={people}", f"pipeline.clustering={clustering}"], environ={})
    carry = service.snapshot(first)
    new = SpeakerService(config, uis_models, restore=False)
    second = new.diarizer(uis_models, config.pipeline, carry=carry)
    assert second.identifying.identifier.names == ["Dora"] and not warnings_of(caplog)
    assert "speaker state reloaded" not in caplog.text  # nothing was read from a file
    after = feed(second, RETURNING)
    assert after == feed(first, RETURNING) and max(max(m) for m in after) > 0
    new.save(second)
    assert (tmp_path / "moved" / "speakers.state.npz").exists()
    fresh = SpeakerService(config, uis_models, restore=False).diarizer(uis_models, config.pipeline)
    assert feed(fresh, RETURNING) != after  # without the carry they are numbered afresh


def _saved(tmp_path, models, clustering: str) -> SpeakerState:
    """Save a conversation's speakers with ``clustering``; the state as written."""
    service, diarizer = start(tmp_path, models, f"pipeline.clustering={clustering}")
    feed(diarizer, CONVERSATION)
    service.save(diarizer)
    return load_state(tmp_path / "speakers.state.npz", embedding_sha256(models), diarizer.backend.state_signature(),
                      3600)


def _rewrite(tmp_path, models, state: SpeakerState) -> None:
    save_state(tmp_path / "speakers.state.npz", embedding_sha256(models), state)


def _nan_hidden(state: SpeakerState) -> None:
    state.clustering["hidden"][0, 0, 0] = np.nan


def _wrong_means(state: SpeakerState) -> None:
    state.clustering["means"] = state.clustering["means"][:, :100]


def _nan_sums(state: SpeakerState) -> None:
    state.anonymous["sums"][0, 0] = np.nan


def _other_uisrnn_model(state: SpeakerState) -> None:
    state.backend["model_sha256"] = "0" * 64


def _torn(tmp_path) -> None:
    path = tmp_path / "speakers.state.npz"
    path.write_bytes(path.read_bytes()[:200])


CASES = {  # saved by, changed how, restarted with, words of the one warning
    "uisrnn state, incremental pipeline": ("uisrnn", None, [], "saved by the uisrnn back-end (max_speakers 20, "
                                           "model_sha256 "),
    "incremental state, uisrnn pipeline": ("incremental", None, ["pipeline.clustering=uisrnn"],
                                           "saved by the incremental back-end (max_speakers 20), this pipeline "
                                           "runs the uisrnn back-end (max_speakers 20, model_sha256 "),
    "uisrnn state, fewer speakers": ("uisrnn", None, ["pipeline.clustering=uisrnn", "pipeline.max_speakers=8"],
                                     "this pipeline runs the uisrnn back-end (max_speakers 8, model_sha256"),
    "incremental state, fewer speakers": ("incremental", None, ["pipeline.max_speakers=8"],
                                          "this pipeline runs the incremental back-end (max_speakers 8)"),
    "another uisrnn model": ("uisrnn", _other_uisrnn_model, ["pipeline.clustering=uisrnn"],
                             "model_sha256 000000000000...)"),
    "uisrnn GRU state not finite": ("uisrnn", _nan_hidden, ["pipeline.clustering=uisrnn"],
                                    "does not fit this pipeline (saved UIS-RNN means or GRU states are not finite"),
    "uisrnn means of another dim": ("uisrnn", _wrong_means, ["pipeline.clustering=uisrnn"],
                                    "does not fit this pipeline (saved UIS-RNN speakers have shapes"),
    "anonymous sums not finite": ("uisrnn", _nan_sums, ["pipeline.clustering=uisrnn"],
                                  "does not fit this pipeline (anonymous speakers"),
    "torn file": ("uisrnn", "torn", ["pipeline.clustering=uisrnn"], "is unreadable"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_state_that_does_not_fit_is_one_warning_and_a_fresh_start(uis_models, tmp_path, caplog, case):
    saved_by, change, overrides, words = CASES[case]
    state = _saved(tmp_path, uis_models, saved_by)
    if change == "torn":
        _torn(tmp_path)
    elif change is not None:
        change(state)
        _rewrite(tmp_path, uis_models, state)
    caplog.clear()
    _, diarizer = start(tmp_path, uis_models, *overrides)
    warnings = warnings_of(caplog)
    assert len(warnings) == 1 and words in warnings[0] and "starting with no known speakers" in warnings[0], warnings
    assert diarizer.backend.num_speakers == 0 and not len(diarizer.identifying.anonymous_state()["ids"])
    assert feed(diarizer, [chunk([2], 0)]) == [[0]]  # a fresh start: the first voice is speaker_0


def _as_format_1(tmp_path, models, state: SpeakerState) -> None:
    """The file an edged before the back-end was recorded wrote (incremental only)."""
    meta = {"format": FORMAT_1, "embedding_sha256": embedding_sha256(models), "saved_at": time.time(),
            "aliases": {str(k): v for k, v in state.aliases.items()}}
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.asarray(json.dumps(meta)), **state.clustering, **state.anonymous)
    (tmp_path / "speakers.state.npz").write_bytes(buffer.getvalue())


def test_a_format_1_file_is_an_incremental_state(uis_models, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    state = _saved(tmp_path, uis_models, "incremental")
    _as_format_1(tmp_path, uis_models, state)
    _, diarizer = start(tmp_path, uis_models)
    assert not warnings_of(caplog) and "speaker state reloaded" in caplog.text
    assert np.array_equal(diarizer.backend.state()["centroids"], state.clustering["centroids"])
    assert diarizer.backend.num_speakers == int(state.clustering["used"].sum()) >= 3

    caplog.clear()
    _, diarizer = start(tmp_path, uis_models, "pipeline.clustering=uisrnn")
    warnings = warnings_of(caplog)
    assert len(warnings) == 1 and "saved by the incremental back-end (max_speakers 20)" in warnings[0], warnings
    assert diarizer.backend.num_speakers == 0
