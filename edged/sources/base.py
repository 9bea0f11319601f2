"""The audio source protocol, and a source over any iterator of blocks.

Every source delivers 16 kHz mono float32 blocks through ``read(timeout)``; the pipeline never
sees device rates, channel counts or sample formats.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class AudioSource(Protocol):
    """What the streaming loop reads audio from."""

    #: Unix time of the source's sample 0 (moved on after dropped audio), None for offline files
    origin: float | None

    @property
    def finished(self) -> bool:
        """True once a finite source delivered its last block; live sources never finish."""
        ...

    def start(self) -> None:
        """Open the source (AudioError names the problem)."""
        ...

    def read(self, timeout: float) -> np.ndarray | None:
        """The next block, or None when none came within ``timeout`` seconds or after the end."""
        ...

    def stop(self) -> None:
        """Release the device or file."""
        ...

    def stats_dict(self) -> dict[str, Any]:
        """Health figures for the ``stats`` message (``audio`` field)."""
        ...


class BlockSource:
    """An ``AudioSource`` over a function that opens an iterator of 16 kHz blocks.

    ``speed`` None delivers blocks as fast as they are read (offline files, stdin);
    a number replays at that many times wall-clock speed (1.0: like a microphone), and then
    ``origin`` is the wall-clock time of sample 0.
    """

    def __init__(self, open_blocks: Callable[[], Iterator[np.ndarray]], sample_rate: int = 16000,
                 speed: float | None = None, name: str = "stream",
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        if speed is not None and not speed > 0:
            raise ValueError(f"replay speed must be > 0, got {speed!r}")
        self._open = open_blocks
        self.sample_rate = sample_rate
        self.speed = speed
        self.name = name
        self.origin: float | None = None
        self._clock, self._sleep = clock, sleep
        self._blocks: Iterator[np.ndarray] | None = None
        self._pending: np.ndarray | None = None
        self._finished = False
        self._samples = 0
        self._t0 = 0.0

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def seconds_read(self) -> float:
        return self._samples / self.sample_rate

    def describe(self) -> dict[str, Any]:
        """Fields naming what is read, for ``stats_dict``."""
        return {}

    def start(self) -> None:
        self._blocks = self._open()
        self._pending = None
        self._finished = False
        self._samples = 0
        self._t0 = self._clock()
        self.origin = time.time() if self.speed is not None else None

    def read(self, timeout: float) -> np.ndarray | None:
        if self._blocks is None or self._finished:
            return None
        if self._pending is None:
            self._pending = next(self._blocks, None)
            if self._pending is None:
                self._finished = True
                self.stop()
                return None
        if self.speed is not None:
            due = self._t0 + (self._samples + len(self._pending)) / self.sample_rate / self.speed
            wait = due - self._clock()
            if wait > timeout:
                self._sleep(max(timeout, 0.0))
                return None
            if wait > 0:
                self._sleep(wait)
        block, self._pending = self._pending, None
        self._samples += len(block)
        return block

    def stop(self) -> None:
        if isinstance(self._blocks, Generator):  # release its file now, not at garbage collection
            self._blocks.close()
        self._blocks = None

    def stats_dict(self) -> dict[str, Any]:
        return {"source": self.name, **self.describe(), "position_s": round(self.seconds_read, 3), "overruns": 0,
                "dropped_blocks": 0, "dropped_seconds": 0.0, "reconnects": 0, "queue_depth": 0,
                "device_ok": True}
