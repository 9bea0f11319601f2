"""The one streaming loop: an audio source through a ``StreamingDiarizer``.

``Stream`` is what the daemon drives (one bounded ``poll`` at a time, so it can feed the watchdog
and reload between blocks); ``diarize_source`` runs a finite source to its end and yields the
events, for ``edged diarize``, the benchmarks, tuning and UIS-RNN evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from edged.diarize.events import Event
from edged.diarize.pipeline import StreamingDiarizer
from edged.sources.base import AudioSource


class Stream:
    """Reads blocks from ``source`` and pushes them into ``diarizer``.

    Stream time restarts with every new diarizer; when the source is live (it has an
    ``origin``), the diarizer's wall-clock origin follows the source, which moves its origin on
    after dropped audio or a reconnect, so each turn carries the wall-clock time of its audio.
    """

    def __init__(self, source: AudioSource, diarizer: StreamingDiarizer):
        self.source = source
        self.diarizer = diarizer
        self.audio_seconds = 0.0  # all audio read, over every source and diarizer
        self._stream_seconds = 0.0  # audio pushed into the current diarizer
        self._source_seconds = 0.0  # audio delivered by the current source
        self.taps: list[Callable[[np.ndarray], None]] = []  # also see every block (enrollment from live audio)

    @property
    def finished(self) -> bool:
        return self.source.finished

    def poll(self, timeout: float) -> list[Event]:
        """Read at most one block (waiting up to ``timeout`` s) and push it; the events that became final."""
        block = self.source.read(timeout)
        if block is None:
            return []
        seconds = len(block) / self.diarizer.sample_rate
        self.audio_seconds += seconds
        self._stream_seconds += seconds
        self._source_seconds += seconds
        if self.source.origin is not None:
            self.diarizer.wall_origin = self.source.origin + self._source_seconds - self._stream_seconds
        for tap in list(self.taps):
            tap(block)
        return self.diarizer.push(block)

    def flush(self) -> list[Event]:
        """End the diarizer's stream: the open turns. The next block starts a new stream."""
        events = self.diarizer.flush()
        self._stream_seconds = 0.0
        return events

    def replace_diarizer(self, diarizer: StreamingDiarizer) -> list[Event]:
        """Flush the current diarizer and continue with ``diarizer``; the flushed events."""
        events = self.flush()
        self.diarizer = diarizer
        return events

    def replace_source(self, source: AudioSource) -> None:
        """Continue with another (started) source."""
        self.source = source
        self._source_seconds = 0.0


def diarize_source(source: AudioSource, diarizer: StreamingDiarizer, timeout: float = 0.2) -> Iterator[Event]:
    """Start ``source``, stream it to its end through ``diarizer``, yield every event as it
    becomes final (the last ones at the flush), and stop the source."""
    source.start()
    stream = Stream(source, diarizer)
    try:
        while not stream.finished:
            yield from stream.poll(timeout)
        yield from stream.flush()
    finally:
        source.stop()
