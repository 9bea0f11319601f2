"""Cached-features evaluation: run the models once per file, replay the cheap stages per trial.

The streaming pipeline's cost is the two models; everything a tuning trial changes (clustering
thresholds, decision blend, aggregation, hysteresis, minimum durations) comes after them. So each
file is cut into the pipeline's windows once (``RollingBuffer``, end-of-stream zero padding for the
longest latency asked; shorter latencies use a prefix of those windows), the segmentation
probabilities and the embeddings of every window are stored, and a trial replays only clustering
-> aggregation -> binarization with the same classes and in the same order as
``StreamingDiarizer``. ``tests/test_replay_cache.py`` checks that the replayed turns are exactly the
real pipeline's.

What the cache fixes: the bundle and variant, ``duration``/``step``, ``gamma``/``beta`` (embedding
weights), and the local 0.5 threshold of the segmentation. The pipeline skips the embedding model
when no local speaker reaches ``tau_active``; as the clustering sees 0/1 local decisions, that is
"no local speaker active" for every ``tau_active`` in (0, 1], which is what the cache stores.

``fast_der`` computes pyannote.metrics' DER (collar 0, overlap scored, optimal one-to-one mapping)
exactly on elementary segments with numpy; it is tested against pyannote.metrics.
"""

from __future__ import annotations

import edged  # noqa: F401  (first: pins the BLAS pools to one thread before numpy loads)

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edged.diarize.aggregation import DelayedAggregator, blend_decisions
from edged.diarize.binarize import Binarizer
from edged.diarize.clustering import IncrementalClustering
from edged.diarize.params import PipelineParams
from edged.dsp.buffer import RollingBuffer
from edged.dsp.frames import FrameGrid
from edged.messages import speaker_label

LOCAL_THRESHOLD = 0.5  # as edged.diarize.pipeline.LOCAL_THRESHOLD
CACHE_VERSION = 1


def _key(latency: float) -> str:
    return f"{latency:g}"


@dataclass
class Features:
    """Per-window model outputs of one file (window ``i`` starts at ``starts[i]`` samples)."""

    uri: str
    sample_rate: int
    duration: float
    step: float
    gamma: float
    beta: float
    grid: FrameGrid  # segmentation frames of a window starting at 0
    starts: np.ndarray  # (n,) int64
    num_real: np.ndarray  # (n,) int64
    probs: np.ndarray  # (n, frames, local) float32
    emb: np.ndarray  # (n, local, dim) float32, NaN where the embedding model was skipped
    counts: dict[str, int]  # latency -> windows the pipeline processes at that latency

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, version=CACHE_VERSION, uri=self.uri, sample_rate=self.sample_rate, duration=self.duration,
                 step=self.step, gamma=self.gamma, beta=self.beta,
                 grid=np.array([self.grid.start, self.grid.step, self.grid.duration]), starts=self.starts,
                 num_real=self.num_real, probs=self.probs, emb=self.emb,
                 count_keys=np.array(list(self.counts)), count_values=np.array(list(self.counts.values())))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Features:
        z = np.load(path)
        if int(z["version"]) != CACHE_VERSION:
            raise ValueError(f"{path}: cache version {int(z['version'])}, expected {CACHE_VERSION}; rebuild it")
        g = z["grid"]
        return cls(str(z["uri"]), int(z["sample_rate"]), float(z["duration"]), float(z["step"]), float(z["gamma"]),
                   float(z["beta"]), FrameGrid(float(g[0]), float(g[1]), float(g[2])), z["starts"], z["num_real"],
                   z["probs"], z["emb"], {str(k): int(v) for k, v in zip(z["count_keys"], z["count_values"])})


def extract(models, samples: np.ndarray, uri: str, latencies: Sequence[float], duration: float = 5.0,
            step: float = 0.5, gamma: float = 3.0, beta: float = 10.0) -> Features:
    """Run segmentation and embeddings on every window the pipeline would see at any of ``latencies``."""
    sr = models.sample_rate
    buffer = RollingBuffer(sr, duration, step)
    chunks = buffer.push(np.asarray(samples, dtype=np.float32))
    counts = {}
    for latency in latencies:
        counts[_key(latency)] = len(chunks) + len(copy.deepcopy(buffer).flush(tail=latency - step))
    chunks += buffer.flush(tail=max(latencies) - step)
    dim = models.bundle.embedding.dim
    probs, embs = [], []
    for chunk in chunks:
        p = models.segmentation(chunk.samples)
        local = (p >= LOCAL_THRESHOLD).astype(np.float32)
        if local.max(axis=0).any():  # some local speaker active: the pipeline runs the embedding model
            e = models.embedding(chunk.samples, local, gamma, beta)
        else:
            e = np.full((local.shape[1], dim), np.nan, np.float32)
        probs.append(p)
        embs.append(e)
    return Features(uri, sr, duration, step, gamma, beta, models.segmentation.grid.at(0.0),
                    np.array([c.start_sample for c in chunks], np.int64), np.array([c.num_real for c in chunks], np.int64),
                    np.stack(probs).astype(np.float32, copy=False), np.stack(embs).astype(np.float32, copy=False), counts)


def replay(feat: Features, params: PipelineParams) -> list[tuple[str, float, float]]:
    """The turns ``StreamingDiarizer`` would emit with ``params`` (speaker label, start, end; ms)."""
    p = params
    if p.duration != feat.duration or p.step != feat.step or p.gamma != feat.gamma or p.beta != feat.beta:
        raise ValueError("params differ from the cache in duration/step/gamma/beta; extract again")
    if not 0.0 < p.tau_active <= 1.0:
        raise ValueError("tau_active must be in (0, 1] for the cache (the embedding skip depends on it otherwise)")
    if p.clustering != "incremental":
        raise ValueError("the cache replays the incremental clustering only")
    n = feat.counts.get(_key(p.latency))
    if n is None:
        raise ValueError(f"latency {p.latency:g} not in the cache ({', '.join(feat.counts)}); extract again")
    sr = feat.sample_rate
    window = int(round(feat.duration * sr))
    clustering = IncrementalClustering(p.tau_active, p.rho_update, p.delta_new, p.max_speakers)
    aggregator = DelayedAggregator(p.step, p.latency, p.duration, p.aggregation, start=0.0)
    binarizer = Binarizer(p.onset, p.offset, p.min_duration_on, p.min_duration_off)
    turns = []
    stream_end = 0.0
    for i in range(n):
        probs = feat.probs[i]
        local = (probs >= LOCAL_THRESHOLD).astype(np.float32)
        scores = blend_decisions(probs, local, p.decision_weight)
        padded = feat.num_real[i] < window
        glob = clustering.identify(local, feat.emb[i], update=not padded).apply(scores)
        start = int(feat.starts[i])
        real_end = (start + int(feat.num_real[i])) / sr
        stream_end = real_end
        region, grid = aggregator.push(glob, feat.grid.at(start / sr), end=real_end if padded else None)
        if len(region):
            turns += binarizer.push(region, grid).turns
    tail = aggregator.flush(end=stream_end)
    if tail is not None and len(tail[0]):
        turns += binarizer.push(*tail).turns
    turns += binarizer.flush().turns
    return [(speaker_label(t.speaker), round(t.start, 3), round(min(t.end, stream_end), 3)) for t in turns]


# ---------------------------------------------------------------- scoring


@dataclass
class Reference:
    """One file's reference turns and scored regions, for ``fast_der``."""

    uri: str
    turns: list[tuple[str, float, float]]
    uem: list[tuple[float, float]]


def reference_from_item(item) -> Reference:
    """From a ``host.scoring.ScoringInput``."""
    turns = [(str(label), seg.start, seg.end) for seg, _, label in item.reference.itertracks(yield_label=True)]
    return Reference(item.uri, turns, [(s.start, s.end) for s in item.uem])


def fast_der(ref: Reference, hyp: Sequence[tuple[str, float, float]]) -> tuple[float, float, float, float]:
    """(speech, missed, false alarm, confusion) seconds, as pyannote.metrics' DER with collar 0."""
    from scipy.optimize import linear_sum_assignment

    def clip(turns):
        out = []
        for label, a, b in turns:
            for u0, u1 in ref.uem:
                s, e = max(a, u0), min(b, u1)
                if e > s:
                    out.append((label, s, e))
        return out

    r, h = clip(ref.turns), clip(hyp)
    bounds = np.unique(np.array([t for _, a, b in r + h for t in (a, b)] + [t for seg in ref.uem for t in seg]))
    if len(bounds) < 2:
        return 0.0, 0.0, 0.0, 0.0
    mids = 0.5 * (bounds[1:] + bounds[:-1])
    dur = np.diff(bounds)
    inside = np.zeros(len(mids), bool)
    for u0, u1 in ref.uem:
        inside |= (mids >= u0) & (mids < u1)

    def activity(turns):
        labels = sorted({t[0] for t in turns})
        act = np.zeros((len(mids), len(labels)), bool)
        index = {lab: i for i, lab in enumerate(labels)}
        for label, a, b in turns:
            act[:, index[label]] |= (mids >= a) & (mids < b)
        return act & inside[:, None]

    R, H = activity(r), activity(h)
    nr, nh = R.sum(1), H.sum(1)
    speech = float(dur @ nr)
    miss = float(dur @ np.maximum(nr - nh, 0))
    fa = float(dur @ np.maximum(nh - nr, 0))
    correct = 0.0
    if R.shape[1] and H.shape[1]:
        cooc = (R * dur[:, None]).T.astype(np.float64) @ H.astype(np.float64)
        rows, cols = linear_sum_assignment(-cooc)
        correct = float(cooc[rows, cols].sum())
    conf = float(dur @ np.minimum(nr, nh)) - correct
    return speech, miss, fa, max(conf, 0.0)


def rates(parts: Sequence[tuple[float, float, float, float]]) -> dict[str, Any]:
    """Summed components -> DER, miss, false alarm, confusion (percent) and speech seconds."""
    s = np.sum(np.asarray(parts, np.float64).reshape(-1, 4), axis=0)
    speech, miss, fa, conf = (float(x) for x in s)
    pct = (lambda x: 100.0 * x / speech) if speech > 0 else (lambda x: float("nan"))
    return {"der": pct(miss + fa + conf), "miss": pct(miss), "false_alarm": pct(fa), "confusion": pct(conf),
            "speech_s": speech, "components_s": [miss, fa, conf]}
