"""A recording replayed at wall-clock speed as if it were a microphone (``audio.source: file``)."""

from __future__ import annotations

from pathlib import Path

from edged.sources.file import FileSource


class FileReplay(FileSource):
    """``FileSource`` paced at ``speed`` times real time (1.0: like a microphone; more for tests)."""

    def __init__(self, path: Path | str, sample_rate: int = 16000, block_ms: int = 100, speed: float = 1.0):
        super().__init__(path, sample_rate, block_ms, speed=speed)
