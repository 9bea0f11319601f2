"""UIS-RNN speaker clustering on the edge: a torch-free streaming beam-search decoder.

Model (Zhang et al., "Fully Supervised Speaker Diarization", ICASSP 2019; google/uis-rnn):
every speaker has its own GRU state; the running mean of the GRU outputs of a speaker predicts
its next embedding, with a diagonal Gaussian of variance ``sigma2``. A new observation either
stays with the last speaker (prior ``1 - p``, ``p`` = transition bias), returns to an earlier
speaker ``k`` (``p * N_k / (N + alpha)``, ``N_k`` = blocks of ``k``, the Chinese restaurant
process) or opens a new speaker (``p * alpha / (N + alpha)``), whose prediction is the GRU's
output for a zero input from the trained initial state.

``UISRNNDecoder`` is the reference ``UISRNN.predict`` (look_ahead 1, test_iteration 1) made
online: the same scores, ranking and beam update per observation, plus fixed-lag commitment.
After step ``t`` the labels of step ``t - lag`` are taken from the best hypothesis and every
hypothesis that disagrees with them is dropped, so committed labels never change and all kept
hypotheses name their speakers alike. With ``lag=None`` nothing is committed before ``finish``
(offline: the reference's result). Memory per hypothesis: at most ``max_speakers`` GRU states
and the labels of the last ``lag + 1`` steps; time per observation: ``beam`` GRU steps in one
batched ONNX call plus ``beam * max_speakers`` distance terms.

``UISRNNClustering`` is the pipeline back-end (``pipeline.clustering: uisrnn``): one observation
per active local speaker of a chunk, in order of the centre of its activity, and two local
speakers of one chunk never share a global speaker. The assignment of chunk ``t`` is known after
chunk ``t + lag``, so the pipeline holds each chunk's activations until then and aggregation
runs ``lag`` steps later: turns are published ``latency + lag * step`` seconds after the audio.

Across a restart (``Persistent``: ``state``/``restore``) only the best hypothesis is kept: each
of its speakers' running mean, GRU state and observation/block counts (the reference's
``BeamState`` without the trace) and its last speaker, i.e. the speakers ``finish`` would commit;
the other hypotheses and the uncommitted labels are dropped. To the decoder the restart is a
pause in the speech: a returning voice is scored against its old mean and keeps its label.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from edged.models.bundle import Bundle, UISRNNInfo
from edged.diarize.backend import Assignment
from edged.diarize.params import PipelineParams
from edged.errors import ConfigError
from edged.models.runtime import DEFAULT_PROVIDERS, create_session

INPUTS = ("observation", "hidden")
# how a speaker's prediction averages its GRU outputs: "reference" as uisrnn's predict (the
# outputs after each of its observations), "training" as uisrnn's training loss (also the
# zero-input output that predicted its first observation)
MEANS = ("reference", "training")
OUTPUTS = ("mean", "hidden_out")
STATE = ("means", "hidden", "counts", "blocks", "last")  # the arrays of UISRNNDecoder.state


class UISRNNNetwork:
    """The exported GRU + projection, one step for a batch of speakers; with the decoder constants."""

    def __init__(self, info: UISRNNInfo, threads: int = 1, providers: Sequence[str] = DEFAULT_PROVIDERS):
        self.info = info
        self.session = create_session(info.file.path, intra_op_threads=threads, inter_op_threads=1, providers=providers)
        self.dim = info.observation_dim
        self.sigma2 = np.asarray(info.sigma2, dtype=np.float64)
        self.transition_bias = float(info.transition_bias)
        self.crp_alpha = float(info.crp_alpha)
        self.input_scale = float(info.input_scale)  # observation = embedding * input_scale
        init = np.asarray(info.init_hidden, dtype=np.float32)[None]  # (1, depth, hidden)
        mean0, hidden0 = self.step(np.zeros((1, self.dim), np.float32), init)
        self.new_mean = mean0[0].astype(np.float64)  # prediction for a new speaker's first embedding
        self.new_hidden = hidden0[0]  # its state before that embedding

    def step(self, observations: np.ndarray, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(batch, dim)`` inputs and ``(batch, depth, hidden)`` states -> GRU output means
        ``(batch, dim)`` and new states ``(batch, depth, hidden)``."""
        x = np.ascontiguousarray(observations, dtype=np.float32)
        h = np.ascontiguousarray(np.transpose(hidden, (1, 0, 2)), dtype=np.float32)
        mean, h_out = self.session.run(list(OUTPUTS), {"observation": x, "hidden": h})
        return mean, np.transpose(h_out, (1, 0, 2))


@dataclass
class _Hypothesis:
    score: float  # negative log likelihood of everything seen
    means: np.ndarray  # (K, dim) float64: running mean of each speaker's GRU outputs
    hidden: np.ndarray  # (K, depth, hidden) float32: each speaker's GRU state
    counts: np.ndarray  # (K,) observations of each speaker
    blocks: np.ndarray  # (K,) CRP blocks (turns) of each speaker
    last: int  # speaker of the previous observation, -1 before any
    labels: tuple[int, ...]  # labels of the observations not yet committed


class UISRNNDecoder:
    """Streaming beam search; ``push_step`` returns the steps whose labels became final."""

    def __init__(self, network: UISRNNNetwork, beam_size: int = 10, lag: int | None = 4, max_speakers: int = 20,
                 mean: str = "reference"):
        if int(beam_size) != beam_size or beam_size < 1:
            raise ConfigError(f"uisrnn beam size {beam_size!r} must be a positive integer")
        if lag is not None and (int(lag) != lag or lag < 0):
            raise ConfigError(f"uisrnn lag {lag!r} must be a whole number of steps >= 0 (or None: offline)")
        if int(max_speakers) != max_speakers or max_speakers < 1:
            raise ConfigError(f"max_speakers {max_speakers!r} must be a positive integer")
        if mean not in MEANS:
            raise ConfigError(f"uisrnn mean {mean!r} is not allowed; choose one of {', '.join(MEANS)}")
        self.net = network
        self.mean = mean
        self.beam_size = int(beam_size)
        self.lag = None if lag is None else int(lag)
        self.max_speakers = int(max_speakers)
        p = network.transition_bias
        self._log_stay = -math.log(1.0 - p)
        self._log_p = math.log(p)
        self._log_alpha = math.log(network.crp_alpha)
        self._inv_2s2 = 1.0 / (2.0 * network.sigma2)
        self.reset()

    def reset(self) -> None:
        """Forget everything: the next observation starts a new stream."""
        d = self.net.dim
        depth, hidden = self.net.new_hidden.shape
        empty = _Hypothesis(0.0, np.zeros((0, d)), np.zeros((0, depth, hidden), np.float32),
                            np.zeros(0, np.int64), np.zeros(0, np.int64), -1, ())
        self._beams: list[_Hypothesis] = [empty]
        self._pending: deque[tuple[int, int]] = deque()  # (step, observations) not yet committed
        self._steps = 0
        self.num_speakers = 0  # speakers in the committed labels

    @property
    def hypotheses(self) -> int:
        return len(self._beams)

    def push_step(self, observations: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Decode one step's observations ``(n, dim)`` (n may be 0; labels within a step differ).

        Returns ``(step, labels)`` for every step committed now, in step order."""
        obs = np.asarray(observations, dtype=np.float64).reshape(-1, self.net.dim)
        step = self._steps
        self._steps += 1
        for i, x in enumerate(obs):
            self._observe(x, within_step=i)
        self._pending.append((step, len(obs)))
        if self.lag is None:
            return []
        return self._commit(step - self.lag)

    def finish(self) -> list[tuple[int, np.ndarray]]:
        """End of stream: commit every pending step from the best hypothesis (the state stays)."""
        return self._commit(self._steps)

    def decode(self, sequence: np.ndarray) -> np.ndarray:
        """Offline: labels of a whole sequence ``(length, dim)``, one observation per step."""
        self.reset()
        out = []
        for x in np.asarray(sequence, dtype=np.float64):
            out += self.push_step(x[None])
        out += self.finish()
        self.reset()
        return np.concatenate([labels for _, labels in out]) if out else np.zeros(0, np.int64)

    def state(self) -> dict[str, np.ndarray]:
        """The speakers of the best hypothesis (those ``finish`` would commit now), for ``restore``:
        running means ``(K, dim)``, GRU states ``(K, depth, hidden)``, observation and block counts
        ``(K,)`` and the speaker of the last observation (-1: none)."""
        b = self._beams[0]
        return {"means": b.means.copy(), "hidden": b.hidden.copy(), "counts": b.counts.copy(),
                "blocks": b.blocks.copy(), "last": np.asarray(b.last, dtype=np.int64)}

    def restore(self, state: Mapping[str, np.ndarray]) -> None:
        """Start a new stream from speakers saved by ``state``: one hypothesis, decoded on as if
        the old stream had paused. ValueError or KeyError, changing nothing, when they do not
        fit this decoder."""
        arrays = {key: np.asarray(state[key]) for key in STATE}
        means, hidden, counts, blocks, last = arrays.values()
        k = len(counts)
        shapes = {"means": (k, self.net.dim), "hidden": (k, *self.net.new_hidden.shape), "counts": (k,),
                  "blocks": (k,), "last": ()}
        got = {key: a.shape for key, a in arrays.items()}
        if got != shapes or k > self.max_speakers:
            raise ValueError(f"saved UIS-RNN speakers have shapes {got}; this decoder needs {shapes} "
                             f"with at most {self.max_speakers} speakers")
        if not all(np.issubdtype(a.dtype, np.number) for a in (means, hidden)) \
                or not (np.isfinite(means).all() and np.isfinite(hidden).all()):
            raise ValueError("saved UIS-RNN means or GRU states are not finite numbers")
        if not all(np.issubdtype(a.dtype, np.integer) for a in (counts, blocks, last)) \
                or not ((blocks >= 1).all() and (blocks <= counts).all() and -1 <= last < k):
            raise ValueError("saved UIS-RNN counts must be whole numbers with 1 <= blocks <= observations, "
                             "and the last speaker one of them")
        self.reset()
        self._beams = [_Hypothesis(0.0, means.astype(np.float64), hidden.astype(np.float32),
                                   counts.astype(np.int64), blocks.astype(np.int64), int(last), ())]
        self.num_speakers = k

    def _observe(self, x: np.ndarray, within_step: int) -> None:
        beams = self._beams
        widest = max(len(b.counts) for b in beams)
        # rows: the reference's (beam_size, clusters + 1) score table, inf where not allowed
        table = np.full((self.beam_size, widest + 1), np.inf)
        new_fit = float(((x - self.net.new_mean) ** 2 * self._inv_2s2).sum())
        taken = []  # (row, label) of speakers already given to an earlier observation of this step
        for r, b in enumerate(beams):
            k = len(b.counts)
            log_norm = math.log(b.blocks.sum() + self.net.crp_alpha)
            if k:
                fit = ((x - b.means) ** 2 * self._inv_2s2).sum(axis=1)
                prior = -(self._log_p + np.log(b.blocks) - log_norm)
                if b.last >= 0:
                    prior[b.last] = self._log_stay
                table[r, :k] = b.score + (fit + prior)
            if k < self.max_speakers:
                table[r, k] = b.score + (new_fit - (self._log_p + self._log_alpha - log_norm))
            if within_step:
                taken += [(r, label) for label in b.labels[-within_step:]]
        if taken:
            masked = table.copy()
            rows, cols = zip(*taken)
            masked[list(rows), list(cols)] = np.inf
            if np.isfinite(masked).any():  # else more local speakers than max_speakers: let them share
                table = masked
        order = np.argsort(table, axis=None)
        keep = int(min(np.isfinite(table).sum(), self.beam_size))
        chosen = [np.unravel_index(i, table.shape) for i in order[:keep]]
        hidden = np.stack([beams[r].hidden[k] if k < len(beams[r].counts) else self.net.new_hidden
                           for r, k in chosen])
        means, states = self.net.step(np.repeat(x[None].astype(np.float32), keep, axis=0), hidden)
        self._beams = [self._extend(beams[r], int(k), float(table[r, k]), means[j], states[j])
                       for j, (r, k) in enumerate(chosen)]

    def _extend(self, b: _Hypothesis, k: int, score: float, mean: np.ndarray, state: np.ndarray) -> _Hypothesis:
        mean = mean.astype(np.float64)
        first = self.mean == "training"  # the zero-input output counts as one more output
        if k < len(b.counts):  # an existing speaker: running mean of its GRU outputs
            n = b.counts[k] + first  # outputs averaged so far
            means = b.means.copy()
            means[k] = (means[k] * n + mean) / (n + 1) if first else (means[k] * (n - 1) + mean) / n
            hidden = b.hidden.copy()
            hidden[k] = state
            counts = b.counts.copy()
            counts[k] += 1
            blocks = b.blocks.copy()
            if k != b.last:
                blocks[k] += 1
        else:  # a new speaker
            if first:
                mean = 0.5 * (self.net.new_mean + mean)
            means = np.vstack([b.means, mean[None]])
            hidden = np.concatenate([b.hidden, state[None]])
            counts = np.append(b.counts, 1)
            blocks = np.append(b.blocks, 1)
        return _Hypothesis(score, means, hidden, counts, blocks, k, b.labels + (k,))

    def _commit(self, upto: int) -> list[tuple[int, np.ndarray]]:
        out = []
        while self._pending and self._pending[0][0] <= upto:
            step, n = self._pending.popleft()
            labels = self._beams[0].labels[:n]  # hypotheses are kept best first
            kept = [b for b in self._beams if b.labels[:n] == labels]
            for b in kept:
                b.labels = b.labels[n:]
            self._beams = kept
            if labels:
                self.num_speakers = max(self.num_speakers, max(labels) + 1)
            out.append((step, np.asarray(labels, dtype=np.int64)))
        return out


def step_observations(local: np.ndarray, embeddings: np.ndarray, tau_active: float) -> np.ndarray:
    """Local speakers that make a UIS-RNN observation, in order: active (max activation >=
    ``tau_active``) with a finite embedding, sorted by the centre of their activity in the chunk.

    Shared by the edge back-end and the host's training-data builder, so both see the same
    sequences."""
    seg = np.asarray(local, dtype=np.float64)
    emb = np.asarray(embeddings)
    finite = np.isfinite(emb).all(axis=1) & (np.linalg.norm(np.nan_to_num(emb), axis=1) > 0)
    active = (seg.max(axis=0, initial=-np.inf) >= tau_active) & finite & (seg.sum(axis=0) > 0)
    idx = np.flatnonzero(active)
    if not len(idx):
        return idx
    frames = np.arange(seg.shape[0], dtype=np.float64)
    centre = (seg[:, idx] * frames[:, None]).sum(axis=0) / seg[:, idx].sum(axis=0)
    return idx[np.lexsort((idx, centre))]


class UISRNNClustering:
    """Pipeline back-end: ``push`` one chunk, get back the chunks whose assignment became final.

    Each chunk comes with an opaque ``payload`` (the pipeline's activations and chunk) returned
    with its Assignment, ``lag`` steps later; ``drain`` returns the rest at end of stream."""

    def __init__(self, network: UISRNNNetwork, tau_active: float, max_speakers: int = 20, lag: int = 0,
                 beam: int = 10):
        self.decoder = UISRNNDecoder(network, beam_size=beam, lag=lag, max_speakers=max_speakers)
        self.tau_active = float(tau_active)
        self.max_speakers = int(max_speakers)
        self._queue: deque[tuple[np.ndarray, int, Any]] = deque()  # (observation order, local speakers, payload)

    @classmethod
    def from_bundle(cls, bundle: Bundle, tau_active: float, max_speakers: int, lag: int, beam: int,
                    threads: int = 1) -> UISRNNClustering:
        if bundle.uisrnn is None:
            raise ConfigError(
                f"pipeline.clustering=uisrnn but the bundle {bundle.root} has no UIS-RNN model; add one with "
                f"edged-export uisrnn --train ... --out {bundle.root}, or set pipeline.clustering: incremental"
            )
        return cls(UISRNNNetwork(bundle.uisrnn, threads=threads), tau_active, max_speakers, lag, beam)

    @property
    def num_speakers(self) -> int:
        """Global speakers in the labels committed so far."""
        return self.decoder.num_speakers

    def reset(self) -> None:
        self.decoder.reset()
        self._queue.clear()

    def state_signature(self) -> dict[str, str | int]:
        """``Persistent``: saved speakers fit the same UIS-RNN model (their GRU states) and size."""
        return {"backend": "uisrnn", "max_speakers": self.max_speakers,
                "model_sha256": self.decoder.net.info.file.sha256}

    def state(self) -> dict[str, np.ndarray]:
        """``UISRNNDecoder.state``: the speakers of the best hypothesis."""
        return self.decoder.state()

    def restore(self, state: Mapping[str, np.ndarray]) -> None:
        """A new stream that knows the saved speakers (``UISRNNDecoder.restore``)."""
        self.decoder.restore(state)
        self._queue.clear()

    def update(self, params: PipelineParams) -> None:
        """Take a new ``tau_active`` in place (the decoder has no other thresholds)."""
        self.tau_active = float(params.tau_active)

    def push(self, local: np.ndarray, embeddings: np.ndarray, payload: Any,
             update: bool = True) -> list[tuple[Assignment, Any]]:
        """Add one chunk's local activity ``(frames, local)`` and embeddings ``(local, dim)``;
        every chunk is decoded (``update`` is ignored: the beam search has no centroids to protect)."""
        order = step_observations(local, embeddings, self.tau_active)
        self._queue.append((order, int(np.shape(local)[1]), payload))
        observations = np.asarray(embeddings, dtype=np.float64)[order] * self.decoder.net.input_scale
        return self._assign(self.decoder.push_step(observations))

    def drain(self) -> list[tuple[Assignment, Any]]:
        """End of stream: the assignments of every chunk still held, from the best hypothesis."""
        return self._assign(self.decoder.finish())

    def _assign(self, committed: list[tuple[int, np.ndarray]]) -> list[tuple[Assignment, Any]]:
        out = []
        for _, labels in committed:
            order, num_local, payload = self._queue.popleft()
            mapping = np.full(num_local, -1, dtype=np.int64)
            mapping[order] = labels
            out.append((Assignment(mapping, self.max_speakers), payload))
        return out
