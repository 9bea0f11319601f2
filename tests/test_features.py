"""Tests of edged.dsp.features: Kaldi fbank parity with torchaudio, shapes, errors.

Parity tests need torchaudio (host only) and are skipped without it; the rest needs numpy only.
Measured max |numpy - torchaudio| on log-mel values: 4.2e-4 on the 30 s sample (2.0e-4 against
torchaudio run in float64), at most 3.6e-4 on uniform noise. torchaudio's float32 result is
itself 4.1e-4 from its float64 result on the sample: the tolerance covers float32 rounding.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from edged.dsp.features import Fbank, FbankConfig, RollingFbank

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EDGED_DATA", ROOT.parent / "shared" / "data"))
SAMPLE = DATA / "sample" / "sample.wav"
TOL = 1e-3  # max abs diff on log-mel values
LOG_EPS = float(np.log(np.finfo(np.float32).eps))


@pytest.fixture(scope="module")
def kaldi():
    """torchaudio.compliance.kaldi, or skip."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pytest.importorskip("torchaudio")
        import torchaudio.compliance.kaldi as kaldi
    return kaldi


def reference(kaldi, wav: np.ndarray, **kwargs) -> np.ndarray:
    """torchaudio's fbank as CAM++ calls it (float32 waveform, no dither, 80 bins)."""
    import torch

    args = dict(num_mel_bins=80, sample_frequency=16000, dither=0.0)
    args.update(kwargs)
    x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))[None]
    return kaldi.fbank(x, **args).numpy()


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    sf = pytest.importorskip("soundfile")
    if not SAMPLE.is_file():
        pytest.skip(f"{SAMPLE} not found; set EDGED_DATA to the data folder")
    wav, rate = sf.read(str(SAMPLE), dtype="float32", always_2d=False)
    assert rate == 16000 and wav.ndim == 1
    return wav


def noise(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, n).astype(np.float32)


RAW = FbankConfig(mean_normalize=False)


# --- parity with torchaudio.compliance.kaldi.fbank -------------------------------------------


def test_parity_speech(kaldi, speech):
    ref = reference(kaldi, speech)
    ours = Fbank(RAW)(speech)
    assert ours.shape == ref.shape == (2998, 80)
    assert ours.dtype == np.float32
    assert np.abs(ours - ref).max() <= TOL


def test_parity_speech_mean_normalized(kaldi, speech):
    """The CAM++ front end: fbank minus its mean over time."""
    chunk = speech[16000 : 16000 + 80000]
    ref = reference(kaldi, chunk)
    ref = ref - ref.mean(axis=0, keepdims=True)
    assert np.abs(Fbank()(chunk) - ref).max() <= TOL


@pytest.mark.parametrize("n", [400, 559, 560, 16000 + 123, 80000])
def test_parity_noise(kaldi, n):
    wav = noise(n, seed=n)
    ref = reference(kaldi, wav)
    ours = Fbank(RAW, block_frames=7)(wav)  # small blocks: exercises partial last blocks
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= TOL


def test_parity_quiet_and_silent(kaldi):
    quiet = (np.random.default_rng(1).standard_normal(16000) * 1e-4).astype(np.float32)
    assert np.abs(Fbank(RAW)(quiet) - reference(kaldi, quiet)).max() <= TOL
    silent = np.zeros(16000, dtype=np.float32)
    ref = reference(kaldi, silent)
    np.testing.assert_allclose(ref, LOG_EPS, atol=1e-6)
    np.testing.assert_allclose(Fbank(RAW)(silent), LOG_EPS, atol=1e-6)


@pytest.mark.parametrize(
    "cfg, kwargs",
    [
        (
            FbankConfig(window="hamming", preemphasis=0.0, mean_normalize=False),
            dict(window_type="hamming", preemphasis_coefficient=0.0),
        ),
        (
            FbankConfig(window="hanning", num_mel_bins=40, low_freq=60.0, high_freq=-400.0,
                        mean_normalize=False),
            dict(window_type="hanning", num_mel_bins=40, low_freq=60.0, high_freq=-400.0),
        ),
        (
            FbankConfig(sample_rate=8000, window="rectangular", frame_length_ms=32.0,
                        frame_shift_ms=16.0, high_freq=3800.0, mean_normalize=False),
            dict(sample_frequency=8000, window_type="rectangular", frame_length=32.0,
                 frame_shift=16.0, high_freq=3800.0, num_mel_bins=80),
        ),
    ],
)
def test_parity_other_settings(kaldi, cfg, kwargs):
    wav = noise(12345, seed=3)
    ref = reference(kaldi, wav, **kwargs)
    ours = Fbank(cfg)(wav)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= TOL


# --- behaviour (numpy only) ------------------------------------------------------------------


def test_mean_normalization_is_mean_over_time():
    wav = noise(80000)
    raw = Fbank(RAW)(wav)
    normed = Fbank()(wav)
    np.testing.assert_allclose(normed, raw - raw.mean(axis=0), rtol=0, atol=1e-5)
    np.testing.assert_allclose(normed.mean(axis=0), 0.0, atol=1e-5)


@pytest.mark.parametrize(
    "n, frames", [(0, 0), (399, 0), (400, 1), (559, 1), (560, 2), (16000, 98), (80000, 498)]
)
def test_num_frames(n, frames):
    fb = Fbank()
    assert fb.num_frames(n) == frames
    assert fb.num_frames(n) == (1 + (n - 400) // 160 if n >= 400 else 0)
    if n >= 400:
        assert fb(noise(n)).shape == (frames, 80)


def test_batch_equals_per_item():
    fb = Fbank()
    waves = np.stack([noise(33333, seed=s) * s / 3 for s in range(1, 4)])
    out = fb.batch(waves)
    assert out.shape == (3, fb.num_frames(33333), 80) and out.dtype == np.float32
    for i in range(3):
        np.testing.assert_allclose(out[i], fb(waves[i]), rtol=0, atol=1e-6)


def test_block_size_does_not_change_result():
    wav = noise(40000)
    expected = Fbank(block_frames=128)(wav)
    for block in (1, 7, 248, 1000):
        np.testing.assert_allclose(Fbank(block_frames=block)(wav), expected, rtol=0, atol=1e-5)


def test_input_conversions():
    fb = Fbank(RAW)
    wav = noise(8000)
    expected = fb(wav)
    np.testing.assert_array_equal(fb(wav.astype(np.float64)), expected)
    np.testing.assert_array_equal(fb(wav.tolist()), expected)
    strided = np.repeat(wav, 2)[::2]  # non-contiguous view
    np.testing.assert_array_equal(fb(strided), expected)
    assert fb(wav.astype(np.float16)).dtype == np.float32
    before = wav.copy()
    fb(wav)
    np.testing.assert_array_equal(wav, before)  # input untouched


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((2, 8000), np.float32), "1-D"),
        (np.zeros((), np.float32), "1-D"),
        (np.zeros(399, np.float32), "fewer than one frame"),
        (np.zeros(0, np.float32), "fewer than one frame"),
        (np.zeros(8000, np.int16), "32768"),
        (np.zeros(8000, np.complex64), "dtype"),
        (np.array(["a"] * 8000), "dtype"),
        (np.full(8000, np.nan, np.float32), "NaN"),
    ],
)
def test_call_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        Fbank()(bad)


def test_batch_rejects_bad_input():
    fb = Fbank()
    with pytest.raises(ValueError, match="2-D"):
        fb.batch(np.zeros(8000, np.float32))
    with pytest.raises(ValueError, match="fewer than one frame"):
        fb.batch(np.zeros((2, 100), np.float32))
    with pytest.raises(ValueError, match="must be >= 0"):
        fb.num_frames(-1)


@pytest.mark.parametrize(
    "cfg, match",
    [
        (FbankConfig(window="kaiser"), "unknown window"),
        (FbankConfig(high_freq=9000.0), "mel range"),
        (FbankConfig(num_mel_bins=3), "num_mel_bins"),
        (FbankConfig(preemphasis=1.5), "preemphasis"),
        (FbankConfig(frame_length_ms=0.0), "frame_length_ms"),
    ],
)
def test_bad_config(cfg, match):
    with pytest.raises(ValueError, match=match):
        Fbank(cfg)


def test_config_round_trip():
    cfg = FbankConfig()
    d = cfg.to_dict()
    assert d == {
        "sample_rate": 16000, "num_mel_bins": 80, "frame_length_ms": 25.0,
        "frame_shift_ms": 10.0, "preemphasis": 0.97, "low_freq": 20.0, "high_freq": 0.0,
        "window": "povey", "mean_normalize": True,
    }
    assert FbankConfig.from_dict(json.loads(json.dumps(d))) == cfg
    with pytest.raises(ValueError, match="unknown fbank setting"):
        FbankConfig.from_dict({**d, "dither": 1.0})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.num_mel_bins = 40  # type: ignore[misc]


# --- RollingFbank: overlapping windows of one stream ------------------------------------------


def windows(wav: np.ndarray, size: int, hop: int) -> list[np.ndarray]:
    return [wav[i : i + size].copy() for i in range(0, len(wav) - size + 1, hop)]


@pytest.mark.parametrize("cfg", [FbankConfig(), RAW])
def test_rolling_equals_fresh_on_pipeline_windows(cfg):
    """5 s windows every 0.5 s: after the first, 448 of 498 frames are reused, same result."""
    fb = Fbank(cfg)
    rolling = RollingFbank(fb)
    wavs = windows(noise(16000 * 9, seed=3), 80000, 8000)
    for wav in wavs:
        np.testing.assert_allclose(rolling(wav), fb(wav), rtol=0, atol=1e-5)
    assert rolling.reused_frames == 448 * (len(wavs) - 1)
    assert rolling.computed_frames == 498 + 50 * (len(wavs) - 1)


def test_rolling_handles_skips_repeats_misaligned_and_padded_windows():
    fb = Fbank()
    rolling = RollingFbank(fb)
    wav = noise(16000 * 12, seed=4)
    padded = np.concatenate([wav[16000 * 9 : 16000 * 12], np.zeros(32000, np.float32)])  # a flushed tail
    feed = [wav[:80000], wav[16000:96000],  # skipped windows: shift of 100 frames
            wav[16000:96000],  # the same window again
            wav[16080:96080],  # not a whole number of frames: nothing reusable
            wav[16000 * 7 : 16000 * 12], padded, noise(80000, seed=5),  # tail, then another stream
            wav[:40000]]  # a shorter window
    for w in feed:
        np.testing.assert_allclose(rolling(w), fb(w), rtol=0, atol=1e-5)
    assert rolling.reused_frames > 0


def test_rolling_keeps_its_own_copy_of_the_samples():
    fb = Fbank()
    rolling = RollingFbank(fb)
    wav = noise(80000, seed=6)
    buf = wav.copy()
    rolling(buf)
    buf[:] = 0.0  # the caller reuses its buffer
    nxt = np.concatenate([wav[8000:], noise(8000, seed=7)])
    np.testing.assert_allclose(rolling(nxt), fb(nxt), rtol=0, atol=1e-5)


def test_rolling_silence_and_bad_input():
    rolling = RollingFbank()
    silent = np.zeros(80000, np.float32)
    np.testing.assert_allclose(rolling(silent), Fbank()(silent), atol=1e-6)
    with pytest.raises(ValueError, match="NaN"):
        rolling(np.full(80000, np.nan, np.float32))
    with pytest.raises(ValueError, match="1-D"):
        rolling(np.zeros((2, 8000), np.float32))


def test_module_imports_no_torch():
    code = "import sys, edged.dsp.features; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
