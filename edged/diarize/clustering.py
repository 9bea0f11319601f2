"""Incremental speaker clustering across chunks (diart's OnlineSpeakerClustering).

Each chunk's local speakers are matched to global centroids with an optimal assignment (so two
local speakers of one chunk never share a global speaker); unmatched speakers open new centroids.
Memory is one fixed ``(max_speakers, dim)`` centroid array.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from edged.diarize.assignment import linear_sum_assignment
from edged.diarize.backend import Assignment
from edged.diarize.params import PipelineParams

_MASKED = 1e6  # cost of forbidden pairs in the assignment problem
_METRICS = ("cosine", "euclidean")


def _distances(embeddings: np.ndarray, centroids: np.ndarray, metric: str) -> np.ndarray:
    if metric == "cosine":
        norms = np.linalg.norm(centroids, axis=1)
        unit = centroids / np.maximum(norms, 1e-12)[:, None]
        return 1.0 - embeddings @ unit.T  # embeddings are already unit-norm
    diff = embeddings[:, None, :] - centroids[None, :, :]
    return np.linalg.norm(diff, axis=-1)


class IncrementalClustering:
    """Online clustering of local speaker embeddings into at most ``max_speakers`` global ones.

    A local speaker is *active* if its max activation >= ``tau_active`` and its embedding is
    finite, *long* if its mean activation >= ``rho_update``.  Matches at distance >= ``delta_new``
    are rejected.  Unmatched active speakers open a new centroid if long and a slot is free,
    otherwise take the closest centroid not yet used in this chunk.  Matched long speakers add
    their L2-normalised embedding to their centroid.
    """

    def __init__(
        self,
        tau_active: float,
        rho_update: float,
        delta_new: float,
        max_speakers: int = 20,
        metric: str = "cosine",
    ) -> None:
        if metric not in _METRICS:
            raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
        if int(max_speakers) != max_speakers or max_speakers < 1:
            raise ValueError(f"max_speakers must be a positive integer, got {max_speakers!r}")
        self.tau_active = float(tau_active)
        self.rho_update = float(rho_update)
        self.delta_new = float(delta_new)
        self.max_speakers = int(max_speakers)
        self.metric = metric
        self._centroids: np.ndarray | None = None
        self._used = np.zeros(self.max_speakers, dtype=bool)

    def reset(self) -> None:
        """Forget all global speakers."""
        self._centroids = None
        self._used[:] = False

    @property
    def centroids(self) -> np.ndarray | None:
        """``(max_speakers, dim)`` centroid sums (zero rows unused); None before any embedding."""
        if self._centroids is None:
            return None
        view = self._centroids.view()
        view.flags.writeable = False
        return view

    @property
    def used(self) -> np.ndarray:
        """Boolean mask of the centroid slots in use."""
        return self._used.copy()

    @property
    def num_speakers(self) -> int:
        """Number of global speakers found so far."""
        return int(self._used.sum())

    def state_signature(self) -> dict[str, str | int]:
        """``Persistent``: a saved state fits a clustering of the same size."""
        return {"backend": "incremental", "max_speakers": self.max_speakers}

    def state(self) -> dict[str, np.ndarray]:
        """The speakers, for ``restore`` (saved across restarts): centroid sums and used slots."""
        dim = 0 if self._centroids is None else self._centroids.shape[1]
        centroids = np.zeros((self.max_speakers, dim)) if self._centroids is None else self._centroids.copy()
        return {"centroids": centroids, "used": self._used.copy()}

    def restore(self, state: Mapping[str, np.ndarray]) -> None:
        """Take speakers saved by ``state`` (ValueError or KeyError when they do not fit this clustering)."""
        centroids = np.asarray(state["centroids"], dtype=np.float64)
        used = np.asarray(state["used"], dtype=bool)
        if centroids.ndim != 2 or centroids.shape[0] != self.max_speakers or used.shape != (self.max_speakers,) \
                or not np.isfinite(centroids).all():
            raise ValueError(f"saved speakers have shape {centroids.shape}, this clustering holds "
                             f"{self.max_speakers} speakers")
        self._centroids = centroids.copy() if used.any() else None
        self._used = used.copy()

    def update(self, params: PipelineParams) -> None:
        """Take new thresholds in place; the speakers are kept."""
        self.tau_active, self.rho_update, self.delta_new = params.tau_active, params.rho_update, params.delta_new

    def push(self, local: np.ndarray, embeddings: np.ndarray, payload: Any,
             update: bool = True) -> list[tuple[Assignment, Any]]:
        """``ClusteringBackend.push``: the chunk's assignment is final at once."""
        return [(self.identify(local, embeddings, update=update), payload)]

    def drain(self) -> list[tuple[Assignment, Any]]:
        """Nothing is held back."""
        return []

    def __call__(self, segmentation: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
        """Identify and return the chunk's ``(frames, max_speakers)`` global activations."""
        return self.identify(segmentation, embeddings).apply(segmentation)

    def identify(self, segmentation: np.ndarray, embeddings: np.ndarray, update: bool = True) -> Assignment:
        """Map the chunk's local speakers to global ids, updating the centroids (with
        ``update=False`` the same mapping is made but the centroids stay as they are: a speaker
        that would open a centroid gets the id of the free slot it would take)."""
        if not update:
            saved = (None if self._centroids is None else self._centroids.copy(), self._used.copy())
            try:
                return self.identify(segmentation, embeddings)
            finally:
                self._centroids, self._used = saved
        seg = np.asarray(segmentation, dtype=np.float64)
        emb = np.asarray(embeddings, dtype=np.float64)
        if seg.ndim != 2 or emb.ndim != 2 or emb.shape[0] != seg.shape[1]:
            raise ValueError(
                "expected segmentation (frames, local) and embeddings (local, dim), got "
                f"{seg.shape} and {emb.shape}"
            )
        num_local, dim = emb.shape
        if self._centroids is None:
            self._centroids = np.zeros((self.max_speakers, dim))
        elif dim != self._centroids.shape[1]:
            raise ValueError(f"embedding dim {dim} differs from the centroids' {self._centroids.shape[1]}")

        norms = np.linalg.norm(emb, axis=1)
        finite = np.isfinite(emb).all(axis=1) & (norms > 0)
        unit = np.zeros_like(emb)
        unit[finite] = emb[finite] / norms[finite, None]
        active = (seg.max(axis=0, initial=-np.inf) >= self.tau_active) & finite
        long = seg.mean(axis=0) >= self.rho_update if len(seg) else np.zeros(num_local, bool)
        mapping = np.full(num_local, -1, dtype=np.int64)

        if not self._used.any():
            # No speaker known yet: every active speaker opens a centroid (diart's first chunk).
            for spk in np.flatnonzero(active):
                if not self._used.all():
                    mapping[spk] = self._add(unit[spk])
            return Assignment(mapping, self.max_speakers)

        dist = _distances(unit, self._centroids, self.metric)
        allowed = active[:, None] & self._used[None, :]
        cost = np.where(allowed, dist, _MASKED)
        rows, cols = linear_sum_assignment(cost)
        for r, c in zip(rows, cols):
            if allowed[r, c] and dist[r, c] < self.delta_new:
                mapping[r] = c
        matched = mapping >= 0

        missed = [s for s in np.flatnonzero(active) if mapping[s] < 0]
        num_free = self.max_speakers - self.num_speakers
        new_speakers: list[int] = []
        for spk in missed:
            if long[spk] and len(new_speakers) < num_free:
                new_speakers.append(spk)
                continue
            taken = set(mapping[mapping >= 0].tolist())
            for g in np.argsort(dist[spk], kind="stable"):
                if self._used[g] and g not in taken:
                    mapping[spk] = g
                    break

        for spk in np.flatnonzero(matched & long):
            self._centroids[mapping[spk]] += unit[spk]
        for spk in new_speakers:
            mapping[spk] = self._add(unit[spk])
        return Assignment(mapping, self.max_speakers)

    def _add(self, embedding: np.ndarray) -> int:
        slot = int(np.flatnonzero(~self._used)[0])
        self._centroids[slot] = embedding
        self._used[slot] = True
        return slot
