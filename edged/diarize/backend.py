"""The clustering back-end protocol: local speakers of each chunk -> global speakers.

Two back-ends implement it: incremental clustering (``edged.diarize.clustering``, diart's) and
the UIS-RNN decoder (``edged.diarize.uisrnn``), whose assignments come ``lag`` chunks late. Both
are also ``Persistent``: their speakers can be saved and restored, so they survive a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol

import numpy as np

from edged.diarize.params import PipelineParams


@dataclass(frozen=True)
class Assignment:
    """``mapping[local]`` is the global speaker id of each local speaker, or -1 if unassigned."""

    mapping: np.ndarray
    num_global: int

    def apply(self, segmentation: np.ndarray) -> np.ndarray:
        """``(frames, local)`` activations -> ``(frames, num_global)``; see ``to_global``."""
        return to_global(segmentation, self.mapping, self.num_global)


def to_global(segmentation: np.ndarray, mapping: np.ndarray, num_global: int) -> np.ndarray:
    """Place each assigned local speaker's column at its global id; unassigned ones are dropped
    and global speakers absent from the chunk are zero."""
    seg = np.asarray(segmentation)
    if seg.ndim != 2 or seg.shape[1] != len(mapping):
        raise ValueError(
            f"segmentation must be (frames, {len(mapping)}) for this mapping, got shape {seg.shape}"
        )
    out = np.zeros((seg.shape[0], num_global), dtype=seg.dtype)
    assigned = np.flatnonzero(np.asarray(mapping) >= 0)
    out[:, np.asarray(mapping)[assigned]] = seg[:, assigned]
    return out


class ClusteringBackend(Protocol):
    """Assigns each chunk's local speakers to global speakers, possibly some chunks late."""

    @property
    def num_speakers(self) -> int:
        """Global speakers found so far."""
        ...

    def push(self, local: np.ndarray, embeddings: np.ndarray, payload: Any,
             update: bool = True) -> list[tuple[Assignment, Any]]:
        """Add one chunk's local activity ``(frames, local)`` and embeddings ``(local, dim)``;
        returns the chunks whose assignment became final, each with its ``payload``.
        ``update=False``: label the chunk without learning from it (padded end-of-stream windows)."""
        ...

    def drain(self) -> list[tuple[Assignment, Any]]:
        """End of stream: the assignments of every chunk still held back."""
        ...

    def reset(self) -> None:
        """Forget every speaker (a new stream)."""
        ...

    def update(self, params: PipelineParams) -> None:
        """Apply new thresholds in place, keeping the speakers."""
        ...


class Persistent(Protocol):
    """A back-end whose speakers can be saved (``state``) and taken back after a restart (``restore``)."""

    def state_signature(self) -> dict[str, str | int]:
        """What a saved state must match to be restored: ``backend`` (its name) and its shape
        (``max_speakers``, a model's sha256...). JSON-serialisable."""
        ...

    def state(self) -> dict[str, np.ndarray]:
        """The speakers, as arrays."""
        ...

    def restore(self, state: Mapping[str, np.ndarray]) -> None:
        """Replace the speakers by those of ``state``; ValueError or KeyError, changing nothing,
        when the arrays do not fit this back-end."""
        ...


class PersistentBackend(ClusteringBackend, Persistent, Protocol):
    """A clustering back-end whose speakers survive restarts: both of edged's back-ends."""
