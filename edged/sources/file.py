"""Audio files and raw PCM -> 16 kHz mono float32 blocks, read a block at a time.

Files are decoded with soundfile in blocks and resampled by the one streaming resampler
(``edged.dsp.resample``), so memory does not grow with the length of a recording.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np

from edged.dsp.resample import StreamResampler, to_mono
from edged.errors import AudioError
from edged.sources.base import BlockSource

BLOCK_SECONDS = 0.1  # what capture delivers, and what files are cut into
PCM_DTYPES = ("int16", "int32", "float32")


def _resampled(blocks: Iterator[np.ndarray], rate: int, sample_rate: int, block: int) -> Iterator[np.ndarray]:
    """Mono blocks at ``rate`` -> blocks of ``block`` samples at ``sample_rate`` (the last shorter)."""
    resampler = StreamResampler(rate, sample_rate)
    pending = np.zeros(0, np.float32)
    for mono in blocks:
        pending = np.concatenate([pending, resampler.process(mono)]) if len(pending) else resampler.process(mono)
        while len(pending) >= block:
            yield pending[:block]
            pending = pending[block:]
    pending = np.concatenate([pending, resampler.flush()])
    for start in range(0, len(pending), block):
        yield pending[start : start + block]


def _open_soundfile(path: Path):
    import soundfile as sf

    if not path.is_file():
        raise AudioError(f"{path}: audio file not found")
    try:
        handle = sf.SoundFile(str(path))
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        raise AudioError(f"{path}: cannot decode audio ({exc}); use WAV, FLAC or OGG") from None
    if handle.frames == 0:
        handle.close()
        raise AudioError(f"{path}: audio file is empty")
    return handle


def file_blocks(path: Path | str, sample_rate: int = 16000, block_seconds: float = BLOCK_SECONDS) -> Iterator[np.ndarray]:
    """Decode a file block by block into ``block_seconds`` blocks of mono float32 at ``sample_rate``.

    The file is opened (and AudioError raised) when the first block is requested."""
    path = Path(path)
    block = max(1, int(round(block_seconds * sample_rate)))
    handle = _open_soundfile(path)
    with handle:
        rate = handle.samplerate
        frames = max(1, int(round(block_seconds * rate)))

        def decoded() -> Iterator[np.ndarray]:
            try:
                for data in handle.blocks(blocksize=frames, dtype="float32", always_2d=True):
                    yield to_mono(data)
            except Exception as exc:
                raise AudioError(f"{path}: cannot decode audio ({exc}); the file may be truncated") from None

        yield from _resampled(decoded(), rate, sample_rate, block)


def read_audio(path: Path | str, sample_rate: int = 16000) -> np.ndarray:
    """A whole file as one array (host tools, short clips); the daemon and ``edged diarize`` stream."""
    blocks = list(file_blocks(path, sample_rate, block_seconds=10.0))
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


def pcm_blocks(stream: BinaryIO, rate: int, channels: int = 1, dtype: str = "int16", sample_rate: int = 16000,
               block_seconds: float = BLOCK_SECONDS) -> Iterator[np.ndarray]:
    """Raw interleaved PCM (int16, int32 or float32) from a binary stream -> mono blocks at ``sample_rate``."""
    if dtype not in PCM_DTYPES:
        raise AudioError(f"raw PCM dtype {dtype!r} is not supported; use {', '.join(PCM_DTYPES)}")
    if rate <= 0 or channels <= 0:
        raise AudioError(f"raw PCM needs a positive rate and channel count, got {rate} Hz, {channels} channels")
    kind = np.dtype(dtype)
    frame_bytes = kind.itemsize * channels
    read_bytes = max(1, int(round(block_seconds * rate))) * frame_bytes
    scale = 1.0 / (float(np.iinfo(kind).max) + 1.0) if kind.kind == "i" else 1.0  # as soundfile: int16/32768

    def decoded() -> Iterator[np.ndarray]:
        pending = b""
        while True:
            data = stream.read(read_bytes)
            if not data:
                return
            data = pending + data
            usable = len(data) - len(data) % frame_bytes
            pending = data[usable:]
            pcm = np.frombuffer(data[:usable], dtype=kind).reshape(-1, channels).astype(np.float32) * scale
            yield to_mono(pcm)

    yield from _resampled(decoded(), rate, sample_rate, max(1, int(round(block_seconds * sample_rate))))


class FileSource(BlockSource):
    """A recording as an audio source: as fast as it decodes (``speed`` None) or replayed at
    ``speed`` times wall-clock speed, as if it were a microphone (``audio.source: file``)."""

    def __init__(self, path: Path | str, sample_rate: int = 16000, block_ms: int = 100, speed: float | None = None):
        self.path = Path(path)
        super().__init__(lambda: file_blocks(self.path, sample_rate, block_ms / 1000), sample_rate, speed, "file")

    def start(self) -> None:
        """Open the file (AudioError names it when unreadable) and start the clock."""
        super().start()
        self._pending = self._first_block()

    def _first_block(self) -> np.ndarray | None:
        assert self._blocks is not None
        block = next(self._blocks, None)  # decodes the header now: errors surface at start
        if block is None:
            self._finished = True
        return block

    def describe(self) -> dict[str, Any]:
        return {"file": str(self.path)}


class PcmSource(BlockSource):
    """Raw PCM from a binary stream (``edged diarize -``)."""

    def __init__(self, stream: BinaryIO, rate: int, channels: int = 1, dtype: str = "int16",
                 sample_rate: int = 16000, speed: float | None = None):
        super().__init__(lambda: pcm_blocks(stream, rate, channels, dtype, sample_rate), sample_rate, speed, "pcm")
