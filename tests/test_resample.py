"""StreamResampler: streaming in blocks equals scipy.signal.resample_poly on the whole signal."""

from __future__ import annotations

from math import gcd

import numpy as np
import pytest
from scipy.signal import resample_poly

from edged.dsp.resample import StreamResampler

RATES = [(48000, 16000), (44100, 16000), (32000, 16000), (22050, 16000), (8000, 16000),
         (96000, 16000), (11025, 16000), (16000, 44100), (16000, 16000)]


def reference(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    g = gcd(rate_in, rate_out)
    return x.copy() if rate_in == rate_out else resample_poly(x, rate_out // g, rate_in // g)


def stream(r: StreamResampler, x: np.ndarray, sizes) -> np.ndarray:
    out, i = [], 0
    for n in sizes:
        out.append(r.process(x[i:i + n]))
        i += n
    assert i >= len(x)
    out.append(r.flush())
    return np.concatenate(out)


@pytest.mark.parametrize("rate_in,rate_out", RATES)
def test_blocks_equal_whole_signal(rate_in, rate_out):
    """Random block sizes (including empty and one-sample blocks) + flush == resample_poly(x)."""
    rng = np.random.default_rng(rate_in + rate_out)
    x = rng.standard_normal(rate_in + 123)  # 1 s of white noise: every frequency, worst case for edges
    sizes = [0, 1, 2, *rng.integers(0, 2 * rate_in // 10, 200)]
    sizes.append(len(x))  # whatever is left
    r = StreamResampler(rate_in, rate_out, dtype=np.float64)
    y = stream(r, x, sizes)
    ref = reference(x, rate_in, rate_out)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("block", [160, 1600, 4410, 4800])
def test_fixed_blocks_and_outputs_are_final(block):
    """Every sample returned by process() is final: equal to the whole-signal result at its index."""
    rng = np.random.default_rng(block)
    x = rng.standard_normal(44100 // 2)
    r = StreamResampler(44100, 16000, dtype=np.float64)
    ref = reference(x, 44100, 16000)
    done = 0
    for i in range(0, len(x), block):
        y = r.process(x[i:i + block])
        np.testing.assert_allclose(y, ref[done:done + len(y)], rtol=0, atol=1e-12)
        done += len(y)
        # outputs come out as soon as their last input arrived (the look-ahead is half the filter)
        n_in = min(i + block, len(x))
        assert done == max(0, (n_in * r.up - 1 - r.half_len) // r.down + 1)
    np.testing.assert_allclose(r.flush(), ref[done:], rtol=0, atol=1e-12)


def test_float32_output_matches_within_float_precision():
    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, 48000).astype(np.float32)
    r = StreamResampler(48000, 16000)
    y = stream(r, x, [4800] * 10)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, resample_poly(x.astype(np.float64), 1, 3), rtol=0, atol=1e-6)


def test_antialiasing_and_passband():
    """A 1 kHz tone passes at unit gain; a 12 kHz tone (above the 8 kHz output Nyquist) is removed."""
    t = np.arange(48000) / 48000
    r = StreamResampler(48000, 16000, dtype=np.float64)
    low = stream(r, np.sin(2 * np.pi * 1000 * t), [4800] * 10)
    high = stream(r, np.sin(2 * np.pi * 12000 * t), [4800] * 10)
    core = slice(1000, 15000)  # away from the zero-padded edges
    assert abs(np.sqrt(np.mean(low[core] ** 2)) - np.sqrt(0.5)) < 1e-3
    assert np.sqrt(np.mean(high[core] ** 2)) < 1e-3


def test_reset_starts_a_new_stream():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal(4800), rng.standard_normal(4800)
    r = StreamResampler(48000, 16000, dtype=np.float64)
    r.process(a)
    r.reset()
    y = stream(r, b, [1000] * 5)
    np.testing.assert_allclose(y, reference(b, 48000, 16000), rtol=0, atol=1e-12)


def test_identity_and_bad_rates():
    r = StreamResampler(16000, 16000)
    x = np.arange(10, dtype=np.float64)
    assert r.process(x).dtype == np.float32 and np.array_equal(r.process(x), x)
    assert len(r.flush()) == 0 and r.lookahead == 0
    with pytest.raises(ValueError):
        StreamResampler(0, 16000)


def test_lowpass_is_scipys_firwin_and_scipy_is_not_loaded():
    import subprocess
    import sys

    from scipy.signal import firwin

    from edged.dsp.resample import lowpass

    for numtaps, cutoff in ((61, 1 / 3), (8821, 1 / 441), (21, 0.5)):
        assert np.allclose(lowpass(numtaps, cutoff), firwin(numtaps, cutoff, window=("kaiser", 5.0)), atol=1e-15)
    code = ("import sys, numpy as np; from edged.dsp.resample import StreamResampler; "
            "r = StreamResampler(48000, 16000); r.process(np.ones(4800)); r.flush(); "
            "assert not any(m.startswith('scipy') for m in sys.modules), 'scipy loaded'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
