"""File replay at wall-clock speed, the daemon's ``audio.source: file``."""

from __future__ import annotations

import time

import numpy as np
import pytest
import soundfile as sf

from edged.errors import AudioError
from edged.sources.replay import FileReplay


def test_replays_every_sample_in_order_at_the_requested_pace(tmp_path):
    samples = (np.arange(16000) % 100 / 1000).astype(np.float32)
    path = tmp_path / "a.wav"
    sf.write(path, samples, 16000, subtype="FLOAT")
    r = FileReplay(path, block_ms=100, speed=4.0)
    r.start()
    t0 = time.monotonic()
    got = []
    while not r.finished:
        block = r.read(timeout=0.05)
        if block is not None:
            got.append(block)
    elapsed = time.monotonic() - t0
    assert np.array_equal(np.concatenate(got), samples)
    assert len(got) == 10
    assert elapsed >= 0.25 - 0.01  # 1 s of audio at 4x cannot come faster than 0.25 s
    assert r.origin is not None and abs(r.origin - time.time()) < 60


def test_read_returns_none_on_timeout_before_a_block_is_due(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, np.zeros(16000, np.float32), 16000)
    r = FileReplay(path, block_ms=500, speed=1.0)
    r.start()
    assert r.read(timeout=0.01) is None and not r.finished


def test_unreadable_file_is_an_audio_error(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    with pytest.raises(AudioError, match="bad.wav: cannot decode audio"):
        FileReplay(bad).start()
