"""Who is speaking, by name: enrolled voice profiles in front of either clustering back-end.

Pure math: profiles come in as unit vectors with their names (``edged.profiles`` reads them from
disk). ``IdentifyingBackend`` wraps a ``ClusteringBackend`` (incremental or UIS-RNN):

- each chunk's active local speakers are first compared with the profiles (cosine similarity
  of the unit embeddings); a one-to-one assignment (cannot-link: two local speakers of one chunk
  never take the same name, one local speaker never takes two) accepts the pairs whose
  similarity reaches ``threshold``. Those local speakers get the profile's global id (one per
  profile, after the back-end's own ids) and are hidden from the back-end;
- every other local speaker goes to the back-end as before and keeps an anonymous label
  ``speaker_N``. A name can never look like an anonymous label (``check_name`` refuses
  ``speaker_<digits>``), so the two never collide.

The wrapper also sums the unit embeddings each anonymous speaker received (whatever the
back-end). While that accumulated voice reaches ``voice_threshold`` against a profile, the
anonymous speaker is recognised and its chunks go to the name's column; the decision is taken
again at every chunk the speaker receives, so a voice that drifts away from the profile loses
the name (an early, noisy match is not final). An accumulated voice is steadier than one chunk,
so ``voice_threshold`` can be the lower of the two. ``alias`` names an anonymous speaker on request
(over MQTT); such a name is kept. Within one chunk, two local speakers never share a column.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Sequence

import numpy as np

from edged.diarize.assignment import linear_sum_assignment
from edged.diarize.backend import Assignment, ClusteringBackend
from edged.diarize.events import speaker_label
from edged.diarize.params import PipelineParams
from edged.errors import EdgedError

MAX_NAME = 64
_ANONYMOUS = re.compile(r"speaker_\d+", re.IGNORECASE)


class NameError_(EdgedError):
    """A speaker name cannot be used (one-line message)."""


def check_name(name: Any) -> str:
    """The name if it can be used as a speaker label, else NameError_ saying what to change.

    Refused: not a string, empty, longer than 64 characters, ``/``, ``+``, ``#`` (MQTT topic
    characters), control characters, whitespace (the RTTM speaker field is one token: use
    ``Alice_Smith``), and ``speaker_<digits>`` (reserved for anonymous speakers)."""
    if not isinstance(name, str):
        raise NameError_(f"speaker name must be text, got {name!r}; give a name like Alice")
    if not name:
        raise NameError_("speaker name is empty; give a name like Alice")
    if len(name) > MAX_NAME:
        raise NameError_(f"speaker name {name[:20]!r}... has {len(name)} characters; use at most {MAX_NAME}")
    for ch in name:
        if ch in "/+#":
            raise NameError_(f"speaker name {name!r} contains {ch!r}; names may not contain /, + or #")
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            raise NameError_(f"speaker name {name!r} contains a control character; remove it")
        if ch.isspace():
            suggestion = re.sub(r"\s+", "_", name)
            raise NameError_(f"speaker name {name!r} contains whitespace; use e.g. {suggestion!r}")
    if _ANONYMOUS.fullmatch(name):
        raise NameError_(f"speaker name {name!r} looks like an anonymous label (speaker_N); choose a real name")
    return name


def _unit(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(norms, 1e-12)


class Identifier:
    """Enrolled names and their unit profile vectors; matches embeddings one-to-one.

    ``threshold``: cosine similarity one chunk's local speaker needs to take a name;
    ``voice_threshold``: what an anonymous speaker's accumulated voice needs (both calibrated
    by benchmarks/identification.py; the defaults live in ``SpeakersConfig``)."""

    def __init__(self, names: Sequence[str], vectors: np.ndarray | None, threshold: float, voice_threshold: float):
        names = [check_name(n) for n in names]
        if len(set(names)) != len(names):
            raise NameError_(f"duplicate speaker names in {names}; each name once")
        for what, value in (("threshold", threshold), ("voice threshold", voice_threshold)):
            if not -1.0 <= float(value) <= 1.0:
                raise NameError_(f"identification {what} {value!r} is not a cosine similarity; use -1..1")
        self.names = list(names)
        dim = 0 if vectors is None or not len(names) else np.shape(vectors)[1]
        self.vectors = _unit(vectors) if names else np.zeros((0, dim))
        if len(self.vectors) != len(self.names):
            raise ValueError(f"{len(self.names)} names but {len(self.vectors)} profile vectors")
        self.threshold = float(threshold)
        self.voice_threshold = float(voice_threshold)

    def __len__(self) -> int:
        return len(self.names)

    def similarities(self, embeddings: np.ndarray) -> np.ndarray:
        """``(n, dim)`` embeddings -> ``(n, profiles)`` cosine similarities."""
        if not len(self.names):
            return np.zeros((len(embeddings), 0))
        return _unit(embeddings) @ self.vectors.T

    def match(self, embeddings: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Profile index of each embedding (-1: none), one-to-one, similarity >= threshold.

        ``candidates``: boolean mask of the embeddings that may be matched at all."""
        out = np.full(len(embeddings), -1, dtype=np.int64)
        if not len(self.names) or not np.any(candidates):
            return out
        idx = np.flatnonzero(candidates)
        sim = self.similarities(np.asarray(embeddings)[idx])
        cost = np.where(sim >= self.threshold, 1.0 - sim, 1e6)
        rows, cols = linear_sum_assignment(cost)
        for r, c in zip(rows, cols):
            if sim[r, c] >= self.threshold:
                out[idx[r]] = c
        return out

    def add(self, name: str, vector: np.ndarray) -> int:
        """Enroll (or replace) ``name``; its profile index."""
        check_name(name)
        v = _unit(np.asarray(vector, dtype=np.float64)[None])
        if name in self.names:
            i = self.names.index(name)
            self.vectors[i] = v[0]
            return i
        self.vectors = v if not len(self.names) else np.vstack([self.vectors, v])
        self.names.append(name)
        return len(self.names) - 1

    def rename(self, old: str, new: str) -> bool:
        """Give ``old``'s profile the name ``new`` (same vector); False when ``old`` is unknown.
        NameError_ when ``new`` is not a valid name or is enrolled already."""
        check_name(new)
        if old not in self.names:
            return False
        if new in self.names:
            raise NameError_(f"{new!r} is already enrolled; forget it first or choose another name")
        self.names[self.names.index(old)] = new
        return True


class IdentifyingBackend:
    """A ``ClusteringBackend`` with enrolled speakers in front (see the module docstring).

    Global ids: ``0 .. inner_max - 1`` are the back-end's anonymous speakers, ``inner_max + k``
    is the k-th name slot. The number of name slots is fixed at construction (``capacity``,
    at least the profiles given), so names enrolled while running fit without changing the
    stream's shape. ``label(id)`` is the name or ``speaker_<id>``."""

    def __init__(self, inner: ClusteringBackend, identifier: Identifier, inner_max: int, tau_active: float,
                 capacity: int | None = None):
        self.inner = inner
        self.identifier = identifier
        self.inner_max = int(inner_max)
        self.capacity = max(len(identifier), int(capacity if capacity is not None else len(identifier) + 8))
        self.tau_active = float(tau_active)
        self.slot_names: list[str | None] = list(identifier.names) + [None] * (self.capacity - len(identifier))
        self.alias_slots: dict[int, int] = {}  # anonymous id -> name slot it was recognised or named as
        self._pinned: set[int] = set()  # aliases given on request (alias()): never revised
        self._sums: dict[int, np.ndarray] = {}  # anonymous id -> sum of its unit embeddings
        self._counts: dict[int, int] = {}

    # --- labels ------------------------------------------------------------------------
    @property
    def num_global(self) -> int:
        return self.inner_max + self.capacity

    def label(self, speaker: int) -> str:
        """A name slot's name; an anonymous column is always ``speaker_N`` (a recognised or named
        anonymous speaker's chunks are moved to the name's column, so a turn never takes a name
        for chunks that were not mapped to it)."""
        speaker = int(speaker)
        if speaker >= self.inner_max:
            name = self.slot_names[speaker - self.inner_max]
            return name if name is not None else speaker_label(speaker)
        return speaker_label(speaker)

    @property
    def aliases(self) -> dict[int, str]:
        """Anonymous id -> the name it was recognised or named as."""
        return {g: self.slot_names[s] for g, s in self.alias_slots.items() if self.slot_names[s] is not None}

    @property
    def named_aliases(self) -> dict[int, str]:
        """Anonymous id -> the name given to it on request (``alias``); what a restart keeps
        (recognitions are recomputed from the accumulated voices)."""
        return {g: n for g, n in self.aliases.items() if g in self._pinned}

    def alias(self, speaker: int, name: str) -> None:
        """From now on the chunks of anonymous ``speaker`` go to enrolled ``name`` (kept until
        the name is forgotten or the speakers are reset)."""
        self.alias_slots[int(speaker)] = self.slot_names.index(name)
        self._pinned.add(int(speaker))

    def nameable(self) -> list[int]:
        """The anonymous speakers heard and not named on request (one recognised by its voice may
        still be named), by id."""
        return sorted(g for g in self._counts if g not in self._pinned)

    def anonymous_id(self, label: str) -> int | None:
        """``speaker_N`` -> N when that speaker is ``nameable``, else None."""
        m = _ANONYMOUS.fullmatch(label or "")
        if not m:
            return None
        n = int(label.split("_")[1])
        return n if n in self.nameable() else None

    def anonymous_embedding(self, speaker: int) -> tuple[np.ndarray, int] | None:
        """Sum of the unit embeddings an anonymous speaker received, and how many."""
        if speaker not in self._sums:
            return None
        return self._sums[speaker].copy(), self._counts[speaker]

    # --- enrolled names while running ----------------------------------------------------
    def enroll(self, name: str, vector: np.ndarray) -> int:
        """Add or replace a name; the global id of its slot. NameError_ when all slots are taken."""
        if name in self.identifier.names:
            self.identifier.add(name, vector)
            return self.inner_max + self.slot_names.index(name)
        if None not in self.slot_names:
            raise NameError_(f"no room for another name in this stream ({self.capacity}); restart the daemon")
        self.identifier.add(name, vector)
        slot = self.slot_names.index(None)
        self.slot_names[slot] = name
        # keep identifier order == slot order of the named slots
        return self.inner_max + slot

    def forget(self, name: str) -> bool:
        """Remove a name (its slot and any alias); False when unknown."""
        known = name in self.identifier.names
        if name in self.identifier.names:
            i = self.identifier.names.index(name)
            del self.identifier.names[i]
            self.identifier.vectors = np.delete(self.identifier.vectors, i, axis=0)
            slot = self.slot_names.index(name)
            self.slot_names[slot] = None
            for k in [k for k, v in self.alias_slots.items() if v == slot]:
                del self.alias_slots[k]
                self._pinned.discard(k)
        return known

    def rename(self, old: str, new: str) -> bool:
        """Give ``old``'s slot the name ``new``: its chunks (and its aliases) carry ``new`` from
        now on. False when ``old`` is unknown; NameError_ when ``new`` is invalid or taken."""
        if not self.identifier.rename(old, new):
            return False
        self.slot_names[self.slot_names.index(old)] = new
        return True

    # --- ClusteringBackend ----------------------------------------------------------------
    @property
    def num_speakers(self) -> int:
        return self.inner.num_speakers + sum(n is not None for n in self.slot_names)

    def push(self, local: np.ndarray, embeddings: np.ndarray, payload: Any,
             update: bool = True) -> list[tuple[Assignment, Any]]:
        seg = np.asarray(local, dtype=np.float64)
        emb = np.asarray(embeddings, dtype=np.float64)
        finite = np.isfinite(emb).all(axis=1) & (np.linalg.norm(np.nan_to_num(emb), axis=1) > 0)
        active = (seg.max(axis=0, initial=-np.inf) >= self.tau_active) & finite
        named = self._match(emb, active)
        hidden = emb.copy()
        hidden[named >= 0] = np.nan  # the back-end ignores speakers without a finite embedding
        ready = self.inner.push(local, hidden, (named, emb, active, update, payload), update=update)
        return [self._combine(a, p) for a, p in ready]

    def drain(self) -> list[tuple[Assignment, Any]]:
        return [self._combine(a, p) for a, p in self.inner.drain()]

    def reset(self) -> None:
        """Forget the anonymous speakers (names stay: they are not stream state)."""
        self.inner.reset()
        self.alias_slots.clear()
        self._pinned.clear()
        self._sums.clear()
        self._counts.clear()

    def update(self, params: PipelineParams) -> None:
        self.tau_active = float(params.tau_active)
        self.inner.update(params)

    def _match(self, emb: np.ndarray, active: np.ndarray) -> np.ndarray:
        """Local speaker -> name slot (-1: none)."""
        profile = self.identifier.match(np.nan_to_num(emb), active)
        slots = np.full(len(emb), -1, dtype=np.int64)
        for spk in np.flatnonzero(profile >= 0):
            slots[spk] = self.slot_names.index(self.identifier.names[profile[spk]])
        return slots

    def _combine(self, assignment: Assignment, payload: Any) -> tuple[Assignment, Any]:
        named, emb, active, update, inner_payload = payload
        anonymous = np.asarray(assignment.mapping, dtype=np.int64).copy()
        mapping = anonymous.copy()
        for spk in np.flatnonzero(named >= 0):
            mapping[spk] = self.inner_max + named[spk]
        if update:
            for spk in np.flatnonzero((anonymous >= 0) & (anonymous < self.inner_max) & active):
                g = int(anonymous[spk])
                unit = emb[spk] / max(np.linalg.norm(emb[spk]), 1e-12)
                self._sums[g] = self._sums.get(g, 0.0) + unit
                self._counts[g] = self._counts.get(g, 0) + 1
                if g not in self._pinned:
                    self._recognise(g)
        for spk in np.flatnonzero(anonymous >= 0):  # recognised anonymous speakers: the name's column
            slot = self.alias_slots.get(int(anonymous[spk]))
            if slot is not None and self.slot_names[slot] is not None \
                    and self.inner_max + slot not in mapping.tolist():
                mapping[spk] = self.inner_max + slot
        return Assignment(mapping, self.num_global), inner_payload

    def _recognise(self, speaker: int) -> None:
        """Alias an anonymous speaker while its accumulated voice matches a profile (revised at
        every chunk it receives: a voice that drifts away from the profile loses the name)."""
        self.alias_slots.pop(speaker, None)
        if not len(self.identifier):
            return
        sims = self.identifier.similarities(self._sums[speaker][None])[0]
        best = int(np.argmax(sims))
        if sims[best] >= self.identifier.voice_threshold:
            self.alias_slots[speaker] = self.slot_names.index(self.identifier.names[best])

    # --- state ---------------------------------------------------------------------------
    def anonymous_state(self) -> dict[str, Any]:
        """What ``restore_anonymous`` needs: the accumulated embeddings of the anonymous speakers."""
        ids = sorted(self._sums)
        dim = len(next(iter(self._sums.values()))) if ids else 0
        return {"ids": np.asarray(ids, dtype=np.int64),
                "sums": np.asarray([self._sums[i] for i in ids]).reshape(len(ids), dim),
                "counts": np.asarray([self._counts[i] for i in ids], dtype=np.int64)}

    def restore_anonymous(self, ids: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> None:
        self._sums = {int(i): np.asarray(s, dtype=np.float64) for i, s in zip(ids, sums)}
        self._counts = {int(i): int(c) for i, c in zip(ids, counts)}
        self.alias_slots.clear()
        self._pinned.clear()
        for g in self._sums:  # recognitions follow from the voices; requested names come back by alias()
            self._recognise(g)
