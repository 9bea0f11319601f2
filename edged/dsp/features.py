"""Kaldi-compatible log-mel filterbank (fbank) in numpy, without torch.

Matches ``torchaudio.compliance.kaldi.fbank(wav, num_mel_bins=80, sample_frequency=16000,
dither=0.0)`` with its other defaults: snip_edges, remove_dc_offset, preemphasis 0.97,
povey window, FFT size rounded up to a power of two, power spectrum, low_freq 20 Hz,
high_freq at Nyquist, no energy column, log floor at float32 epsilon. This is the CAM++
(3D-Speaker) front end, which then subtracts the per-segment mean over time
(``FbankConfig.mean_normalize``).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from edged.dsp.frames import FrameGrid

__all__ = ["FbankConfig", "Fbank", "RollingFbank"]

# std::numeric_limits<float>::epsilon(), the floor Kaldi and torchaudio put under the log.
_EPSILON = float(np.finfo(np.float32).eps)
_WINDOWS = ("povey", "hanning", "hamming", "rectangular")
# numpy >= 2 can write an FFT into a given array; older numpy allocates one.
_FFT_HAS_OUT = int(np.__version__.split(".")[0]) >= 2


@dataclass(frozen=True)
class FbankConfig:
    """Settings of the log-mel front end; the defaults are the CAM++ ones."""

    sample_rate: int = 16000
    num_mel_bins: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    preemphasis: float = 0.97
    low_freq: float = 20.0
    high_freq: float = 0.0  # <= 0: offset from Nyquist (Kaldi convention)
    window: str = "povey"
    mean_normalize: bool = True  # subtract the mean over time of each segment

    def frame_grid(self) -> FrameGrid:
        """Timing of the output frames relative to the segment start (snip_edges)."""
        return FrameGrid.from_samples(
            step=int(round(self.frame_shift_ms * self.sample_rate / 1000)),
            duration=int(round(self.frame_length_ms * self.sample_rate / 1000)),
            sample_rate=self.sample_rate,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the settings, for a model manifest."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FbankConfig":
        """Inverse of ``to_dict``; unknown keys raise ValueError."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown fbank setting(s) {unknown}; expected a subset of {sorted(known)}"
            )
        return cls(**dict(data))


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray | float:
    return 1127.0 * np.log(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _window(kind: str, size: int) -> np.ndarray:
    """Symmetric analysis window of ``size`` samples (float64), as Kaldi defines it."""
    n = np.arange(size, dtype=np.float64)
    a = 2.0 * math.pi / (size - 1)
    if kind == "hanning":
        return 0.5 - 0.5 * np.cos(a * n)
    if kind == "povey":
        return (0.5 - 0.5 * np.cos(a * n)) ** 0.85
    if kind == "hamming":
        return 0.54 - 0.46 * np.cos(a * n)
    if kind == "rectangular":
        return np.ones(size)
    raise ValueError(f"unknown window {kind!r}; use one of {', '.join(_WINDOWS)}")


def _mel_banks(
    num_bins: int, fft_size: int, sample_rate: float, low_freq: float, high_freq: float
) -> np.ndarray:
    """Triangular mel filters, shape (fft_size // 2, num_bins); the Nyquist bin is left out
    because Kaldi gives it zero weight."""
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    if not (0.0 <= low_freq < nyquist and 0.0 < high_freq <= nyquist and low_freq < high_freq):
        raise ValueError(
            f"bad mel range low_freq={low_freq}, high_freq={high_freq} for Nyquist {nyquist}; "
            f"need 0 <= low_freq < high_freq <= Nyquist"
        )
    mel_low, mel_high = _hz_to_mel(low_freq), _hz_to_mel(high_freq)
    delta = (mel_high - mel_low) / (num_bins + 1)
    b = np.arange(num_bins, dtype=np.float64)[:, None]
    left, center, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
    mel = _hz_to_mel(sample_rate / fft_size * np.arange(fft_size // 2))[None, :]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    return np.maximum(0.0, np.minimum(up, down)).T


class Fbank:
    """Log-mel filterbank extractor; window and mel matrix are built once per config.

    Thread-safe: scratch buffers are per thread and reused across calls, so a call allocates
    little beyond its result. ``block_frames`` frames go through the FFT at a time.
    """

    def __init__(self, config: FbankConfig | None = None, block_frames: int = 128) -> None:
        cfg = config if config is not None else FbankConfig()
        if cfg.sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {cfg.sample_rate}")
        if cfg.num_mel_bins <= 3:
            raise ValueError(f"num_mel_bins must be > 3, got {cfg.num_mel_bins}")
        if not 0.0 <= cfg.preemphasis <= 1.0:
            raise ValueError(f"preemphasis must be in [0, 1], got {cfg.preemphasis}")
        if block_frames < 1:
            raise ValueError(f"block_frames must be >= 1, got {block_frames}")
        # Same truncation as Kaldi/torchaudio: int(rate * ms * 0.001).
        self.frame_length = int(cfg.sample_rate * cfg.frame_length_ms * 0.001)
        self.frame_shift = int(cfg.sample_rate * cfg.frame_shift_ms * 0.001)
        if self.frame_length < 2 or self.frame_shift < 1:
            raise ValueError(
                f"frame_length_ms={cfg.frame_length_ms} and frame_shift_ms={cfg.frame_shift_ms} "
                f"give {self.frame_length} and {self.frame_shift} samples; need >= 2 and >= 1"
            )
        self.fft_size = 1 << (self.frame_length - 1).bit_length()  # next power of two
        self.config = cfg
        self.block_frames = block_frames
        window = _window(cfg.window, self.frame_length)
        mel = _mel_banks(
            cfg.num_mel_bins, self.fft_size, cfg.sample_rate, cfg.low_freq, cfg.high_freq
        ).astype(np.float32)
        window.flags.writeable = False
        mel.flags.writeable = False
        self.window = window  # (frame_length,) float64
        self.mel_matrix = mel  # (fft_size // 2, num_mel_bins) float32
        self._local = threading.local()

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for ``num_samples`` samples (snip_edges: whole frames only)."""
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        if num_samples < self.frame_length:
            return 0
        return 1 + (num_samples - self.frame_length) // self.frame_shift

    def __call__(self, waveform: np.ndarray) -> np.ndarray:
        """Features of one mono waveform (samples,) of floats in [-1, 1]: float32
        (num_frames(samples), num_mel_bins), mean over time removed if mean_normalize."""
        wav = self._check(waveform, ndim=1, what="waveform", shape_hint="(samples,)")
        return self._compute(wav[None, :])[0]

    def batch(self, waveforms: np.ndarray) -> np.ndarray:
        """Features of equal-length waveforms (batch, samples): float32
        (batch, frames, num_mel_bins); item i equals ``self(waveforms[i])``."""
        wav = self._check(waveforms, ndim=2, what="waveforms", shape_hint="(batch, samples)")
        return self._compute(wav)

    def _check(self, x: Any, ndim: int, what: str, shape_hint: str) -> np.ndarray:
        arr = np.asarray(x)
        if arr.dtype.kind in "iu":
            raise ValueError(
                f"{what} has integer dtype {arr.dtype}; convert to float32 in [-1, 1] first "
                f"(for int16 PCM: x.astype(np.float32) / 32768)"
            )
        if arr.dtype.kind != "f":
            raise ValueError(
                f"{what} has dtype {arr.dtype}; pass a real float array of samples in [-1, 1]"
            )
        if arr.ndim != ndim:
            raise ValueError(
                f"{what} must be {ndim}-D {shape_hint}, got shape {arr.shape}; "
                f"mix down or select one channel first"
            )
        if arr.shape[-1] < self.frame_length:
            raise ValueError(
                f"{what} has {arr.shape[-1]} samples, fewer than one frame ({self.frame_length} "
                f"samples = {self.config.frame_length_ms} ms at {self.config.sample_rate} Hz); "
                f"pass longer audio"
            )
        arr = arr.astype(np.float32, copy=False)
        if not np.isfinite(arr).all():
            raise ValueError(f"{what} contains NaN or Inf; clean the audio first")
        return arr

    def _workspace(self) -> _Workspace:
        ws = getattr(self._local, "ws", None)
        if ws is None:
            span = (self.block_frames - 1) * self.frame_shift + self.frame_length
            ws = self._local.ws = _Workspace(self.block_frames, self.fft_size, span)
        return ws

    def _compute(self, wav: np.ndarray) -> np.ndarray:
        out = self._log_mel(wav)
        if self.config.mean_normalize:
            out -= out.mean(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)
        return out

    def _log_mel(self, wav: np.ndarray) -> np.ndarray:
        """Log-mel frames (batch, frames, bins) of checked float32 waveforms, before mean removal.
        Each frame depends on its own ``frame_length`` samples only."""
        cfg = self.config
        size, shift, half = self.frame_length, self.frame_shift, self.fft_size // 2
        a = cfg.preemphasis
        batch, m = wav.shape[0], self.num_frames(wav.shape[1])
        view = np.lib.stride_tricks.sliding_window_view
        frames = view(wav, size, axis=-1)[:, ::shift]  # (batch, m, size), no copy
        means = frames.mean(axis=-1, dtype=np.float32)  # DC offset of each frame
        # Kaldi pre-emphasises the DC-free frame: y[j] = (x[j] - mean) - a * (x[j-1] - mean)
        # = (x[j] - a * x[j-1]) - (1 - a) * mean for j >= 1, and y[0] = (1 - a) * (x[0] - mean)
        # (the first sample is its own predecessor). So difference the waveform, then frame it.
        offsets = np.float32(1.0 - a) * means
        first = np.float32(1.0 - a) * (frames[..., 0] - means)
        out = np.empty((batch, m, cfg.num_mel_bins), dtype=np.float32)
        ws = self._workspace()
        # Blocks of frames through reused float64 buffers: large per-call temporaries cost
        # about as much in page faults as the FFT, and numpy's float64 FFT is faster than its
        # float32 one.
        for b in range(batch):
            for start in range(0, m, self.block_frames):
                stop = min(start + self.block_frames, m)
                k = stop - start
                seg = wav[b, start * shift : (stop - 1) * shift + size]
                diff = ws.diff[: seg.shape[0] - 1]
                np.multiply(seg[:-1], -a, out=diff, dtype=np.float64)
                diff += seg[1:]
                x = ws.fft_in[:k, :size]  # columns size .. fft_size-1 stay zero
                diff_frames = view(diff, size - 1)[::shift]  # (k, size - 1)
                np.subtract(diff_frames, offsets[b, start:stop, None], out=x[:, 1:])
                x[:, 0] = first[b, start:stop]
                x *= self.window
                if _FFT_HAS_OUT:
                    spec = np.fft.rfft(ws.fft_in[:k], axis=-1, out=ws.spec[:k])
                else:
                    spec = np.fft.rfft(ws.fft_in[:k], axis=-1)
                # Power |X|^2 of bins 0 .. half-1 (the Nyquist bin has zero mel weight).
                sq = spec.view(np.float64)
                np.square(sq, out=sq)
                power = ws.power[:k]
                re2, im2 = sq[:, 0 : 2 * half : 2], sq[:, 1 : 2 * half : 2]
                np.add(re2, im2, out=power, casting="same_kind")
                np.matmul(power, self.mel_matrix, out=out[b, start:stop])
        np.maximum(out, np.float32(_EPSILON), out=out)
        np.log(out, out=out)
        return out


class RollingFbank:
    """``Fbank`` for successive overlapping windows of one stream, reusing shared frames.

    A frame depends only on its own samples (DC removal, pre-emphasis and window are per frame;
    only the mean removal spans the window). When a window repeats the previous one's samples
    shifted by a whole number of frame shifts (the pipeline's 5 s windows every 0.5 s: 50
    frames), the shared frames are copied instead of recomputed (~90% of them). The overlap is
    checked on the samples, never assumed, so every call returns ``fbank(waveform)`` (equal up
    to float32 rounding) whatever it is fed. Holds one window of samples and its frames;
    thread-safe (concurrent callers just reuse less).
    """

    # shift candidates (frames) tried when the last shift does not fit; a miss costs about one
    # comparison of the window's first frame against every frame of the previous window
    MAX_CANDIDATES = 4

    def __init__(self, fbank: Fbank | None = None) -> None:
        self.fbank = fbank if fbank is not None else Fbank()
        self.config = self.fbank.config
        self._last: tuple[np.ndarray, np.ndarray, int] | None = None  # samples, log-mel, shift
        self.reused_frames = 0
        self.computed_frames = 0

    def num_frames(self, num_samples: int) -> int:
        return self.fbank.num_frames(num_samples)

    def __call__(self, waveform: np.ndarray) -> np.ndarray:
        """Same as ``Fbank.__call__``: (frames, bins) float32, mean over time removed if configured."""
        fb = self.fbank
        wav = fb._check(waveform, ndim=1, what="waveform", shape_hint="(samples,)")
        frames = fb.num_frames(wav.shape[0])
        raw = np.empty((frames, self.config.num_mel_bins), dtype=np.float32)
        last = self._last
        reused, shift = 0, 0
        if last is not None:
            found = self._overlap(last, wav, frames)
            if found is not None:
                shift, reused = found
                raw[:reused] = last[1][shift : shift + reused]
        if reused < frames:
            raw[reused:] = fb._log_mel(wav[None, reused * fb.frame_shift :])[0]
        self.reused_frames += reused
        self.computed_frames += frames - reused
        self._last = (wav.copy(), raw, shift)
        if not self.config.mean_normalize:
            return raw.copy()
        return raw - raw.mean(axis=0, dtype=np.float64).astype(np.float32)

    def _overlap(self, last: tuple[np.ndarray, np.ndarray, int], wav: np.ndarray, frames: int) -> tuple[int, int] | None:
        """(shift, frames to reuse): new frame i equals old frame i + shift for i < reuse."""
        prev, prev_raw, prev_shift = last
        size, step = self.fbank.frame_length, self.fbank.frame_shift

        def fits(k: int) -> int:
            count = min(len(prev_raw) - k, frames)
            if count < 1:
                return 0
            span = (count - 1) * step + size
            return count if np.array_equal(wav[:span], prev[k * step : k * step + span]) else 0

        count = fits(prev_shift)
        if count:
            return prev_shift, count
        heads = np.lib.stride_tricks.sliding_window_view(prev, size)[::step][: len(prev_raw)]
        candidates = np.flatnonzero((heads == wav[:size]).all(axis=1))
        for k in candidates[: self.MAX_CANDIDATES]:
            if k != prev_shift:
                count = fits(int(k))
                if count:
                    return int(k), count
        return None


class _Workspace:
    """Scratch buffers of one thread."""

    def __init__(self, rows: int, fft_size: int, span: int) -> None:
        self.diff = np.empty(span - 1, dtype=np.float64)
        self.fft_in = np.zeros((rows, fft_size), dtype=np.float64)
        self.spec = np.empty((rows, fft_size // 2 + 1), dtype=np.complex128)
        self.power = np.empty((rows, fft_size // 2), dtype=np.float32)
