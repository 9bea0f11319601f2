"""Identification in the streaming pipeline, both back-ends, on real voices: an enrolled voice
carries its name in the RTTM and events; other voices stay anonymous; one name per voice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edged.diarize.events import TurnEvent
from edged.diarize.clustering import IncrementalClustering
from edged.diarize.identify import Identifier, IdentifyingBackend, NameError_
from edged.diarize.params import PipelineParams
from edged.diarize.pipeline import StreamingDiarizer
from edged.models.blocks import load_models
from edged.profiles.store import Profile, ProfileStore
from edged.service.enroll import enroll_files, load_identifier
from host.conversations import ConversationSpec, build_conversation, write_conversation

REPO = Path(__file__).resolve().parents[1]
EDGED = [sys.executable, "-m", "edged.cli"]
BIN = 0.01


@pytest.fixture(scope="module")
def scene(models, libri, tmp_path_factory):
    """Two readers enrolled from utterances 0-1; a 40 s conversation of utterances 2-9 of both and
    of a third, never-enrolled reader."""
    folder = tmp_path_factory.mktemp("ident")
    store = ProfileStore(folder / "speakers")
    a, b, stranger = sorted(libri)[:3]
    enroll_files(models, store, "Alice", libri[a][:2])
    enroll_files(models, store, "Bob", libri[b][:2])
    sources = {a: libri[a][2:], b: libri[b][2:], stranger: libri[stranger]}
    conv = build_conversation(sources, ConversationSpec(speakers=3, duration=40.0, overlap=0.05, seed=3), name="scene")
    wav, rttm = write_conversation(conv, folder)
    return {"store": store, "conv": conv, "wav": wav, "names": {a: "Alice", b: "Bob"}, "stranger": stranger}


def coverage(conv, turns, who: str, label: str) -> float:
    n = int(conv.spec.duration / BIN) + 1
    ref, hyp = np.zeros(n, bool), np.zeros(n, bool)
    for spk, s, e in conv.segments:
        if spk == who:
            ref[int(s / BIN):int(e / BIN)] = True
    for spk, s, e in turns:
        if spk == label:
            hyp[int(s / BIN):int(e / BIN)] = True
    return float((ref & hyp).sum() / max(ref.sum(), 1))


def test_cannot_link_one_name_per_voice_in_a_chunk():
    rng = np.random.default_rng(0)
    alice = rng.normal(size=192)
    ident = Identifier(["Alice", "Bob"], np.stack([alice, rng.normal(size=192)]), 0.5, 0.5)
    # two local speakers both close to Alice: only the closer one takes the name
    near = alice + 0.1 * rng.normal(size=192)
    nearer = alice + 0.01 * rng.normal(size=192)
    got = ident.match(np.stack([near, nearer]), np.array([True, True]))
    assert got.tolist() == [-1, 0]
    assert ident.match(np.stack([rng.normal(size=192)]), np.array([True])).tolist() == [-1]  # a stranger


def test_rename_moves_the_slot_and_its_aliases_to_the_new_name():
    rng = np.random.default_rng(1)
    alice, bob = rng.normal(size=192), rng.normal(size=192)
    wrapper = IdentifyingBackend(IncrementalClustering(0.5, 0.3, 1.0, 4), Identifier(["Alice", "Bob"],
                                 np.stack([alice, bob]), 0.5, 0.5), inner_max=4, tau_active=0.5)
    local = np.ones((10, 1), dtype=np.float32)
    [(named, _)] = wrapper.push(local, alice[None] + 0.01 * rng.normal(size=(1, 192)), "chunk")
    alice_id = int(named.mapping[0])
    wrapper.alias(0, "Alice")  # an anonymous speaker named Alice over MQTT
    assert wrapper.label(alice_id) == "Alice" and wrapper.label(0) == "speaker_0"  # columns keep their labels
    assert wrapper.rename("Alice", "Alicia") is True
    assert wrapper.label(alice_id) == "Alicia" and wrapper.aliases == {0: "Alicia"}
    assert wrapper.identifier.names == ["Alicia", "Bob"]
    [(again, _)] = wrapper.push(local, alice[None] + 0.01 * rng.normal(size=(1, 192)), "chunk")
    assert wrapper.label(int(again.mapping[0])) == "Alicia"  # the same voice, the new name
    assert wrapper.rename("Nobody", "Carl") is False
    with pytest.raises(NameError_, match="'Bob' is already enrolled"):
        wrapper.rename("Alicia", "Bob")
    with pytest.raises(NameError_, match="'/'"):
        wrapper.rename("Alicia", "a/b")
    assert wrapper.identifier.names == ["Alicia", "Bob"] and wrapper.slot_names[:2] == ["Alicia", "Bob"]


def test_recognition_of_an_accumulated_voice_is_revised_but_a_requested_name_is_kept():
    e = np.eye(192)
    alice = e[0]
    wrapper = IdentifyingBackend(IncrementalClustering(0.5, 0.3, 1.0, 4),
                                 Identifier(["Alice"], alice[None], 0.7, 0.55), inner_max=4, tau_active=0.5)
    local = np.ones((10, 1), dtype=np.float32)
    close = 0.6 * e[0] + 0.8 * e[1]  # 0.6 to Alice: under the chunk threshold, over the voice threshold
    far = 0.45 * e[0] + np.sqrt(1 - 0.45 ** 2) * e[1]  # the same anonymous speaker, drifting away from Alice

    def label(embedding):
        [(assignment, _)] = wrapper.push(local, embedding[None], "chunk")
        return wrapper.label(int(assignment.mapping[0]))

    assert [label(close) for _ in range(4)] == ["Alice"] * 4  # recognised by its accumulated voice
    labels = [label(far) for _ in range(6)]
    assert labels[0] == "Alice" and labels[-1] == "speaker_0", labels  # the voice left the profile
    assert wrapper.aliases == {}
    state = wrapper.anonymous_state()
    wrapper.alias(0, "Alice")  # named on request: kept whatever the voice does
    assert [label(far) for _ in range(3)] == ["Alice"] * 3 and wrapper.named_aliases == {0: "Alice"}
    # a restart recomputes recognitions from the saved voices; requested names come back by alias()
    wrapper.reset()
    wrapper.restore_anonymous(state["ids"], state["sums"] + 20 * close, state["counts"] + 20)
    assert wrapper.aliases == {0: "Alice"} and wrapper.named_aliases == {}


def test_a_recognised_speaker_whose_name_is_taken_in_a_chunk_stays_anonymous_and_can_be_named():
    e = np.eye(192)
    wrapper = IdentifyingBackend(IncrementalClustering(0.5, 0.3, 1.0, 4),
                                 Identifier(["Alice"], e[0][None], 0.7, 0.55), inner_max=4, tau_active=0.5)
    close = 0.6 * e[0] + 0.8 * e[1]  # recognised as Alice by its accumulated voice only
    [(a, _)] = wrapper.push(np.ones((10, 1), np.float32), close[None], "chunk")
    assert wrapper.label(int(a.mapping[0])) == "Alice" and wrapper.aliases == {0: "Alice"}
    assert wrapper.anonymous_id("speaker_0") == 0  # a recognition may still be overridden over MQTT
    # Alice herself and the recognised speaker in one chunk: one column per name
    [(a, _)] = wrapper.push(np.ones((10, 2), np.float32), np.stack([e[0], close]), "chunk")
    labels = [wrapper.label(int(g)) for g in a.mapping]
    assert labels == ["Alice", "speaker_0"], labels
    wrapper.alias(0, "Alice")  # named on request: no longer offered for naming
    assert wrapper.anonymous_id("speaker_0") is None


def test_diarize_with_profiles_writes_names_in_rttm_and_events(bundle, scene, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([*EDGED, "diarize", str(scene["wav"]), "--models", str(bundle), "--output", str(out),
                           "--profiles", str(scene["store"].folder)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    rttm = [line.split() for line in (out / "scene.rttm").read_text().splitlines()]
    turns = [(f[7], float(f[3]), float(f[3]) + float(f[4])) for f in rttm]
    conv = scene["conv"]
    for reader, name in scene["names"].items():
        # at the default thresholds part of Alice goes to Bob near turn changes: see README figures
        assert coverage(conv, turns, reader, name) >= 0.5, (name, coverage(conv, turns, reader, name))
    labels = {t[0] for t in turns}
    anonymous = labels - {"Alice", "Bob"}
    assert anonymous and all(label.startswith("speaker_") for label in anonymous), labels
    # the stranger is called by an enrolled name for a small part of its speech at most: the 5%
    # target holds over many conversations, single ones reach 8% at the default thresholds (here:
    # its first second, 8%; README "Measured: identification")
    stranger = scene["stranger"]
    for name in ("Alice", "Bob"):
        assert coverage(conv, turns, stranger, name) <= 0.1
    events = [json.loads(x) for x in (out / "scene.events.jsonl").read_text().splitlines()]
    assert [(e["speaker"], e["start"]) for e in events if e["type"] == "turn"] == [(t[0], round(t[1], 3)) for t in turns]
    assert any("Alice" in e["speakers"] for e in events if e["type"] == "activity")


def test_profiles_of_another_embedding_model_are_skipped_with_one_line(bundle, scene, tmp_path):
    folder = tmp_path / "speakers"
    p = scene["store"].get("Alice")
    ProfileStore(folder).save(Profile("Alice", p.vector, "e" * 64, p.speech_s, p.created))
    proc = subprocess.run([*EDGED, "diarize", str(scene["wav"]), "--models", str(bundle), "--output",
                           str(tmp_path / "out"), "--profiles", str(folder)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "another embedding model" in warnings[0] and "re-enroll" in warnings[0]
    assert "Alice" not in (tmp_path / "out" / "scene.rttm").read_text()


def test_missing_profiles_folder_is_one_line(bundle, scene, tmp_path):
    proc = subprocess.run([*EDGED, "diarize", str(scene["wav"]), "--models", str(bundle), "--output",
                           str(tmp_path / "out"), "--profiles", str(tmp_path / "none")], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert "not a folder" in proc.stderr and "edged enroll" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("clustering", ["incremental", "uisrnn"])
def test_both_backends_name_the_enrolled_voices(clustering, request, scene):
    root = request.getfixturevalue("uisrnn_bundle" if clustering == "uisrnn" else "bundle")
    models = load_models(root, "int8")
    params = PipelineParams.preset("ami", clustering=clustering, uisrnn_lag=2 if clustering == "uisrnn" else 0)
    identifier = load_identifier(scene["store"], models, 0.6, 0.55)
    diarizer = StreamingDiarizer(models, params, identifier=identifier)
    audio = scene["conv"].audio
    events = list(diarizer.run(audio[i:i + 1600] for i in range(0, len(audio), 1600)))
    turns = [(e.speaker, e.start, e.end) for e in events if isinstance(e, TurnEvent)]
    for reader, name in scene["names"].items():
        # most of each enrolled voice's speech (turn edges and the first chunks of a turn are lost to
        # the streaming latency; the UIS-RNN here is a tiny one trained on 40 s)
        assert coverage(scene["conv"], turns, reader, name) >= 0.5, (clustering, name)
        assert coverage(scene["conv"], turns, scene["stranger"], name) <= 0.05, (clustering, name)
    # names never collide with anonymous labels, and one name is never on two overlapping turns
    for name in ("Alice", "Bob"):
        mine = sorted((s, e) for spk, s, e in turns if spk == name)
        assert all(b[0] >= a[1] for a, b in zip(mine, mine[1:])), mine
