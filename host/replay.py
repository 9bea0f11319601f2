"""Cached-features evaluation: run the models once per file, replay the cheap stages per trial.

The streaming pipeline's cost is the two models; everything a tuning trial changes (clustering
thresholds, decision blend, aggregation, hysteresis, minimum durations) comes after them. So each
file is cut into the pipeline's windows once (``RollingBuffer``, end-of-stream zero padding for the
longest latency asked; shorter latencies use a prefix of those windows), the segmentation
probabilities and the embeddings of every window are stored, and a trial replays only clustering
-> aggregation -> binarization with the same classes and in the same order as
``StreamingDiarizer``, with either clustering back-end (incremental, or UIS-RNN given the bundle's
network: its assignments come ``uisrnn_lag`` windows late). ``tests/test_replay_cache.py`` and
``tests/test_uisrnn.py`` check that the replayed turns are exactly the real pipeline's.

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
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edged.diarize.aggregation import DelayedAggregator, window_weights
from edged.diarize.binarize import Binarizer
from edged.diarize.clustering import IncrementalClustering
from edged.diarize.params import PipelineParams
from edged.diarize.pipeline import LOCAL_THRESHOLD, chunk_scores
from edged.dsp.buffer import RollingBuffer
from edged.dsp.frames import FrameGrid
from edged.messages import speaker_label

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


def backend(params: PipelineParams, uisrnn: Any = None) -> Any:
    """The pipeline's clustering back-end for ``params``; ``uisrnn`` is the bundle's
    ``UISRNNNetwork``, needed for ``clustering: uisrnn`` only."""
    p = params
    if p.clustering == "incremental":
        return IncrementalClustering(p.tau_active, p.rho_update, p.delta_new, p.max_speakers)
    if uisrnn is None:
        raise ValueError("clustering uisrnn needs the bundle's UIS-RNN network (replay(..., uisrnn=...))")
    from edged.diarize.uisrnn import UISRNNClustering

    return UISRNNClustering(uisrnn, p.tau_active, p.max_speakers, p.uisrnn_lag, p.uisrnn_beam)


def replay(feat: Features, params: PipelineParams, uisrnn: Any = None) -> list[tuple[str, float, float]]:
    """The turns ``StreamingDiarizer`` would emit with ``params`` (speaker label, start, end; ms).

    ``uisrnn``: the bundle's ``UISRNNNetwork`` when ``params.clustering`` is ``uisrnn`` (its
    assignments come ``uisrnn_lag`` windows late and are aggregated then, as in the pipeline)."""
    p = params
    if p.duration != feat.duration or p.step != feat.step or p.gamma != feat.gamma or p.beta != feat.beta:
        raise ValueError("params differ from the cache in duration/step/gamma/beta; extract again")
    if not 0.0 < p.tau_active <= 1.0:
        raise ValueError("tau_active must be in (0, 1] for the cache (the embedding skip depends on it otherwise)")
    n = feat.counts.get(_key(p.latency))
    if n is None:
        raise ValueError(f"latency {p.latency:g} not in the cache ({', '.join(feat.counts)}); extract again")
    sr = feat.sample_rate
    window = int(round(feat.duration * sr))
    clustering = backend(p, uisrnn)
    aggregator = DelayedAggregator(p.step, p.latency, p.duration, p.aggregation, start=0.0)
    binarizer = Binarizer(p.onset, p.offset, p.min_duration_on, p.min_duration_off)
    turns: list = []

    def aggregate(ready) -> None:
        for assignment, (scores, i) in ready:
            start = int(feat.starts[i])
            padded = feat.num_real[i] < window
            region, grid = aggregator.push(assignment.apply(scores), feat.grid.at(start / sr),
                                           end=(start + int(feat.num_real[i])) / sr if padded else None)
            if len(region):
                turns.extend(binarizer.push(region, grid).turns)

    for i in range(n):
        probs = feat.probs[i]
        local = (probs >= LOCAL_THRESHOLD).astype(np.float32)
        scores = chunk_scores(probs, local, p)
        aggregate(clustering.push(local, feat.emb[i], (scores, i), update=not feat.num_real[i] < window))
    aggregate(clustering.drain())
    stream_end = (int(feat.starts[n - 1]) + int(feat.num_real[n - 1])) / sr if n else 0.0
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


# ---------------------------------------------------------------- fast replay (tuning objective)
#
# The same computation as ``replay`` with the per-file bookkeeping that does not depend on the
# parameters done once (which output frames each window contributes to, at each latency), the
# aggregation as slice additions in the same order, the clustering without per-call checks, and
# the hysteresis as array operations (offset <= onset). The test compares it with ``replay``.


@dataclass
class _Plan:
    """Parameter-free layout of one file at one latency."""

    n: int  # windows processed
    padded: np.ndarray  # (n,) bool
    ranges: list[tuple[int, int, int]]  # per window: output frames [a, b) it adds to, its frame index at a
    flat: tuple[np.ndarray, np.ndarray, np.ndarray]  # the same as (output frame, window, window frame) rows
    den: np.ndarray  # (T,) windows per output frame
    uncovered: list[tuple[int, int, int]]  # (output frame, newest window, its frame index)
    origin: float  # start of the binarizer's first frame grid
    step: float  # frame step
    fdur: float  # frame duration
    stream_end: float


def plan(feat: Features, latency: float) -> _Plan:
    n = feat.counts[_key(latency)]
    sr, fs, fd = feat.sample_rate, feat.grid.step, feat.grid.duration
    window = int(round(feat.duration * sr))
    out = FrameGrid(0.0, fs, fd)
    frames = feat.probs.shape[1]
    first0 = out.first_at(0.0)
    nxt, limit = first0, math.inf
    stops, offsets, stream_end = [], [], 0.0
    for i in range(n):
        start = int(feat.starts[i]) / sr
        offsets.append(int(round((start - out.start) / out.step)))
        padded = feat.num_real[i] < window
        real_end = (int(feat.starts[i]) + int(feat.num_real[i])) / sr
        stream_end = real_end
        last_end = start + feat.duration
        if padded:
            limit = min(limit, real_end)
        stop = out.first_at(last_end - latency + feat.step)
        if math.isfinite(limit):
            stop = min(stop, out.first_at(limit))
        stop = max(nxt, stop)
        stops.append((nxt, stop))
        nxt = stop
    # flush
    limit = min(limit, stream_end)
    stop = out.first_at(last_end)
    if math.isfinite(limit):
        stop = min(stop, out.first_at(limit))
    stop = max(nxt, stop)
    a_last, _ = stops[-1]
    stops[-1] = (a_last, stop)  # the flush uses the same windows as the last push
    total = stop - first0
    emit = np.empty(total, np.int64)  # push that emits each output frame
    for j, (a, b) in enumerate(stops):
        emit[a - first0 : b - first0] = j
    chunks = int(round(latency / feat.step))
    den = np.zeros(total)
    ranges = []
    for i in range(n):
        # frames emitted by pushes i .. i+chunks-1 that window i covers
        lo = stops[i][0]
        hi = stops[min(n - 1, i + chunks - 1)][1]
        a, b = max(lo, offsets[i]), min(hi, offsets[i] + frames)
        if b > a:
            den[a - first0 : b - first0] += 1
            ranges.append((a - first0, b - first0, a - offsets[i]))
        else:
            ranges.append((0, 0, 0))
    uncovered = [(t, int(emit[t]), int(np.clip(t + first0 - offsets[emit[t]], 0, frames - 1)))
                 for t in np.flatnonzero(den == 0)]
    parts = [(np.arange(a, b), np.full(b - a, i), np.arange(ia, ia + b - a)) for i, (a, b, ia) in enumerate(ranges)
             if b > a]
    flat = tuple(np.concatenate([x[k] for x in parts]).astype(np.int64) for k in range(3)) if parts else \
        (np.zeros(0, np.int64),) * 3
    return _Plan(n, feat.num_real[:n] < window, ranges, flat, den, uncovered, out.start + first0 * out.step, fs, fd,
                 stream_end)


class _Prepared:
    """Per-file arrays the clustering needs, computed once."""

    def __init__(self, feat: Features):
        self.feat = feat
        self.local = (feat.probs >= LOCAL_THRESHOLD).astype(np.float32)
        emb = feat.emb.astype(np.float64)
        norms = np.linalg.norm(emb, axis=2)
        finite = np.isfinite(emb).all(axis=2) & (norms > 0)
        unit = np.zeros_like(emb)
        unit[finite] = emb[finite] / norms[finite][:, None]
        self.unit = unit
        self.finite = finite
        self.maxact = self.local.astype(np.float64).max(axis=1)
        self.meanact = self.local.astype(np.float64).mean(axis=1)
        self.plans: dict[str, _Plan] = {}

    def plan(self, latency: float) -> _Plan:
        key = _key(latency)
        if key not in self.plans:
            self.plans[key] = plan(self.feat, latency)
        return self.plans[key]


def _row_unit(centroids: np.ndarray, g: int) -> np.ndarray:
    row = centroids[g : g + 1]
    norm = np.sqrt(np.add.reduce((row * row).real, axis=1))  # as np.linalg.norm(..., axis=1)
    return row / np.maximum(norm, 1e-12)[:, None]


def _mappings(prep: _Prepared, pl: _Plan, tau: float, rho: float, delta: float, max_speakers: int) -> np.ndarray:
    """``IncrementalClustering.identify`` over the windows: (n, local) global ids (-1: none)."""
    from scipy.optimize import linear_sum_assignment

    n, num_local = pl.n, prep.unit.shape[1]
    active_all = (prep.maxact[:n] >= tau) & prep.finite[:n]
    any_active = active_all.any(axis=1).tolist()
    active = active_all.tolist()
    long = (prep.meanact[:n] >= rho).tolist()
    padded = pl.padded.tolist()
    dim = prep.unit.shape[2]
    centroids = np.zeros((max_speakers, dim))
    cunit = np.zeros((max_speakers, dim))  # unit-norm centroids (zero rows unused), kept up to date
    used = 0  # slots are taken in order and never freed
    out = np.full((n, num_local), -1, np.int64)
    locals_ = range(num_local)
    for i in range(n):
        if not any_active[i]:
            continue  # nothing is assigned, nothing changes
        act, lng = active[i], long[i]
        unit = prep.unit[i]
        if padded[i]:
            saved = (centroids.copy(), cunit.copy(), used)
        mapping = [-1] * num_local
        if used == 0:
            for spk in locals_:
                if act[spk] and used < max_speakers:
                    centroids[used] = unit[spk]
                    cunit[used] = _row_unit(centroids, used)
                    mapping[spk] = used
                    used += 1
        else:
            dist = 1.0 - unit @ cunit.T
            cost = dist.copy()
            cost[:, used:] = 1e6
            for spk in locals_:
                if not act[spk]:
                    cost[spk] = 1e6
            rows, cols = linear_sum_assignment(cost)
            dl = dist.tolist()
            for r, c in zip(rows.tolist(), cols.tolist()):
                if act[r] and c < used and dl[r][c] < delta:
                    mapping[r] = c
            matched = [m >= 0 for m in mapping]
            new = []
            free = max_speakers - used
            for spk in locals_:
                if not act[spk] or matched[spk]:
                    continue
                if lng[spk] and len(new) < free:
                    new.append(spk)
                    continue
                taken = {m for m in mapping if m >= 0}
                for g in np.argsort(dist[spk], kind="stable").tolist():
                    if g < used and g not in taken:
                        mapping[spk] = g
                        break
            for spk in locals_:
                if matched[spk] and lng[spk]:
                    g = mapping[spk]
                    centroids[g] += unit[spk]
                    cunit[g] = _row_unit(centroids, g)
            for spk in new:
                centroids[used] = unit[spk]
                cunit[used] = _row_unit(centroids, used)
                mapping[spk] = used
                used += 1
        out[i] = mapping
        if padded[i]:
            centroids, cunit, used = saved
    return out


def _turns(y: np.ndarray, t0: np.ndarray, now: float, step: float, onset: float, offset: float,
           min_on: float, min_off: float) -> list[tuple[float, float]]:
    """``Binarizer`` turns of one speaker's scores (frame k owns [t0[k], t0[k] + step))."""
    trig = np.where(y > onset, 1, np.where(y < offset, -1, 0))
    idx = np.where(trig != 0, np.arange(len(y)), -1)
    last = np.maximum.accumulate(idx)
    on = np.where(last >= 0, trig[np.maximum(last, 0)] > 0, False)
    if not on.any():
        return []
    d = np.diff(np.concatenate([[0], on.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)  # runs [s, e)
    turns = []
    cur_s = t0[starts[0]]
    cur_e = t0[ends[0] - 1] + step if ends[0] < len(y) else now
    for s, e in zip(starts[1:], ends[1:]):
        closed = t0[s - 1] + step - cur_e >= min_off
        if not closed and t0[s] - cur_e < min_off:
            cur_e = t0[e - 1] + step if e < len(y) else now
            continue
        turns.append((cur_s, cur_e))
        cur_s = t0[s]
        cur_e = t0[e - 1] + step if e < len(y) else now
    turns.append((cur_s, cur_e))
    return [(a, b) for a, b in turns if b - a >= min_on]


def fast_replay(prep: _Prepared, params: PipelineParams) -> list[tuple[str, float, float]]:
    """Same turns as ``replay`` (up to float ties), much faster; needs offset <= onset."""
    p = params
    if p.offset > p.onset:
        raise ValueError("fast_replay needs offset <= onset")
    if p.clustering != "incremental":
        raise ValueError("fast_replay replays the incremental clustering only; use replay")
    pl = prep.plan(p.latency)
    maps = _mappings(prep, pl, p.tau_active, p.rho_update, p.delta_new, p.max_speakers)
    probs = prep.feat.probs[: pl.n]
    scores = chunk_scores(probs, prep.local[: pl.n], p)
    total = len(pl.den)
    S = p.max_speakers
    # every (output frame, window, window frame) contribution, window-major: bincount then adds
    # each frame's contributions in window order, as the aggregator's loop does
    out_idx, win_idx, in_idx = pl.flat
    w = window_weights(p.aggregation, scores.shape[1])[in_idx]  # each contribution's window weight
    vals = w[:, None] * scores[win_idx, in_idx, :]  # (m, local)
    g = maps[win_idx]  # (m, local)
    keep = g >= 0
    bins = (out_idx[:, None] * S + g)[keep]
    num = np.bincount(bins, weights=vals[keep], minlength=total * S).reshape(total, S)
    den = pl.den if p.aggregation == "mean" else np.bincount(out_idx, weights=w, minlength=total)
    out = np.empty_like(num)
    covered = pl.den > 0
    out[covered] = num[covered] / den[covered, None]
    for t, j, k in pl.uncovered:
        row = np.zeros(p.max_speakers)
        for local_spk, g in enumerate(maps[j]):
            if g >= 0:
                row[g] = scores[j][k, local_spk]
        out[t] = row
    half = 0.5 * pl.step
    t0 = pl.origin + np.arange(total) * pl.step + 0.5 * pl.fdur - half
    now = pl.origin + total * pl.step + 0.5 * pl.fdur - half
    turns = []
    for g in np.unique(maps[maps >= 0]):
        for a, b in _turns(out[:, g], t0, now, pl.step, p.onset, p.offset, p.min_duration_on, p.min_duration_off):
            turns.append((speaker_label(int(g)), round(float(a), 3), round(float(min(b, pl.stream_end)), 3)))
    return turns
