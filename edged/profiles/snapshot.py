"""The speakers of a running stream, saved so that they survive a restart.

One ``.npz`` file (written atomically, 0600): the embedding model's sha256, the save time, the
clustering's centroid sums and used slots, the accumulated embeddings and chunk counts of each
anonymous speaker, and which anonymous speakers were recognised as which enrolled name. It is
reloaded only when the embedding model and the clustering size match and it is not older than
the expiry; otherwise (or when it is corrupt) one warning line and a fresh start.
"""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from edged.profiles.store import atomic_write

log = logging.getLogger(__name__)
FORMAT = "edged-speaker-state/1"


def save_state(path: Path, embedding_sha256: str, state: dict[str, Any], now: float | None = None) -> None:
    """``state``: arrays ``centroids``, ``used``, ``ids``, ``sums``, ``counts`` and ``aliases`` {id: name}."""
    meta = {"format": FORMAT, "embedding_sha256": embedding_sha256, "saved_at": time.time() if now is None else now,
            "aliases": {str(k): v for k, v in state.get("aliases", {}).items()}}
    buffer = io.BytesIO()
    arrays = {k: np.asarray(v) for k, v in state.items() if k != "aliases"}
    np.savez(buffer, meta=np.asarray(json.dumps(meta)), **arrays)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buffer.getvalue())


def load_state(path: Path, embedding_sha256: str, expiry_s: float, now: float | None = None) -> dict[str, Any] | None:
    """The saved state, or None (with one warning line saying why) when it cannot be used."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            state = {k: data[k] for k in ("centroids", "used", "ids", "sums", "counts")}
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}")
        aliases = {int(k): str(v) for k, v in meta.get("aliases", {}).items()}
        saved_at = float(meta["saved_at"])
    except Exception as exc:  # any damage: numpy, zip, json, keys, types
        log.warning("speaker state %s is unreadable (%s); starting with no known speakers",
                    path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return None
    if meta.get("embedding_sha256") != embedding_sha256:
        log.warning("speaker state %s was saved with another embedding model; starting with no known speakers", path)
        return None
    age = (time.time() if now is None else now) - saved_at
    if age > expiry_s:
        log.warning("speaker state %s is %.1f h old (expiry %.1f h); starting with no known speakers",
                    path, age / 3600, expiry_s / 3600)
        return None
    state["aliases"] = aliases
    return state
