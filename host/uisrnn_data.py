"""UIS-RNN training data: labelled embedding sequences made by the edge's own models and chunking.

A recording is cut into the pipeline's windows (``RollingBuffer``: duration/step of the
parameters, the stream's end padded by ``end_padding``), segmented and embedded exactly as
``StreamingDiarizer`` does, and every observation the edge back-end would decode (``edged.diarize.uisrnn.step_observations``: one per active local
speaker, ordered by the centre of its activity) is labelled with the reference speaker that
overlaps its active frames most (frame centres inside reference turns). An observation over no
reference speech gets the empty label and purity 0; training drops observations below a purity.

Sources: recordings with RTTM references, and conversations synthesized from single-speaker
recordings (``edged_host.conversations``) whose references are exact.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from edged.sources.file import read_audio
from edged.dsp.buffer import RollingBuffer
from edged.diarize.params import PipelineParams
from edged.models.blocks import Models
from edged.diarize.pipeline import LOCAL_THRESHOLD, end_padding
from edged.diarize.uisrnn import step_observations

from edged_export.errors import ExportError

log = logging.getLogger(__name__)

Segments = list[tuple[str, float, float]]  # (speaker, start, end) seconds


@dataclass
class LabelledSequence:
    """One recording's observations: embeddings, reference speaker and purity of each, its step."""

    name: str
    embeddings: np.ndarray  # (n, dim) float32, unit norm
    labels: list[str]  # reference speaker ("" where the observation covers no reference speech)
    purity: np.ndarray  # (n,) share of the observation's active frames inside its speaker's turns
    steps: np.ndarray  # (n,) pipeline step of each observation
    source: str  # "rttm" or "synthetic"

    def select(self, min_purity: float) -> tuple[np.ndarray, list[str]]:
        """The observations labelled with at least ``min_purity`` (the training sequence)."""
        keep = [i for i, (lab, p) in enumerate(zip(self.labels, self.purity)) if lab and p >= min_purity]
        return self.embeddings[keep].astype(np.float64), [self.labels[i] for i in keep]


def read_rttm(paths: Sequence[Path]) -> dict[str, Segments]:
    """uri -> reference turns (speaker, start, end), read with ``edged_host.scoring.load_rttm``."""
    from .scoring import load_rttm

    return {uri: [(label, seg.start, seg.end) for seg, _, label in ann.itertracks(yield_label=True)]
            for uri, ann in load_rttm(paths).annotations.items()}


def label_observation(active: np.ndarray, centres: np.ndarray, segments: Segments) -> tuple[str, float]:
    """Reference speaker covering most of the active frames, and that share (0 if none)."""
    times = centres[np.asarray(active, bool)]
    if not len(times) or not segments:
        return "", 0.0
    votes: dict[str, np.ndarray] = {}
    for speaker, start, end in segments:
        hit = votes.setdefault(speaker, np.zeros(len(times), bool))
        hit |= (times >= start) & (times < end)
    best = max(sorted(votes), key=lambda s: int(votes[s].sum()))
    share = float(votes[best].mean())
    return (best, share) if share > 0 else ("", 0.0)


def step_labels(local: np.ndarray, embeddings: np.ndarray, centres: np.ndarray, real_end: float,
                segments: Segments, tau_active: float) -> list[tuple[int, str, float]]:
    """One window's observations in decoding order: (local speaker, reference speaker, purity).

    ``local``: the window's 0/1 activations ``(frames, local)``; ``centres``: its frame centres
    (stream seconds); frames from ``real_end`` on are end-of-stream padding and never vote."""
    real = centres < real_end
    return [(int(k), *label_observation(local[:, k] * real > 0, centres, segments))
            for k in step_observations(local, embeddings, tau_active)]


def _sequence(name: str, windows, segments: Segments, tau_active: float, dim: int, source: str) -> LabelledSequence:
    """``windows``: (step, local, embeddings, frame centres, real end) of every window, in order."""
    embs, labels, purity, steps = [], [], [], []
    for step, local, emb, centres, real_end in windows:
        if not (local.max(axis=0) >= tau_active).any():
            continue
        for k, label, share in step_labels(local, emb, centres, real_end, segments, tau_active):
            embs.append(emb[k])
            labels.append(label)
            purity.append(share)
            steps.append(step)
    return LabelledSequence(name, np.asarray(embs, np.float32).reshape(-1, dim), labels,
                            np.asarray(purity, np.float64), np.asarray(steps, np.int64), source)


def extract(models: Models, audio: np.ndarray, segments: Segments, params: PipelineParams, name: str,
            source: str = "rttm") -> LabelledSequence:
    """Run the edge's segmentation and embeddings over ``audio``; label each observation."""
    buffer = RollingBuffer(models.sample_rate, params.duration, params.step)
    grid = models.segmentation.grid
    chunks = buffer.push(np.asarray(audio, np.float32)) + buffer.flush(tail=end_padding(params))

    def windows():
        for step, chunk in enumerate(chunks):
            probs = models.segmentation(chunk.samples)
            local = (probs >= LOCAL_THRESHOLD).astype(np.float32)
            if not (local.max(axis=0) >= params.tau_active).any():
                continue
            emb = models.embedding(chunk.samples, local, params.gamma, params.beta)
            yield step, local, emb, grid.at(chunk.start).centers(local.shape[0]), chunk.real_end

    return _sequence(name, windows(), segments, params.tau_active, models.bundle.embedding.dim, source)


def from_features(feat, segments: Segments, latency: float, tau_active: float, source: str = "devset") -> LabelledSequence:
    """``extract`` from cached window outputs (``edged_host.replay.Features``), no model run: the
    windows the pipeline processes at ``latency``, labelled alike."""
    n = feat.counts.get(f"{latency:g}")
    if n is None:
        raise ExportError(f"{feat.uri}: latency {latency:g} not in the cache ({', '.join(feat.counts)}); extract again")
    sr = feat.sample_rate
    frames = feat.probs.shape[1]

    def windows():
        for i in range(n):
            start = int(feat.starts[i])
            yield (i, (feat.probs[i] >= LOCAL_THRESHOLD).astype(np.float32), feat.emb[i],
                   feat.grid.at(start / sr).centers(frames), (start + int(feat.num_real[i])) / sr)

    return _sequence(feat.uri, windows(), segments, tau_active, feat.emb.shape[2], source)


def _key(models: Models, params: PipelineParams, what: dict) -> str:
    bundle = models.bundle
    ident = {
        "segmentation": bundle.model("segmentation", models.variant).sha256,
        "embedding": bundle.model("embedding", models.variant).sha256,
        "params": {k: getattr(params, k) for k in ("duration", "step", "latency", "tau_active", "gamma", "beta")},
        "what": what,
        "version": 2,  # 2: the padded end-of-stream windows, as the pipeline
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _cached(cache: Path | None, key: str, make) -> LabelledSequence:
    path = None if cache is None else cache / f"{key}.npz"
    if path is not None and path.is_file():
        z = np.load(path, allow_pickle=False)
        return LabelledSequence(str(z["name"]), z["embeddings"], [str(x) for x in z["labels"]], z["purity"],
                                z["steps"], str(z["source"]))
    seq = make()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, name=seq.name, embeddings=seq.embeddings, labels=np.asarray(seq.labels, dtype=str),
                 purity=seq.purity, steps=seq.steps, source=seq.source)
        tmp.replace(path)
    return seq


def recordings(models: Models, audio: Sequence[Path], references: Sequence[Path], params: PipelineParams,
               cache: Path | None = None) -> list[LabelledSequence]:
    """Sequences of recordings with RTTM references (matched by uri = file stem)."""
    from .inputs import find_audio

    files = find_audio(audio)
    refs = read_rttm(references)
    missing = sorted(set(files) - set(refs))
    if missing:
        raise ExportError(f"no reference turns for {', '.join(missing)}; pass their RTTM with --reference")
    out = []
    for uri, path in sorted(files.items()):
        stat = path.stat()
        key = _key(models, params, {"file": str(path.resolve()), "size": stat.st_size, "mtime": stat.st_mtime_ns,
                                    "segments": refs[uri]})
        log.info("training sequence %s", uri)
        out.append(_cached(cache, key, lambda: extract(models, read_audio(path, models.sample_rate), refs[uri],
                                                         params, uri, "rttm")))
    return out


def conversations(models: Models, source: Path, count: int, params: PipelineParams, duration: float = 60.0,
                  speakers: Sequence[int] = (2, 3, 4), seed: int = 0, cache: Path | None = None) -> list[LabelledSequence]:
    """Sequences of ``count`` conversations synthesized from single-speaker recordings in ``source``
    (seeds ``seed``, ``seed + 1``, ...; the speaker count cycles through ``speakers``)."""
    from .conversations import ConversationSpec, build_conversation, load_sources

    sources = load_sources(source)
    files = sorted(str(p) for ps in sources.values() for p in ps)
    clips: dict = {}
    out = []
    for i in range(count):
        spec = ConversationSpec(speakers=min(speakers[i % len(speakers)], len(sources)), duration=duration,
                                seed=seed + i)
        name = f"synth{seed + i:04d}"
        key = _key(models, params, {"source": files, "spec": repr(spec)})

        def make(spec=spec, name=name) -> LabelledSequence:
            conv = build_conversation(sources, spec, name, clips)
            return extract(models, conv.audio, conv.segments, params, name, "synthetic")

        log.info("training conversation %s", name)
        out.append(_cached(cache, key, make))
    return out
