"""Stateful streaming polyphase resampler, equal to ``scipy.signal.resample_poly``, in numpy.

``StreamResampler(rate_in, rate_out)`` uses the same filter as ``resample_poly`` (a windowed-sinc
lowpass as ``firwin`` makes it: ``2 * 10 * max(up, down) + 1`` taps, Kaiser window beta 5.0,
cutoff ``1 / max(up, down)``, gain ``up``) and the same output sample positions, so feeding a signal in blocks of any sizes and then
calling ``flush()`` gives the same samples as ``resample_poly`` on the whole signal (float64
arithmetic with ``dtype=np.float64``; the tests check equality to 1e-12). Outputs are produced as soon as the filter has
the input they need: the look-ahead is ``half_len / up`` input samples (about 0.6 ms for
48 kHz -> 16 kHz), so a streaming block comes out that much shorter than ``len(block) * up /
down`` at the start and the difference is returned by ``flush()``.
"""

from __future__ import annotations

from math import gcd

import numpy as np


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average channels: (frames,) or (frames, channels) -> (frames,) float32."""
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    return np.ascontiguousarray(samples, dtype=np.float32)


def lowpass(numtaps: int, cutoff: float, kaiser_beta: float = 5.0) -> np.ndarray:
    """Kaiser-windowed sinc lowpass, unit gain at DC: ``scipy.signal.firwin(numtaps, cutoff,
    window=("kaiser", kaiser_beta))`` (``cutoff`` relative to Nyquist)."""
    m = np.arange(numtaps) - (numtaps - 1) / 2
    h = cutoff * np.sinc(cutoff * m) * np.kaiser(numtaps, kaiser_beta)
    return h / h.sum()


class StreamResampler:
    """Resample a mono float stream from ``rate_in`` to ``rate_out`` block by block.

    ``process(block)`` returns the output samples that are final after ``block``;
    ``flush()`` ends the stream (zero padding as ``resample_poly``) and returns the rest;
    ``reset()`` starts a new stream. Identity (a copy as ``dtype``) when the rates are equal.
    """

    def __init__(self, rate_in: int, rate_out: int, dtype: type = np.float32, kaiser_beta: float = 5.0):
        if int(rate_in) <= 0 or int(rate_out) <= 0:
            raise ValueError(f"sample rates must be positive, got {rate_in} -> {rate_out}")
        self.rate_in = int(rate_in)
        self.rate_out = int(rate_out)
        self.dtype = np.dtype(dtype)
        g = gcd(self.rate_in, self.rate_out)
        self.up = self.rate_out // g
        self.down = self.rate_in // g
        self.identity = self.up == self.down
        if self.identity:
            self.half_len = 0
            self._taps = 1
            self._h = np.ones(1)
        else:
            max_rate = max(self.up, self.down)
            self.half_len = 10 * max_rate
            self._h = lowpass(2 * self.half_len + 1, 1.0 / max_rate, kaiser_beta) * self.up
            self._taps = -(-len(self._h) // self.up)  # filter taps that meet input samples, per output
        # phase r of the polyphase filter: taps h[r], h[r + up], h[r + 2 up], ... (zero-padded)
        padded = np.zeros(self._taps * self.up)
        padded[: len(self._h)] = self._h
        self._phases = padded.reshape(self._taps, self.up).T.copy()
        self.reset()

    @property
    def lookahead(self) -> int:
        """Input samples an output waits for beyond its own position."""
        return -(-self.half_len // self.up) if not self.identity else 0

    def reset(self) -> None:
        """Forget all input: the next block starts a new stream."""
        self._base = -self._taps  # absolute input index of _buf[0]; negative indexes are zeros
        self._buf = np.zeros(self._taps)
        self._n_in = 0  # input samples received
        self._n_out = 0  # output samples produced

    def _outputs(self, m_end: int) -> np.ndarray:
        """Outputs ``_n_out .. m_end - 1`` from the buffered input (zeros past its end)."""
        count = m_end - self._n_out
        if count <= 0:
            return np.zeros(0, self.dtype)
        # out[m] = sum_j h[j] * xu[m * down + half_len - j], xu = the input upsampled by `up`:
        # with p = m * down + half_len, only j = p mod up + t * up meet input samples, x[p // up - t]
        p = np.arange(self._n_out, m_end, dtype=np.int64) * self.down + self.half_len
        newest = p // self.up - self._base  # buffer index of x[p // up]
        index = newest[:, None] - np.arange(self._taps)[None, :]
        assert index.min() >= 0, "input needed by an output was already dropped"
        buffered = np.concatenate([self._buf, np.zeros(max(0, int(index.max()) + 1 - len(self._buf)))])
        out = np.einsum("mt,mt->m", self._phases[p % self.up], buffered[index]).astype(self.dtype)
        self._n_out = m_end
        # keep only the input that later outputs still use
        p_next = m_end * self.down + self.half_len
        keep_from = p_next // self.up - (self._taps - 1) - self._base
        if keep_from > 0:
            self._buf = self._buf[keep_from:]
            self._base += keep_from
        return out

    def process(self, block: np.ndarray) -> np.ndarray:
        """Append ``block`` (1-D) and return every output sample that is now final."""
        x = np.asarray(block, dtype=np.float64).reshape(-1)
        if self.identity:
            self._n_in += len(x)
            self._n_out += len(x)
            return x.astype(self.dtype)
        if len(x):
            self._buf = np.concatenate([self._buf, x])
            self._n_in += len(x)
        # output m needs input up to (m * down + half_len) // up <= n_in - 1
        m_end = (self._n_in * self.up - 1 - self.half_len) // self.down + 1
        return self._outputs(max(m_end, self._n_out))

    def flush(self) -> np.ndarray:
        """End of stream: the remaining ``ceil(n_in * up / down)`` outputs, then ``reset()``."""
        if self.identity:
            self.reset()
            return np.zeros(0, self.dtype)
        total = -(-self._n_in * self.up // self.down)
        y = self._outputs(total)
        self.reset()
        return y
