"""A file replayed at wall-clock speed as if it were a microphone (``audio.source: file``)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edged.sources.file import read_audio


class FileReplay:
    """Same interface as ``AlsaCapture``: ``start``, ``read(timeout)``, ``stop``, ``origin``.

    ``speed`` > 1 replays faster than real time (tests); ``finished`` turns true after the last
    block was read.
    """

    def __init__(self, path: Path | str, sample_rate: int = 16000, block_ms: int = 100, speed: float = 1.0):
        if speed <= 0:
            raise ValueError(f"replay speed must be > 0, got {speed!r}")
        self.path = Path(path)
        self.sample_rate = sample_rate
        self.block = max(1, int(round(block_ms * sample_rate / 1000)))
        self.speed = speed
        self.origin: float | None = None
        self.finished = False
        self._samples = np.zeros(0, np.float32)
        self._next = 0
        self._t0 = 0.0

    def start(self) -> None:
        """Decode the file (AudioError names it when unreadable) and start the clock."""
        self._samples = read_audio(self.path, self.sample_rate)
        self._next = 0
        self.finished = False
        self._t0 = time.monotonic()
        self.origin = time.time()

    def read(self, timeout: float) -> np.ndarray | None:
        """The next block once its last sample is due; None on timeout or after the end."""
        if self._next >= len(self._samples):
            self.finished = True
            return None
        end = min(self._next + self.block, len(self._samples))
        wait = self._t0 + end / self.sample_rate / self.speed - time.monotonic()
        if wait > timeout:
            time.sleep(max(timeout, 0.0))
            return None
        if wait > 0:
            time.sleep(wait)
        block = self._samples[self._next:end]
        self._next = end
        return block

    def stop(self) -> None:
        self._samples = np.zeros(0, np.float32)
        self._next = 0

    @property
    def seconds_read(self) -> float:
        return self._next / self.sample_rate

    def stats_dict(self) -> dict[str, object]:
        return {"source": "file", "file": str(self.path), "position_s": round(self.seconds_read, 3),
                "overruns": 0, "dropped_blocks": 0, "dropped_seconds": 0.0, "reconnects": 0,
                "queue_depth": 0, "device_ok": True}
