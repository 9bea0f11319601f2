"""UIS-RNN clustering: host training + ONNX export into a bundle, the bundle section's checks,
the streaming decoder against the reference ``uisrnn`` package, fixed-lag behaviour and bounds,
and the ``pipeline.clustering`` switch of the daemon config and pipeline.

Everything trains for real, on tiny data (seconds on 2 cores)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edged.models.bundle import MANIFEST_NAME, BundleError, load_bundle
from edged.errors import ConfigError
from edged.diarize.params import PipelineParams

DIM, HIDDEN = 8, 16


def _toy_sequences(count: int, seed: int):
    """Sequences of 8-dim observations around 6 speaker centres: 2-3 speakers, turns of 1-4."""
    from edged_host.uisrnn_data import LabelledSequence

    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(6, DIM))
    out = []
    for i in range(count):
        speakers = rng.choice(6, size=int(rng.integers(2, 4)), replace=False)
        turns = rng.choice(speakers, size=8)
        labels = np.repeat(turns, rng.integers(1, 5, size=len(turns)))
        x = centres[labels] + 0.4 * rng.normal(size=(len(labels), DIM))
        n = len(labels)
        out.append(LabelledSequence(f"toy{seed}-{i}", x.astype(np.float32), [str(v) for v in labels],
                                    np.ones(n), np.arange(n), "synthetic"))
    return out


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A reference UISRNN trained on toy data, its ONNX export and the edge network over it."""
    from edged_export.uisrnn import TrainOptions, stage, train

    options = TrainOptions(hidden_size=HIDDEN, iterations=60, learning_rate=1e-2, batch_size=5, num_permutations=2)
    model = train(_toy_sequences(12, seed=1), options)
    entry, network = stage(model, tmp_path_factory.mktemp("toy") / "uisrnn.onnx", options, {})
    return model, entry, network


def test_toy_export_parity_and_constants(toy):
    model, entry, network = toy
    assert entry["onnx_max_abs_diff"] < 1e-5
    assert 0 < entry["transition_bias"] < 1 and entry["crp_alpha"] == 1.0
    assert len(entry["sigma2"]) == DIM and np.all(np.asarray(entry["sigma2"]) > 0)
    assert np.asarray(entry["init_hidden"]).shape == (1, HIDDEN)


def test_offline_decoder_equals_reference_predict(toy):
    """Parity: same labels as uisrnn.UISRNN.predict(test_iteration=1) up to renaming, 20 sequences."""
    from edged_export.uisrnn import decoder_parity

    model, _, network = toy
    sequences = [s.embeddings.astype(np.float64) for s in _toy_sequences(20, seed=2)]
    result = decoder_parity(model, network, sequences, beam=10)
    assert result["sequences"] == 20 and result["observations"] > 200
    assert result["identical_up_to_renaming"] == 20, result["mismatched"]


def test_same_up_to_renaming():
    from edged_export.uisrnn import same_up_to_renaming

    assert same_up_to_renaming([0, 1, 0, 2], [1, 0, 1, 2])
    assert not same_up_to_renaming([0, 1, 0], [0, 1, 1])
    assert not same_up_to_renaming([0, 0], [0, 1])
    assert not same_up_to_renaming([0], [0, 0])


def test_fixed_lag_commits_after_lag_and_converges(toy):
    from edged.diarize.uisrnn import UISRNNDecoder

    _, _, network = toy
    sequences = [s.embeddings for s in _toy_sequences(6, seed=3)]
    for x in sequences:
        offline = UISRNNDecoder(network, 10, None).decode(x)
        for lag in (0, 3):
            decoder = UISRNNDecoder(network, 10, lag)
            labels = []
            for t, obs in enumerate(x):
                committed = decoder.push_step(obs[None])
                # step t - lag becomes final at step t, never earlier or later
                assert [s for s, _ in committed] == ([t - lag] if t >= lag else [])
                labels += [int(v) for _, lab in committed for v in lab]
            labels += [int(v) for _, lab in decoder.finish() for v in lab]
            assert len(labels) == len(x)
        # a lag as long as the sequence is the offline decoder
        decoder = UISRNNDecoder(network, 10, len(x))
        online = [int(v) for obs in x for _, lab in decoder.push_step(obs[None]) for v in lab]
        online += [int(v) for _, lab in decoder.finish() for v in lab]
        assert online == offline.tolist()


def test_labels_within_a_step_differ_and_speakers_are_capped(toy):
    from edged.diarize.uisrnn import UISRNNDecoder

    _, _, network = toy
    x = _toy_sequences(1, seed=4)[0].embeddings
    decoder = UISRNNDecoder(network, 4, lag=1, max_speakers=3)
    steps = []
    for i in range(0, len(x) - 2, 3):
        steps += decoder.push_step(x[i : i + 3])
    steps += decoder.finish()
    for _, labels in steps:
        assert len(labels) == 3 and len(set(labels.tolist())) == 3
        assert labels.max() < 3
    # more observations in a step than speakers allowed: they share, nothing fails
    decoder = UISRNNDecoder(network, 4, lag=0, max_speakers=2)
    (_, labels), = decoder.push_step(x[:3])
    assert sorted(set(labels.tolist())) == [0, 1]


def test_bounded_state_on_a_long_stream(toy):
    """A long stream: hypotheses <= beam, speakers <= cap, pending steps <= lag + 1 at every step."""
    from edged.diarize.uisrnn import UISRNNDecoder

    _, _, network = toy
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(40, DIM))
    decoder = UISRNNDecoder(network, beam_size=10, lag=4, max_speakers=8)
    committed = 0
    for t in range(3000):
        obs = centres[rng.integers(40, size=int(rng.integers(0, 3)))] + 0.3 * rng.normal(size=(1, DIM))
        committed += len(decoder.push_step(obs))
        assert decoder.hypotheses <= 10 and len(decoder._pending) <= 5
        assert all(len(b.counts) <= 8 and len(b.labels) <= 10 for b in decoder._beams)
    assert committed == 3000 - 4 and decoder.num_speakers <= 8


def _labels(decoder, steps) -> list[int]:
    return [int(v) for x in steps for _, lab in decoder.push_step(x) for v in lab]


def test_restored_decoder_continues_like_the_saved_one(toy):
    """Save after half a stream, restore into a fresh decoder: the rest of the stream gets exactly
    the labels the saved decoder gives it (a restart is a pause), unlike a fresh decoder's."""
    from edged.diarize.uisrnn import UISRNNDecoder

    _, _, network = toy
    x = np.concatenate([s.embeddings for s in _toy_sequences(4, seed=6)])
    steps = [x[i : i + 2] for i in range(0, len(x), 2)]  # two observations per step
    half = len(steps) // 2
    saved = UISRNNDecoder(network, 10, lag=0)
    before = _labels(saved, steps[:half])
    state = saved.state()
    assert len(state["counts"]) == max(before) + 1 == saved.num_speakers >= 3
    assert state["counts"].sum() == len(before) and int(state["last"]) == before[-1]

    restored = UISRNNDecoder(network, 10, lag=0)
    restored.restore(state)
    assert restored.num_speakers == saved.num_speakers
    assert {k: v.tolist() for k, v in restored.state().items()} == {k: v.tolist() for k, v in state.items()}
    after = _labels(restored, steps[half:])
    assert after == _labels(saved, steps[half:])
    assert set(after) & set(before)  # returning speakers keep their labels
    assert _labels(UISRNNDecoder(network, 10, lag=0), steps[half:]) != after  # a fresh start renumbers


def test_state_holds_the_speakers_finish_commits(toy):
    """With a lag, the state is the best hypothesis: the speakers that finish then commits."""
    from edged.diarize.uisrnn import UISRNNDecoder

    _, _, network = toy
    x = _toy_sequences(1, seed=7)[0].embeddings
    decoder = UISRNNDecoder(network, 10, lag=3)
    labels = _labels(decoder, x[:, None])
    state = decoder.state()
    labels += [int(v) for _, lab in decoder.finish() for v in lab]
    assert len(state["counts"]) == max(labels) + 1 and state["counts"].tolist() == np.bincount(labels).tolist()


@pytest.mark.parametrize("change", [
    lambda s: s.update(means=s["means"][:, :-1]),  # another observation dim
    lambda s: s.update(hidden=np.zeros((len(s["counts"]), 1, HIDDEN * 2), np.float32)),  # another GRU size
    lambda s: s["hidden"].__setitem__((0, 0, 0), np.nan),
    lambda s: s.update(counts=s["counts"].astype(float)),
    lambda s: s.update(blocks=s["counts"] + 1),
    lambda s: s.update(last=np.asarray(len(s["counts"]))),
    lambda s: s.update(means=s["means"].astype(str)),
    lambda s: s.pop("last"),
])
def test_restore_refuses_what_does_not_fit_and_changes_nothing(toy, change):
    from edged.diarize.uisrnn import UISRNNDecoder

    _, _, network = toy
    decoder = UISRNNDecoder(network, 10, lag=0)
    _labels(decoder, _toy_sequences(1, seed=8)[0].embeddings[:, None])
    good = decoder.state()
    bad = {k: v.copy() for k, v in good.items()}
    change(bad)
    with pytest.raises((ValueError, KeyError)):
        decoder.restore(bad)
    assert {k: v.tolist() for k, v in decoder.state().items()} == {k: v.tolist() for k, v in good.items()}
    capped = UISRNNDecoder(network, 10, lag=0, max_speakers=len(good["counts"]) - 1)
    with pytest.raises(ValueError, match="at most"):
        capped.restore(good)


# --- the bundle section (uisrnn_bundle: conftest.py) ----------------------------------------

def test_cli_adds_a_verified_section(uisrnn_bundle):
    bundle = load_bundle(uisrnn_bundle, variants=("int8",))
    info = bundle.uisrnn
    assert info is not None and info.observation_dim == bundle.embedding.dim == 192
    assert info.hidden_size == 32 and info.depth == 1 and len(info.sigma2) == 192
    manifest = json.loads((uisrnn_bundle / MANIFEST_NAME).read_text())
    section = manifest["clustering"]["uisrnn"]
    assert section["parity"]["identical_up_to_renaming"] == 2
    names = [s["name"] for s in section["training"]["sequences"]]
    assert names == ["trn03", "synth0000"]
    assert section["training"]["embedding_variant"] == "int8"
    assert section["reference_model"]["path"] == "uisrnn.reference.pt"


def test_saved_reference_model_matches_the_exported_decoder(uisrnn_bundle):
    """The host-only reference model saved next to the ONNX step (for the parity benchmark)
    decodes like the edge decoder over the bundle's ONNX file."""
    from edged.diarize.uisrnn import UISRNNNetwork
    from edged_export.uisrnn import decoder_parity, load_reference

    bundle = load_bundle(uisrnn_bundle, variants=("int8",))
    network = UISRNNNetwork(bundle.uisrnn)
    model = load_reference(uisrnn_bundle)
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(3, 192))
    sequences = []
    for _ in range(3):
        x = centres[np.repeat(rng.integers(3, size=8), 3)] + 0.5 * rng.normal(size=(24, 192))
        sequences.append(x / np.linalg.norm(x, axis=1, keepdims=True) * network.input_scale)
    result = decoder_parity(model, network, sequences, beam=10)
    assert result["identical_up_to_renaming"] == 3, result["mismatched"]


def _edit(bundle_dir, change):
    path = bundle_dir / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


@pytest.fixture
def section_copy(uisrnn_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(uisrnn_bundle, dst)
    return dst


def test_corrupt_uisrnn_onnx_is_refused(section_copy):
    path = section_copy / "uisrnn.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"uisrnn\.onnx: sha256 .* does not match the manifest .*corrupt"):
        load_bundle(section_copy, variants=("int8",))


def test_missing_uisrnn_onnx_is_refused(section_copy):
    (section_copy / "uisrnn.onnx").unlink()
    with pytest.raises(BundleError, match=r"uisrnn\.onnx: model file is missing"):
        load_bundle(section_copy)


@pytest.mark.parametrize("change, message", [
    (lambda m: m["clustering"]["uisrnn"].pop("sigma2"), r"clustering\.uisrnn lacks sigma2"),
    (lambda m: m["clustering"]["uisrnn"].update(sigma2=[0.1] * 5), r"sigma2 must be a list of 192 numbers"),
    (lambda m: m["clustering"]["uisrnn"].update(transition_bias=1.0), r"transition_bias=1\.0 must be below 1"),
    (lambda m: m["clustering"]["uisrnn"].update(crp_alpha=0), r"crp_alpha=0 is not in \(0\.0, inf\]"),
    (lambda m: m["clustering"]["uisrnn"].update(observation_dim=256), r"observation_dim=256 differs from the embedding dim 192"),
    (lambda m: m["clustering"]["uisrnn"].update(init_hidden=[[0.0]]), r"init_hidden must be 1 lists of 32 numbers"),
    (lambda m: m.update(clustering=[1]), r"clustering must be a mapping"),
])
def test_bad_section_is_refused_in_one_line(section_copy, change, message):
    _edit(section_copy, change)
    with pytest.raises(BundleError, match=message) as err:
        load_bundle(section_copy, variants=("int8",))
    assert "\n" not in str(err.value) and "edged-export uisrnn" in str(err.value)


def test_bundle_without_section_stays_valid(section_copy):
    _edit(section_copy, lambda m: m.pop("clustering"))
    (section_copy / "uisrnn.onnx").unlink()
    assert load_bundle(section_copy, variants=("int8",)).uisrnn is None


# --- the daemon switch -----------------------------------------------------------------------

def test_config_switch():
    from edged.settings import load_config, pipeline_params

    p = pipeline_params({"clustering": "uisrnn", "uisrnn_lag": 2, "uisrnn_beam": 4})
    assert (p.clustering, p.uisrnn_lag, p.uisrnn_beam) == ("uisrnn", 2, 4)
    assert PipelineParams().clustering == "incremental" and PipelineParams().uisrnn_beam == 10
    assert load_config(overrides=["pipeline.clustering=uisrnn"], environ={}).pipeline.clustering == "uisrnn"
    with pytest.raises(ConfigError, match=r"clustering='kmeans' is not allowed; choose one of incremental, uisrnn"):
        pipeline_params({"clustering": "kmeans"})
    with pytest.raises(ConfigError, match=r"uisrnn_beam=0 is out of range; allowed \[1, 64\]"):
        pipeline_params({"uisrnn_beam": 0})
    with pytest.raises(ConfigError, match=r"uisrnn_lag must be an integer"):
        pipeline_params({"uisrnn_lag": 1.5})
    assert not {"clustering", "uisrnn_lag", "uisrnn_beam"} & PipelineParams.tunable_bounds().keys()


def test_uisrnn_without_model_in_bundle_is_a_config_error(bundle):
    from edged.models.blocks import load_models
    from edged.diarize.pipeline import StreamingDiarizer

    models = load_models(bundle, "int8")
    if models.bundle.uisrnn is not None:
        pytest.fail("the plain test bundle should have no UIS-RNN section")
    with pytest.raises(ConfigError, match=r"has no UIS-RNN model; add one with edged-export uisrnn"):
        StreamingDiarizer(models, PipelineParams(clustering="uisrnn"))


def test_pipeline_runs_with_uisrnn_and_delays_by_the_lag(uisrnn_bundle, data_dir):
    from edged.sources.file import read_audio
    from edged.messages import TurnEvent
    from edged.models.blocks import load_models
    from edged.diarize.pipeline import StreamingDiarizer

    models = load_models(uisrnn_bundle, "int8")
    wav = read_audio(data_dir / "ami-debug" / "dev00.wav")[: 16000 * 15]
    block = 1600

    def run(params):
        diarizer = StreamingDiarizer(models, params)
        first = None  # audio pushed when the first event came out
        events = []
        for i in range(0, len(wav), block):
            out = diarizer.push(wav[i : i + block])
            if out and first is None:
                first = (i + block) / 16000
            events += out
        events += diarizer.flush()
        return diarizer, [e for e in events if isinstance(e, TurnEvent)], first

    _, base_turns, base_first = run(PipelineParams(latency=2.0))
    diarizer, turns, first = run(PipelineParams(latency=2.0, clustering="uisrnn", uisrnn_lag=4))
    assert turns and all(t.start < t.end <= len(wav) / 16000 + 1e-6 for t in turns)
    assert {t.speaker for t in turns} <= {f"speaker_{k}" for k in range(20)}
    # the first turn comes out 4 steps (2 s of audio) later than with incremental clustering
    assert base_turns and first - base_first == pytest.approx(2.0, abs=0.11)
    assert diarizer.clustering.num_speakers == 0  # flush resets the back-end
    assert not diarizer.update_params(PipelineParams(latency=2.0, clustering="uisrnn", uisrnn_lag=2))
    assert diarizer.update_params(PipelineParams(latency=2.0, clustering="uisrnn", uisrnn_lag=4, tau_active=0.6))


def test_check_names_a_missing_uisrnn_model(bundle):
    """`edged check` fails the models line when clustering is uisrnn and the bundle lacks it."""
    from edged.service.check import check_models
    from edged.settings import load_config

    config = load_config(None, [f"models.path={bundle}", "pipeline.clustering=uisrnn"])
    with pytest.raises(ConfigError, match=r"has no UIS-RNN model; add one with edged-export uisrnn --out"):
        check_models(config)


# --- the cached-features path (edged-cvtune uisrnn) -------------------------------------------

@pytest.fixture(scope="module")
def dev00(bundle, data_dir):
    """20 s of AMI dev00 with 6 s of silence before it (windows without embeddings), its cached
    window outputs at latencies 1 and 5 s, and its reference turns."""
    from edged.models.blocks import load_models
    from edged.sources.file import read_audio
    from edged_host.replay import extract
    from edged_host.uisrnn_data import read_rttm

    audio = np.concatenate([np.zeros(6 * 16000, np.float32),
                            read_audio(data_dir / "ami-debug" / "dev00.wav")[: 20 * 16000]])
    segments = [(s, a + 6.0, b + 6.0) for s, a, b in read_rttm([data_dir / "ami-debug" / "reference.rttm"])["dev00"]
                if a < 20.0]
    models = load_models(bundle, "int8", threads=1)
    return audio, extract(models, audio, "dev00", (1.0, 5.0)), segments, models


def test_training_sequences_from_the_cache_equal_the_models_path(dev00):
    """``from_features`` (no model run) labels the same observations as ``extract`` over the audio."""
    from edged_host.uisrnn_data import extract, from_features

    audio, feat, segments, models = dev00
    params = PipelineParams()
    want = extract(models, audio, segments, params, "dev00")
    got = from_features(feat, segments, params.latency, params.tau_active)
    assert len(want.labels) > 40 and len(set(want.labels)) >= 2
    assert got.labels == want.labels and np.array_equal(got.steps, want.steps)
    assert np.array_equal(got.purity, want.purity) and np.array_equal(got.embeddings, want.embeddings)
    assert len(from_features(feat, segments, 1.0, params.tau_active).labels) < len(got.labels)  # less end padding


def test_replay_runs_uisrnn_like_the_pipeline(dev00, uisrnn_bundle):
    """The cached replay with ``clustering: uisrnn`` emits exactly the turns of StreamingDiarizer,
    at lag 0 and with the assignments held 2 steps."""
    from edged.diarize.pipeline import StreamingDiarizer
    from edged.diarize.uisrnn import UISRNNNetwork
    from edged.messages import TurnEvent
    from edged.models.blocks import load_models
    from edged_host.replay import replay

    audio, feat, _, _ = dev00
    models = load_models(uisrnn_bundle, "int8", threads=1)  # the same segmentation and embedding models
    network = UISRNNNetwork(models.bundle.uisrnn)
    speakers = set()
    for latency, lag in ((1.0, 0), (1.0, 2), (5.0, 0)):
        params = PipelineParams(latency=latency, clustering="uisrnn", uisrnn_lag=lag, onset=0.6, offset=0.4,
                                min_duration_off=0.2)
        diarizer = StreamingDiarizer(models, params)
        real = [(e.speaker, e.start, e.end) for e in diarizer.run(audio[i:i + 1600] for i in range(0, len(audio), 1600))
                if isinstance(e, TurnEvent)]
        assert real and replay(feat, params, network) == real, (latency, lag)
        speakers |= {s for s, _, _ in real}
    assert len(speakers) >= 2
    with pytest.raises(ValueError, match=r"clustering uisrnn needs the bundle's UIS-RNN network"):
        replay(feat, PipelineParams(clustering="uisrnn"))


def test_cv_inputs_are_refused_in_one_line(bundle, tmp_path):
    from edged_host.cvtune import CVError
    from edged_host.cvuisrnn import check_cache, fold_params

    cache = tmp_path / "cache"
    (cache / "int8").mkdir(parents=True)
    with pytest.raises(CVError, match=r"bundle\.json: missing; run edged-cvtune extract for int8 first"):
        check_cache(cache, "int8", bundle)
    (cache / "int8" / "bundle.json").write_text(json.dumps({"sha256": {"segmentation": "0" * 64, "embedding": "1"}}))
    with pytest.raises(CVError, match=r"made with another segmentation model than .* extract again") as err:
        check_cache(cache, "int8", bundle)
    assert "\n" not in str(err.value)
    cv = {"latencies": {"0.5": {"folds": [{"fold": 0, "params": PipelineParams(latency=0.5).to_dict()}]}}}
    assert fold_params(cv, 0.5, 0).latency == 0.5
    with pytest.raises(CVError, match=r"cv\.json: no latency 5 \(has 0\.5\); let the tune run finish"):
        fold_params(cv, 5.0, 0, "cv.json")
    with pytest.raises(CVError, match=r"latency 0\.5 has no fold 3"):
        fold_params(cv, 0.5, 3)
