"""Audio files to 16 kHz mono float32: soundfile decoding, polyphase resampling."""

from __future__ import annotations

import time
from math import gcd
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from edged.errors import AudioError


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average channels: (frames,) or (frames, channels) -> (frames,) float32."""
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    return np.ascontiguousarray(samples, dtype=np.float32)


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase resampling (scipy.signal.resample_poly); identity when the rates match."""
    if rate_in == rate_out:
        return np.asarray(samples, dtype=np.float32)
    from scipy.signal import resample_poly

    g = gcd(int(rate_in), int(rate_out))
    return resample_poly(samples, rate_out // g, rate_in // g).astype(np.float32)


def read_audio(path: Path | str, sample_rate: int = 16000) -> np.ndarray:
    """Decode a WAV/FLAC/... file to mono float32 at ``sample_rate``; AudioError names the file."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: audio file not found")
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        raise AudioError(f"{path}: cannot decode audio ({exc}); use WAV, FLAC or OGG") from None
    if samples.shape[0] == 0:
        raise AudioError(f"{path}: audio file is empty")
    return resample(to_mono(samples), rate, sample_rate)


def file_blocks(path: Path | str, sample_rate: int = 16000, block_seconds: float = 0.1) -> Iterator[np.ndarray]:
    """Decode a file and yield ``block_seconds`` blocks of 16 kHz mono float32."""
    samples = read_audio(path, sample_rate)
    block = max(1, int(round(block_seconds * sample_rate)))
    for start in range(0, len(samples), block):
        yield samples[start : start + block]


def pcm_blocks(
    stream: BinaryIO, rate: int, channels: int = 1, dtype: str = "int16", sample_rate: int = 16000,
    block_seconds: float = 0.1,
) -> Iterator[np.ndarray]:
    """Raw interleaved PCM (``int16``/``int32``/``float32``) from a binary stream -> 16 kHz mono blocks.

    Resampling is done per block with a polyphase filter; for rates other than 16 kHz prefer
    files, whose whole-signal resampling has no block edges.
    """
    kind = np.dtype(dtype)
    if kind not in (np.dtype("int16"), np.dtype("int32"), np.dtype("float32")):
        raise AudioError(f"raw PCM dtype {dtype!r} is not supported; use int16, int32 or float32")
    frame_bytes = kind.itemsize * channels
    block_bytes = max(1, int(round(block_seconds * rate))) * frame_bytes
    scale = 1.0 / (float(np.iinfo(kind).max) + 1.0) if kind.kind == "i" else 1.0  # as soundfile: int16/32768
    pending = b""
    while True:
        data = stream.read(block_bytes)
        if not data:
            break
        data = pending + data
        usable = len(data) - len(data) % frame_bytes
        pending = data[usable:]
        pcm = np.frombuffer(data[:usable], dtype=kind).reshape(-1, channels).astype(np.float32) * scale
        yield resample(to_mono(pcm), rate, sample_rate)


def paced(blocks: Iterator[np.ndarray], sample_rate: int = 16000, clock=time.monotonic, sleep=time.sleep) -> Iterator[np.ndarray]:
    """Replay blocks at wall-clock speed, as if they came from a microphone."""
    origin = clock()
    sent = 0
    for block in blocks:
        due = origin + sent / sample_rate
        delay = due - clock()
        if delay > 0:
            sleep(delay)
        yield block
        sent += len(block)
