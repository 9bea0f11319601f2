"""The speakers of a running stream, saved so that they survive a restart.

One ``.npz`` file (written atomically, 0600): the embedding model's sha256, the save time, which
clustering back-end saved it and its shape (``Persistent.state_signature``: ``incremental`` or
``uisrnn``, ``max_speakers``, the UIS-RNN model's sha256), the back-end's arrays
(``Persistent.state``), the accumulated embeddings and chunk counts of each anonymous speaker,
and which anonymous speakers were given an enrolled name on request (recognitions by voice are
recomputed from the accumulated embeddings at reload). It is reloaded only when
the embedding model and the back-end's signature match and it is not older than the expiry;
otherwise (or when it is corrupt) one warning line and a fresh start.

Files of format 1 (before the back-end was recorded) held only the incremental back-end's state,
whose size is its ``used`` mask: they are still read as incremental states, so an upgrade keeps
the speakers (their aliases are not restored: recognitions are recomputed from the voices).
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edged.profiles.store import atomic_write

log = logging.getLogger(__name__)
FORMAT = "edged-speaker-state/2"
FORMAT_1 = "edged-speaker-state/1"  # incremental back-end only; read, never written
_PARTS = ("clustering", "anonymous")  # array groups, stored as "<part>.<name>"


@dataclass
class SpeakerState:
    """What a restart keeps."""

    # the back-end that saved it and its shape: Persistent.state_signature()
    backend: dict[str, str | int]
    # its speakers: Persistent.state()
    clustering: dict[str, np.ndarray]
    # the anonymous speakers' accumulated embeddings: IdentifyingBackend.anonymous_state()
    anonymous: dict[str, np.ndarray]
    # anonymous id -> the enrolled name it was given on request (IdentifyingBackend.named_aliases)
    aliases: dict[int, str] = field(default_factory=dict)


def describe(signature: dict) -> str:
    """A back-end signature for a log line: ``uisrnn back-end (max_speakers 20, model_sha256 3f2a...)``."""
    rest = [f"{k} {v if len(str(v)) <= 16 else str(v)[:12] + '...'}" for k, v in signature.items() if k != "backend"]
    return f"{signature.get('backend')} back-end" + (f" ({', '.join(rest)})" if rest else "")


def save_state(path: Path, embedding_sha256: str, state: SpeakerState, now: float | None = None) -> None:
    meta = {"format": FORMAT, "embedding_sha256": embedding_sha256, "saved_at": time.time() if now is None else now,
            "backend": state.backend, "aliases": {str(k): v for k, v in state.aliases.items()}}
    arrays = {f"{part}.{k}": np.asarray(v) for part in _PARTS for k, v in getattr(state, part).items()}
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.asarray(json.dumps(meta)), **arrays)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buffer.getvalue())


def _read(path: Path) -> tuple[float, str | None, SpeakerState]:
    """Save time, embedding model sha256 and state of a file of either format (any error: damaged)."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        if meta.get("format") == FORMAT_1:
            # its aliases mixed recognitions with names given on request: none is pinned; the
            # voices are recognised again from their accumulated embeddings
            used = data["used"]
            state = SpeakerState({"backend": "incremental", "max_speakers": len(used)},
                                 {"centroids": data["centroids"], "used": used},
                                 {k: data[k] for k in ("ids", "sums", "counts")})
        elif meta.get("format") == FORMAT:
            if not isinstance(meta.get("backend"), dict):
                raise ValueError("no back-end recorded")
            groups: dict[str, dict[str, np.ndarray]] = {part: {} for part in _PARTS}
            for key in data.files:
                part, _, name = key.partition(".")
                if part in groups:
                    groups[part][name] = data[key]
            aliases = {int(k): str(v) for k, v in meta.get("aliases", {}).items()}
            state = SpeakerState(meta["backend"], groups["clustering"], groups["anonymous"], aliases)
        else:
            raise ValueError(f"format {meta.get('format')!r}")
    return float(meta["saved_at"]), meta.get("embedding_sha256"), state


def load_state(path: Path, embedding_sha256: str, backend: dict[str, str | int], expiry_s: float,
               now: float | None = None) -> SpeakerState | None:
    """The saved state, or None (with one warning line saying why) when it cannot be used:
    unreadable, another embedding model, another back-end or shape than ``backend`` (the running
    one's ``state_signature``), or older than ``expiry_s``."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        saved_at, model, state = _read(path)
    except Exception as exc:  # any damage: numpy, zip, json, keys, types
        log.warning("speaker state %s is unreadable (%s); starting with no known speakers",
                    path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return None
    if model != embedding_sha256:
        log.warning("speaker state %s was saved with another embedding model; starting with no known speakers", path)
        return None
    if state.backend != json.loads(json.dumps(backend)):
        log.warning("speaker state %s was saved by the %s, this pipeline runs the %s; starting with no known "
                    "speakers", path, describe(state.backend), describe(backend))
        return None
    age = (time.time() if now is None else now) - saved_at
    if age > expiry_s:
        log.warning("speaker state %s is %.1f h old (expiry %.1f h); starting with no known speakers",
                    path, age / 3600, expiry_s / 3600)
        return None
    return state
