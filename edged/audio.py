"""Audio files to 16 kHz mono float32: soundfile decoding, polyphase resampling."""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np

from .errors import AudioError


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
