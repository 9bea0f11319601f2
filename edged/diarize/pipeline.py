"""The streaming diarization pipeline: audio blocks in, speaker turns and activity events out.

Per step (every ``params.step`` seconds of audio once a full window exists): segmentation ->
overlap-aware embeddings of all local speakers in one call -> a clustering back-end maps local
speakers to global ones -> delayed aggregation of the overlapping windows at ``params.latency``
-> hysteresis binarization -> turn and activity events. All state is bounded.

Embedding weights and clustering see the local activations binarised at 0.5 (as diart, whose
segmentation is hard). Aggregation takes the mean over the overlapping chunks of
``(1 - decision_weight) * probability + decision_weight * decision``, a decision being the
probability binarised at ``decision_threshold``. With the UIS-RNN back-end
a chunk's assignment is final ``uisrnn_lag`` steps later, so turns come
``latency + uisrnn_lag * step`` seconds after the audio.

At the end of a stream the buffer pads ``latency - step`` seconds of zeros (as diart does), so
the last samples are seen by as many windows as earlier ones; windows that reach past the end
are labelled without moving the centroids.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator

import numpy as np

from edged.diarize.aggregation import DelayedAggregator, blend_decisions, decisions_at
from edged.diarize.binarize import Binarizer
from edged.dsp.buffer import Chunk, RollingBuffer
from edged.diarize.backend import ClusteringBackend, PersistentBackend
from edged.diarize.clustering import IncrementalClustering
from edged.diarize.events import ActivityEvent, Event, TurnEvent, speaker_label
from edged.diarize.identify import Identifier, IdentifyingBackend
from edged.diarize.params import PipelineParams
from edged.dsp.frames import FrameGrid
from edged.models.blocks import Models

log = logging.getLogger(__name__)

# a local speaker is speaking in a frame when its activation probability reaches this
LOCAL_THRESHOLD = 0.5


def end_padding(params: PipelineParams) -> float:
    """Seconds of zeros after the last sample at the end of a stream (as diart pads), so the
    last samples are seen by as many windows as earlier ones."""
    return params.latency - params.step


def chunk_scores(probs: np.ndarray, local: np.ndarray, params: PipelineParams) -> np.ndarray:
    """What a chunk adds to the aggregation: its probabilities blended with its 0/1 decisions
    (``decision_weight``, decisions at ``decision_threshold``); ``local`` are the decisions at
    ``LOCAL_THRESHOLD`` the clustering saw."""
    decisions = decisions_at(probs, local, params.decision_threshold, LOCAL_THRESHOLD)
    return blend_decisions(probs, decisions, params.decision_weight)


STEPS = ("segmentation", "embedding", "clustering", "aggregation")


@dataclass
class StepStats:
    """Compute time of recent steps (ms), bounded to the last ``keep`` steps."""

    keep: int = 2000
    total_ms: list[float] = field(default_factory=list)
    parts_ms: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STEPS})
    steps: int = 0
    bad_samples: int = 0

    def add(self, parts: dict[str, float]) -> None:
        self.steps += 1
        self.total_ms.append(sum(parts.values()))
        for name, value in parts.items():
            self.parts_ms[name].append(value)
        if len(self.total_ms) > self.keep:
            del self.total_ms[: -self.keep]
            for values in self.parts_ms.values():
                del values[: -self.keep]

    def percentile(self, q: float, part: str | None = None) -> float:
        values = self.total_ms if part is None else self.parts_ms[part]
        return float(np.percentile(values, q)) if values else float("nan")


class StreamingDiarizer:
    """Feed 16 kHz mono float32 blocks with ``push``; call ``flush`` at end of stream.

    ``wall_origin``: Unix time of stream time 0 for live sources (turns then carry wall-clock
    times too).
    """

    def __init__(self, models: Models, params: PipelineParams | None = None, wall_origin: float | None = None,
                 identifier: Identifier | None = None):
        self.models = models
        self.params = params or PipelineParams()
        p = self.params
        self.sample_rate = models.sample_rate
        self.window_samples = int(round(p.duration * self.sample_rate))
        self.wall_origin = wall_origin
        self.stats = StepStats()
        self.buffer = RollingBuffer(self.sample_rate, p.duration, p.step)
        # the back-end itself, under any enrolled names: its speakers are what a restart keeps
        self.backend = self._backend(models, p)
        self.clustering: ClusteringBackend = self.backend
        self.identifying: IdentifyingBackend | None = None
        if identifier is not None:  # enrolled names in front of the back-end
            self.identifying = IdentifyingBackend(self.clustering, identifier, p.max_speakers, p.tau_active)
            self.clustering = self.identifying
        self.aggregator = DelayedAggregator(p.step, p.latency, p.duration, p.aggregation, start=0.0)
        self.binarizer = Binarizer(p.onset, p.offset, p.min_duration_on, p.min_duration_off)
        self._turn_seq = 0
        self._activity_seq = 0
        self._stream_end = 0.0  # end of the real audio seen so far (stream seconds)

    @staticmethod
    def _backend(models: Models, p: PipelineParams) -> PersistentBackend:
        if p.clustering == "uisrnn":  # assignments come uisrnn_lag steps late
            from edged.diarize.uisrnn import UISRNNClustering

            return UISRNNClustering.from_bundle(models.bundle, p.tau_active, p.max_speakers, p.uisrnn_lag, p.uisrnn_beam)
        return IncrementalClustering(p.tau_active, p.rho_update, p.delta_new, p.max_speakers)

    def label(self, speaker: int) -> str:
        """Global speaker id -> its label: the enrolled name, or ``speaker_<id>``."""
        return self.identifying.label(speaker) if self.identifying is not None else speaker_label(speaker)

    @property
    def num_speakers(self) -> int:
        """Global speakers found so far in this stream."""
        return self.clustering.num_speakers

    def can_update(self, params: PipelineParams) -> bool:
        """True when ``update_params`` can apply ``params`` in place: same stream geometry
        (duration, step, latency, max_speakers) and the same clustering back-end settings."""
        p = self.params
        keys = ("duration", "step", "latency", "max_speakers", "clustering", "uisrnn_lag", "uisrnn_beam")
        return all(getattr(params, k) == getattr(p, k) for k in keys)

    def update_params(self, params: PipelineParams) -> bool:
        """Apply new hyper-parameters in place, keeping the speakers and open turns, when
        ``can_update``; False otherwise (the caller then builds a new diarizer)."""
        if not self.can_update(params):
            return False
        self.params = params
        self.clustering.update(params)
        self.aggregator.strategy = params.aggregation
        b = self.binarizer
        b.onset, b.offset = params.onset, params.offset
        b.min_duration_on, b.min_duration_off = params.min_duration_on, params.min_duration_off
        return True

    def push(self, samples: np.ndarray) -> list[Event]:
        """Add audio; returns the events that became final."""
        samples = np.asarray(samples, dtype=np.float32)
        bad = ~np.isfinite(samples)
        if bad.any():
            count = int(bad.sum())
            if self.stats.bad_samples == 0:
                log.warning("input has NaN/Inf samples; they are replaced by silence (counted in stats)")
            self.stats.bad_samples += count
            samples = np.where(bad, np.float32(0.0), samples)
        events: list[Event] = []
        for chunk in self.buffer.push(samples):
            events.extend(self._process(chunk))
        return events

    def run(self, blocks: Iterable[np.ndarray]) -> Iterator[Event]:
        """Push every block, then flush: the events of one whole stream, as they become final."""
        for block in blocks:
            yield from self.push(block)
        yield from self.flush()

    def flush(self) -> list[Event]:
        """End of stream: process the zero-padded tail, close open turns, reset for a new stream."""
        events: list[Event] = []
        for chunk in self.buffer.flush(tail=end_padding(self.params)):
            events.extend(self._process(chunk))
        for assignment, (scores, chunk) in self.clustering.drain():  # chunks still waiting for labels
            events.extend(self._aggregate(assignment.apply(scores), chunk))
        tail = self.aggregator.flush(end=self._stream_end)
        if tail is not None and len(tail[0]):
            events.extend(self._binarize(*tail))
        out = self.binarizer.flush()
        events.extend(self._events(out))
        self.clustering.reset()
        self._turn_seq = self._activity_seq = 0
        self._stream_end = 0.0
        return events

    def _process(self, chunk: Chunk) -> list[Event]:
        t0 = time.perf_counter()
        probs = self.models.segmentation(chunk.samples)
        local = (probs >= LOCAL_THRESHOLD).astype(np.float32)
        t1 = time.perf_counter()
        if (local.max(axis=0) >= self.params.tau_active).any():
            emb = self.models.embedding(chunk.samples, local, self.params.gamma, self.params.beta)
        else:  # nobody speaks: clustering would ignore every embedding, so skip the model
            emb = np.full((local.shape[1], self.models.bundle.embedding.dim), np.nan, np.float32)
        t2 = time.perf_counter()
        scores = chunk_scores(probs, local, self.params)
        # windows reaching past the end of the stream are mostly padding: they are labelled
        # but do not move the centroids
        padded = chunk.num_real < self.window_samples
        ready = [(a.apply(s), c) for a, (s, c) in self.clustering.push(local, emb, (scores, chunk), update=not padded)]
        t3 = time.perf_counter()
        self._stream_end = chunk.real_end
        events = []
        for ready_scores, ready_chunk in ready:
            events.extend(self._aggregate(ready_scores, ready_chunk))
        t4 = time.perf_counter()
        self.stats.add({"segmentation": 1e3 * (t1 - t0), "embedding": 1e3 * (t2 - t1),
                        "clustering": 1e3 * (t3 - t2), "aggregation": 1e3 * (t4 - t3)})
        return events

    def _aggregate(self, scores: np.ndarray, chunk: Chunk) -> list[Event]:
        padded = chunk.num_real < self.window_samples
        region, grid = self.aggregator.push(scores, self.models.segmentation.grid.at(chunk.start),
                                            end=chunk.real_end if padded else None)
        return self._binarize(region, grid)

    def _binarize(self, region: np.ndarray, grid: FrameGrid) -> list[Event]:
        if not len(region):
            return []
        return self._events(self.binarizer.push(region, grid))

    def _events(self, out) -> list[Event]:
        events: list[Event] = []
        for turn in out.turns:
            if turn.end > self._stream_end:  # the last frame may reach half a frame past the audio
                turn = replace(turn, end=self._stream_end)
            events.append(TurnEvent.from_turn(turn, self._turn_seq, self.wall_origin, self.label))
            self._turn_seq += 1
        for activity in out.activity:
            events.append(ActivityEvent.from_activity(activity, self._activity_seq, self.wall_origin, self.label))
            self._activity_seq += 1
        return events
