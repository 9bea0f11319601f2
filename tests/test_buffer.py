import math

import numpy as np
import pytest

from edged.dsp.buffer import Chunk, RollingBuffer

SR = 1000  # small rate: windows of 5000 samples, hop 500


def expected_count(total: int, window: int, hop: int) -> int:
    if total == 0:
        return 0
    if total <= window:
        return 1
    return 1 + math.ceil((total - window) / hop)


def run(stream: np.ndarray, sizes, buf: RollingBuffer) -> list[Chunk]:
    chunks, pos, i = [], 0, 0
    while pos < len(stream):
        n = sizes[i % len(sizes)]
        chunks += buf.push(stream[pos : pos + n])
        pos += n
        i += 1
    return chunks + buf.flush()


def check_windows(stream: np.ndarray, chunks: list[Chunk], buf: RollingBuffer) -> None:
    total, window, hop = len(stream), buf.window, buf.hop
    assert len(chunks) == expected_count(total, window, hop)
    for k, c in enumerate(chunks):
        assert c.index == k
        assert c.start_sample == k * hop
        assert c.samples.shape == (window,) and c.samples.dtype == np.float32
        real = stream[c.start_sample : c.start_sample + window]
        assert c.num_real == len(real)
        np.testing.assert_array_equal(c.samples[: c.num_real], real)
        assert not c.samples[c.num_real :].any()  # zero padding
        if k < len(chunks) - 1:
            assert c.num_real == window
    if chunks:  # the last window covers the last sample, the one before does not
        assert chunks[-1].start_sample + window >= total
        if len(chunks) > 1:
            assert chunks[-2].start_sample + window < total


@pytest.mark.parametrize("sizes", [[1], [7], [499], [500], [501], [5000], [12345], [3, 1000, 17, 9001, 1]])
@pytest.mark.parametrize("total", [0, 1, 4999, 5000, 5001, 5499, 5500, 5501, 23456])
def test_windows_are_slices_of_the_stream(sizes, total):
    stream = np.random.default_rng(total).standard_normal(total).astype(np.float32)
    buf = RollingBuffer(SR, duration=5.0, step=0.5)
    check_windows(stream, run(stream, sizes, buf), buf)


@pytest.mark.parametrize("seed", range(5))
def test_random_block_sizes_at_16k(seed):
    rng = np.random.default_rng(seed)
    total = int(rng.integers(1, 16000 * 12))
    stream = rng.standard_normal(total).astype(np.float32)
    sizes = list(rng.integers(1, 40000, size=50))
    buf = RollingBuffer(16000)
    assert (buf.window, buf.hop) == (80000, 8000)
    check_windows(stream, run(stream, sizes, buf), buf)


def test_windows_are_emitted_as_soon_as_complete():
    buf = RollingBuffer(SR, duration=5.0, step=0.5)
    assert buf.push(np.zeros(4999, np.float32)) == []
    first = buf.push(np.zeros(1, np.float32))
    assert [c.start for c in first] == [0.0]
    assert buf.push(np.zeros(499, np.float32)) == []
    assert [c.start for c in buf.push(np.zeros(1, np.float32))] == [0.5]
    # one big block completes several windows at once
    assert [c.start for c in buf.push(np.zeros(1500, np.float32))] == [1.0, 1.5, 2.0]


def test_chunk_times():
    buf = RollingBuffer(SR, duration=5.0, step=0.5)
    chunks = buf.push(np.ones(5700, np.float32)) + buf.flush()
    assert [(c.start, c.end) for c in chunks] == [(0.0, 5.0), (0.5, 5.5), (1.0, 6.0)]
    assert chunks[-1].num_real == 4700 and chunks[-1].real_end == pytest.approx(5.7)
    assert chunks[0].duration == 5.0


def test_short_stream_gives_one_padded_window():
    buf = RollingBuffer(SR)
    assert buf.push(np.ones(1234, np.float32)) == []
    (c,) = buf.flush()
    assert c.start == 0.0 and c.num_real == 1234
    assert c.samples[:1234].all() and not c.samples[1234:].any()


def test_flush_without_audio_and_restart():
    buf = RollingBuffer(SR)
    assert buf.flush() == []
    buf.push(np.ones(6000, np.float32))
    buf.flush()
    assert buf.samples_seen == 0
    chunks = buf.push(np.ones(5000, np.float32))
    assert [(c.index, c.start) for c in chunks] == [(0, 0.0)]


def test_float64_input_is_accepted():
    buf = RollingBuffer(SR)
    (c,) = buf.push(np.full(5000, 0.25))
    assert c.samples.dtype == np.float32 and np.all(c.samples == 0.25)


def test_memory_is_bounded():
    buf = RollingBuffer(SR)
    block = np.zeros(777, np.float32)
    for _ in range(2000):  # ~26 minutes at 1 kHz
        buf.push(block)
    assert buf._buf.shape == (buf.window,)
    assert all(not isinstance(v, (list, dict)) for v in vars(buf).values())


@pytest.mark.parametrize(
    "block, match",
    [
        (np.zeros((10, 2), np.float32), "1-D"),
        (np.zeros(10, np.int16), "32768"),
    ],
)
def test_bad_blocks(block, match):
    with pytest.raises(ValueError, match=match):
        RollingBuffer(SR).push(block)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sample_rate=16000, duration=5.00001), "duration"),
        (dict(sample_rate=16000, step=0.00001), "step"),
        (dict(sample_rate=16000, duration=1.0, step=2.0), "exceed"),
        (dict(sample_rate=0), "sample_rate"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RollingBuffer(**kwargs)


@pytest.mark.parametrize("total", [1, 1200, 5000, 5300, 5500, 9999, 12000])
def test_flush_with_tail_pads_until_a_window_ends_tail_after_the_audio(total):
    buf = RollingBuffer(SR, 5.0, 0.5)
    stream = np.arange(1, total + 1, dtype=np.float32)
    chunks = buf.push(stream) + buf.flush(tail=4.5)
    starts = [c.start_sample for c in chunks]
    assert starts == list(range(0, 500 * len(chunks), 500))  # every hop, no gap, no repeat
    for c in chunks:  # real samples where they belong, zeros after, and some real audio in each
        assert 0 < c.num_real <= 5000
        np.testing.assert_array_equal(c.samples[: c.num_real], stream[c.start_sample : c.start_sample + c.num_real])
        assert not c.samples[c.num_real :].any()
    assert chunks[-1].start_sample + 5000 >= total + 4500  # the last window ends 4.5 s after the audio
    assert len(chunks) == 1 or chunks[-2].start_sample + 5000 < total + 4500  # and no window more
    assert buf.samples_seen == 0  # reset for the next stream
