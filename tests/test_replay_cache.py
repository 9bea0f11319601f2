"""The cached-features evaluator replays exactly the real StreamingDiarizer; fast DER = pyannote's."""

from __future__ import annotations

import numpy as np
import pytest

from edged.diarize.params import PipelineParams
from edged.diarize.pipeline import StreamingDiarizer
from edged.messages import TurnEvent
from edged.models.blocks import load_models
from edged.sources.file import read_audio
from edged_host.replay import Features, Reference, _Prepared, extract, fast_der, fast_replay, replay

LATENCIES = (1.0, 5.0)


@pytest.fixture(scope="module")
def models(bundle):
    return load_models(bundle, "int8", threads=1)


@pytest.fixture(scope="module")
def recordings(data_dir):
    from edged_host.conversations import ConversationSpec, Effects, apply_effects, build_conversation, load_sources

    silence = np.zeros(7 * 16000, np.float32)  # whole windows where nobody speaks: embeddings skipped
    out = {"falcon": np.concatenate([silence, read_audio(data_dir / "falcon" / "falcon.wav"), silence[:48000]]),
           "dev00": read_audio(data_dir / "ami-debug" / "dev00.wav")[: 25 * 16000]}
    # a noisy far-field conversation
    conv = build_conversation(load_sources(data_dir / "librispeech"),
                              ConversationSpec(speakers=3, duration=24, pause_min=1.0, pause_max=3.0, seed=5),
                              keep_tracks=True)
    rir = read_audio(data_dir / "rooms" / "rir" / "sim_bedroom_0.wav")
    noise = read_audio(data_dir / "rooms" / "noise" / "fan_synthetic.flac")
    out["conv"] = apply_effects(conv, Effects({s: rir for s in conv.levels_db}, noise, 12.0),
                                np.random.default_rng(0)).audio
    return out


PARAMS = [
    PipelineParams(),
    PipelineParams(rho_update=0.2, delta_new=0.8, onset=0.6, offset=0.35, min_duration_on=0.3,
                   min_duration_off=0.4, decision_weight=0.6, tau_active=0.3, decision_threshold=0.35,
                   aggregation="hamming"),
]


def _real(models, audio, params):
    diarizer = StreamingDiarizer(models, params)
    blocks = (audio[i:i + 1600] for i in range(0, len(audio), 1600))
    return [(e.speaker, e.start, e.end) for e in diarizer.run(blocks) if isinstance(e, TurnEvent)]


def test_replay_reproduces_the_pipeline_turns_exactly(models, recordings, tmp_path):
    skipped = 0
    for uri, audio in recordings.items():
        feat = extract(models, audio, uri, LATENCIES)
        feat.save(tmp_path / f"{uri}.npz")
        feat = Features.load(tmp_path / f"{uri}.npz")
        skipped += int(np.isnan(feat.emb[:, :, 0]).all(axis=1).sum())
        assert feat.counts["1"] < feat.counts["5"]  # end padding: latency - step seconds
        for latency in LATENCIES:
            for base in PARAMS:
                params = base.replace(latency=latency)
                real = _real(models, audio, params)
                assert real, (uri, latency)
                assert replay(feat, params) == real, (uri, latency, params)
                assert sorted(fast_replay(_Prepared(feat), params)) == sorted(real), (uri, latency, params)
        # the tuning objective's fast path against the exact replay, over random parameters
        rng = np.random.default_rng(len(uri))
        prep = _Prepared(feat)
        for _ in range(6):
            onset = float(rng.uniform(0.2, 0.9))
            latency = float(rng.choice([0.5, 1.0, 5.0]))
            latency = latency if f"{latency:g}" in feat.counts else 5.0
            params = PipelineParams(latency=latency, rho_update=float(rng.uniform(0, 0.6)),
                                    delta_new=float(rng.uniform(0.4, 1.8)), onset=onset,
                                    offset=onset * float(rng.uniform(0.2, 1.0)),
                                    min_duration_on=float(rng.uniform(0, 1)), min_duration_off=float(rng.uniform(0, 1)),
                                    decision_weight=float(rng.uniform(0, 1)),
                                    decision_threshold=float(rng.choice([0.5, rng.uniform(0.2, 0.8)])),
                                    aggregation=str(rng.choice(["mean", "hamming"])))
            assert sorted(fast_replay(prep, params)) == sorted(replay(feat, params)), params
    assert skipped > 0  # the embedding skip was exercised


def test_fast_der_equals_pyannote_metrics():
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    rng = np.random.default_rng(0)
    for trial in range(20):
        def turns(labels, n):  # per speaker, turns that do not overlap each other (as RTTMs and the pipeline)
            out = []
            for spk in range(4):
                t = float(rng.uniform(0, 3))
                for _ in range(n // 4):
                    a, t = t, t + float(rng.uniform(0.1, 4))
                    out.append((f"{labels}{spk}", round(a, 3), round(t, 3)))
                    t += float(rng.uniform(0.05, 3))
            return out
        ref, hyp = turns("r", 12), turns("h", int(rng.integers(0, 14)))
        uem = [(0.0, 30.0)] if trial % 2 else [(1.0, 12.0), (15.5, 29.0)]
        r_ann, h_ann = Annotation(uri="x"), Annotation(uri="x")
        for i, (l, a, b) in enumerate(ref):
            r_ann[Segment(a, b), i] = l
        for i, (l, a, b) in enumerate(hyp):
            h_ann[Segment(a, b), i] = l
        c = DiarizationErrorRate(collar=0.0).compute_components(
            r_ann, h_ann, uem=Timeline([Segment(*u) for u in uem]).support())
        speech, miss, fa, conf = fast_der(Reference("x", ref, uem), hyp)
        assert speech == pytest.approx(c["total"], abs=1e-6)
        assert (miss, fa, conf) == pytest.approx((c["missed detection"], c["false alarm"], c["confusion"]), abs=1e-6)
