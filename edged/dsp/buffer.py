"""Rolling audio buffer: cuts a stream of arbitrary blocks into overlapping fixed windows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Chunk:
    """One window of audio: ``samples`` start at stream sample ``start_sample``.

    Only the first ``num_real`` samples come from the stream; the rest is zero padding
    (only at end of stream).
    """

    index: int
    start_sample: int
    samples: np.ndarray
    num_real: int
    sample_rate: int

    @property
    def start(self) -> float:
        """Start time in stream seconds."""
        return self.start_sample / self.sample_rate

    @property
    def duration(self) -> float:
        """Window duration in seconds (padding included)."""
        return len(self.samples) / self.sample_rate

    @property
    def end(self) -> float:
        """End time in stream seconds (padding included)."""
        return self.start + self.duration

    @property
    def real_end(self) -> float:
        """End time of the real (non-padding) samples."""
        return (self.start_sample + self.num_real) / self.sample_rate


def _whole_samples(seconds: float, sample_rate: int, name: str) -> int:
    n = round(seconds * sample_rate)
    if n <= 0 or abs(n - seconds * sample_rate) > 1e-6:
        raise ValueError(
            f"{name}={seconds} s is not a positive whole number of samples at {sample_rate} Hz; "
            f"pick a multiple of {1 / sample_rate:g} s"
        )
    return n


class RollingBuffer:
    """Emits a ``duration``-long window every ``step`` seconds of new audio.

    Windows start at 0, step, 2*step, ... (stream time).  Memory is one window of samples,
    whatever the block sizes and the stream length.  ``flush`` ends the stream; the buffer then
    starts a new stream at time 0.
    """

    def __init__(self, sample_rate: int, duration: float = 5.0, step: float = 0.5) -> None:
        if int(sample_rate) != sample_rate or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
        self.sample_rate = int(sample_rate)
        self.window = _whole_samples(duration, self.sample_rate, "duration")
        self.hop = _whole_samples(step, self.sample_rate, "step")
        if self.hop > self.window:
            raise ValueError(f"step={step} s must not exceed duration={duration} s")
        self._buf = np.zeros(self.window, dtype=np.float32)
        self.reset()

    def reset(self) -> None:
        """Forget all audio; the next sample is stream sample 0."""
        self._fill = 0  # valid samples in _buf, i.e. stream samples [_next_start, _next_start+_fill)
        self._next_start = 0  # stream sample where the next window starts
        self._total = 0  # stream samples received
        self._count = 0  # windows emitted

    @property
    def samples_seen(self) -> int:
        """Number of stream samples pushed since the last reset/flush."""
        return self._total

    def push(self, block: np.ndarray) -> list[Chunk]:
        """Append a 1-D float block; return the windows it completed (possibly none)."""
        block = np.asarray(block)
        if block.ndim != 1:
            raise ValueError(
                f"audio block must be 1-D (mono), got shape {block.shape}; downmix or pick one channel"
            )
        if not np.issubdtype(block.dtype, np.floating):
            raise ValueError(
                f"audio block must be float in [-1, 1], got {block.dtype}; "
                "convert int16 PCM with block / 32768.0"
            )
        out: list[Chunk] = []
        pos = 0
        n = len(block)
        while pos < n:
            take = min(self.window - self._fill, n - pos)
            self._buf[self._fill : self._fill + take] = block[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == self.window:
                out.append(self._emit(self.window))
                keep = self.window - self.hop
                self._buf[:keep] = self._buf[self.hop :]
                self._fill = keep
                self._next_start += self.hop
        self._total += n
        return out

    def flush(self, tail: float = 0.0) -> list[Chunk]:
        """End of stream: emit the zero-padded window covering the last samples, if any, and
        with ``tail`` > 0 more padded windows every step until one ends ``tail`` seconds after
        the last sample (so the last samples are seen by as many windows as earlier ones, as
        diart pads ``latency - step``). Every emitted window holds some real samples.

        With ``tail`` 0, a stream shorter than one window yields one padded window; an empty
        stream yields none.
        """
        out: list[Chunk] = []
        total = self._total
        target = total + round(tail * self.sample_rate)  # the last window ends at or after this
        covered = self._next_start - self.hop + self.window if self._count else 0
        if total > 0 and (total > covered or covered < target):
            while self._next_start < total:
                real = min(self.window, total - self._next_start)
                self._buf[real:] = 0.0
                out.append(self._emit(real))
                if self._next_start + self.window >= target:
                    break
                self._buf[: self.window - self.hop] = self._buf[self.hop :]
                self._next_start += self.hop
        self.reset()
        return out

    def _emit(self, num_real: int) -> Chunk:
        chunk = Chunk(
            index=self._count,
            start_sample=self._next_start,
            samples=self._buf.copy(),
            num_real=num_real,
            sample_rate=self.sample_rate,
        )
        self._count += 1
        return chunk
