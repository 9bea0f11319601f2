import numpy as np
import pytest

from edged.diarize.aggregation import DelayedAggregator, aggregate_frames, blend_decisions, decisions_at
from edged.dsp.buffer import RollingBuffer
from edged.dsp.frames import SEGMENTATION_FRAMES as G, FrameGrid

F = 293  # segmentation frames per 5 s chunk
STEP, DURATION = 0.5, 5.0


def stream_chunks(num_chunks, speakers=4, seed=0, start=0.0):
    rng = np.random.default_rng(seed)
    return [(rng.uniform(size=(F, speakers)), G.at(start + k * STEP)) for k in range(num_chunks)]


def first_index(grid: FrameGrid, origin=0.0) -> int:
    """Index of `grid`'s frame 0 on the output grid anchored at `origin`."""
    i = (grid.start - origin) / G.step
    assert abs(i - round(i)) < 1e-6
    return int(round(i))


def chunk_offset(grid: FrameGrid) -> int:
    """Output frame of a chunk's frame 0 (pyannote's closest_frame of its first centre)."""
    return G.index(grid.start + 0.5 * G.duration)


def run(chunks, latency, strategy="hamming", end=None):
    agg = DelayedAggregator(STEP, latency, DURATION, strategy)
    outputs = [agg.push(s, g) for s, g in chunks]
    tail = agg.flush(end)
    return outputs, tail


def concat(outputs, tail):
    ranges = [(first_index(g), first_index(g) + len(s)) for s, g in outputs + [tail]]
    values = np.concatenate([s for s, _ in outputs + [tail]])
    return ranges, values


# ---- frame grid ----


def test_frame_grid_basics():
    assert G.step == 270 / 16000 and G.duration == 991 / 16000
    assert G.num_frames(5.0) == F
    assert G.center(0) == pytest.approx(991 / 32000)
    assert G.index(G.center(17) + 0.4 * G.step) == 17
    i = G.first_at(1.0)
    assert G.center(i) >= 1.0 > G.center(i - 1)
    assert G.first_at(G.center(5)) == 5  # a centre belongs to its own frame
    first, stop = G.crop(1.0, 1.5)
    assert (first, stop) == (G.first_at(1.0), G.first_at(1.5))
    a, b = G.owned(first, stop)
    assert b - a == pytest.approx((stop - first) * G.step)
    assert G.sub(3).center(0) == pytest.approx(G.center(3))
    assert G.at(2.0).center(0) == pytest.approx(2.0 + G.center(0))
    np.testing.assert_allclose(G.centers(4), [G.center(i) for i in range(4)])
    with pytest.raises(ValueError):
        FrameGrid(0.0, 0.0, 1.0)


# ---- coverage: every output frame exactly once ----


@pytest.mark.parametrize("strategy", ["hamming", "mean", "first"])
@pytest.mark.parametrize("latency", [0.5, 1.0, 2.5, 4.5, 5.0])
@pytest.mark.parametrize("num_chunks", [1, 2, 9, 10, 11, 37])
def test_outputs_tile_the_stream(latency, strategy, num_chunks):
    chunks = stream_chunks(num_chunks)
    outputs, tail = run(chunks, latency, strategy)
    ranges, values = concat(outputs, tail)
    end = chunks[-1][1].start + DURATION
    assert ranges[0][0] == G.first_at(0.0)
    for (_, stop), (first, _) in zip(ranges, ranges[1:]):
        assert first == stop  # no gap, no overlap
    assert ranges[-1][1] == G.first_at(end)
    start_t, end_t = G.owned(ranges[0][0], ranges[-1][1])
    assert abs(start_t) <= G.step and abs(end_t - end) <= G.step
    assert values.shape == (ranges[-1][1] - ranges[0][0], 4) and np.isfinite(values).all()
    # after the first push, each push emits the region [end - latency, end - latency + step)
    for (s, g), (cs, cg) in list(zip(outputs, chunks))[1:]:
        region_start = cg.start + DURATION - latency
        assert G.first_at(region_start) == first_index(g)
        assert G.first_at(region_start + STEP) == first_index(g) + len(s)
    # the first push covers everything from the stream start
    s0, g0 = outputs[0]
    assert first_index(g0) == G.first_at(0.0)
    assert first_index(g0) + len(s0) == G.first_at(DURATION - latency + STEP)


@pytest.mark.parametrize("latency", [0.5, 2.0, 5.0])
@pytest.mark.parametrize("total", [1, 3000, 80000, 80001, 91234, 16000 * 23 + 17])
def test_buffer_to_aggregator_covers_the_real_stream(latency, total):
    sr = 16000
    buf = RollingBuffer(sr, DURATION, STEP)
    rng = np.random.default_rng(total)
    chunks = buf.push(rng.standard_normal(total).astype(np.float32)) + buf.flush()
    agg = DelayedAggregator(STEP, latency, DURATION)
    outputs = [
        agg.push(np.full((F, 2), 0.7), G.at(c.start), end=c.real_end if c.num_real < buf.window else None)
        for c in chunks
    ]
    tail = agg.flush()
    ranges, values = concat(outputs, tail)
    assert ranges[0][0] == G.first_at(0.0)
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert ranges[-1][1] == G.first_at(total / sr)
    if len(values):  # a 1-sample stream has no frame centre inside it
        start_t, end_t = G.owned(ranges[0][0], ranges[-1][1])
        assert abs(start_t) <= G.step and abs(end_t - total / sr) <= G.step
    np.testing.assert_allclose(values, 0.7)


# ---- values ----


def reference(chunks, k, frames, latency, strategy):
    """Brute force: aggregate output frame g from the chunks available at push k."""
    n = round(latency / STEP)
    avail = chunks[max(0, k - n + 1) : k + 1]
    out = []
    for g in frames:
        num, den = 0.0, 0.0
        for s, grid in avail:
            i = g - chunk_offset(grid)
            if 0 <= i < F:
                w = {"hamming": np.hamming(F)[i], "mean": 1.0, "first": 1.0}[strategy]
                num, den = num + w * s[i], den + w
                if strategy == "first":
                    break
        if den == 0:  # not covered: newest chunk, nearest frame
            s, grid = avail[-1]
            num, den = s[np.clip(g - chunk_offset(grid), 0, F - 1)], 1.0
        out.append(num / den)
    return np.array(out).reshape(len(frames), chunks[0][0].shape[1])


@pytest.mark.parametrize("strategy", ["hamming", "mean", "first"])
@pytest.mark.parametrize("latency", [0.5, 1.5, 5.0])
def test_values_match_brute_force(latency, strategy):
    chunks = stream_chunks(14, seed=3)
    outputs, tail = run(chunks, latency, strategy)
    for k, (s, g) in enumerate(outputs):
        frames = range(first_index(g), first_index(g) + len(s))
        np.testing.assert_allclose(s, reference(chunks, k, frames, latency, strategy), rtol=1e-12)
    s, g = tail
    frames = range(first_index(g), first_index(g) + len(s))
    np.testing.assert_allclose(s, reference(chunks, len(chunks) - 1, frames, latency, strategy))


def test_outputs_are_causal():
    chunks = stream_chunks(12, seed=4)
    outputs, _ = run(chunks, 2.0)
    changed = chunks[:6] + [(1 - s, g) for s, g in chunks[6:]]
    outputs2, _ = run(changed, 2.0)
    for (a, _), (b, _) in zip(outputs[:6], outputs2[:6]):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(outputs[6][0], outputs2[6][0])


def test_latency_step_returns_newest_chunk_frames():
    chunks = stream_chunks(5, seed=5)
    outputs, _ = run(chunks, STEP)
    for (s, g), (cs, cg) in list(zip(outputs, chunks))[1:]:
        i = first_index(g) - chunk_offset(cg)
        covered = min(len(s), F - i)
        np.testing.assert_allclose(s[:covered], cs[i : i + covered], rtol=1e-12)
        np.testing.assert_array_equal(s[covered:], np.repeat(cs[-1:], len(s) - covered, axis=0))


@pytest.mark.parametrize("strategy", ["hamming", "mean", "first"])
def test_constant_scores_stay_constant(strategy):
    chunks = [(np.full((F, 3), 0.25), g) for _, g in stream_chunks(15)]
    outputs, tail = run(chunks, 3.0, strategy)
    np.testing.assert_allclose(concat(outputs, tail)[1], 0.25)


def test_stream_not_starting_at_zero():
    chunks = stream_chunks(4, start=100.0)
    agg = DelayedAggregator(STEP, 1.0, DURATION)
    s, g = agg.push(*chunks[0])
    assert agg.output_grid.start == 100.0
    assert g.center(0) >= 100.0 and g.center(len(s) - 1) < 100.0 + DURATION - 1.0 + STEP
    agg = DelayedAggregator(STEP, 1.0, DURATION, start=99.0)  # explicit origin before the first chunk
    s, g = agg.push(*chunks[0])
    assert g.center(0) >= 99.0 > g.center(0) - G.step


def test_pure_function_two_chunks():
    a, b = np.ones((4, 1)), np.zeros((4, 1))
    h = np.hamming(4)
    out = aggregate_frames([a, b], [0, 2], 0, 7, "hamming")
    expected = [1, 1, h[2] / (h[2] + h[0]), h[3] / (h[3] + h[1]), 0, 0, 0]
    np.testing.assert_allclose(out[:, 0], expected)
    np.testing.assert_allclose(aggregate_frames([a, b], [0, 2], 0, 6, "mean")[:, 0], [1, 1, 0.5, 0.5, 0, 0])
    np.testing.assert_allclose(aggregate_frames([a, b], [0, 2], 0, 6, "first")[:, 0], [1, 1, 1, 1, 0, 0])
    assert aggregate_frames([a], [0], 3, 3).shape == (0, 1)


def test_memory_is_bounded():
    agg = DelayedAggregator(STEP, 2.0, DURATION)
    for s, g in stream_chunks(200):
        agg.push(s, g)
        assert len(agg._chunks) <= 4


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(step=0.5, latency=0.25, duration=5.0), "latency"),
        (dict(step=0.5, latency=5.5, duration=5.0), "latency"),
        (dict(step=0.5, latency=1.2, duration=5.0), "multiple"),
        (dict(step=6.0, latency=6.0, duration=5.0), "step"),
        (dict(step=0.5, latency=1.0, duration=5.0, strategy="median"), "strategy"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DelayedAggregator(**kwargs)


def test_bad_pushes():
    agg = DelayedAggregator(STEP, 1.0, DURATION)
    assert agg.flush() is None  # empty stream
    agg.push(np.zeros((F, 2)), G)
    with pytest.raises(ValueError, match="step/duration"):
        agg.push(np.zeros((F, 2)), FrameGrid(0.5, 0.01, 0.02))
    with pytest.raises(ValueError, match="frames"):
        agg.push(np.zeros(F), G.at(0.5))


# ---- cross-check with pyannote's offline aggregation ----


@pytest.mark.parametrize("hamming, strategy", [(True, "hamming"), (False, "mean")])
def test_full_latency_matches_pyannote_offline_aggregate(hamming, strategy):
    pytest.importorskip("pyannote.audio")
    from pyannote.audio.core.inference import Inference
    from pyannote.core import SlidingWindow, SlidingWindowFeature

    chunks = stream_chunks(25, speakers=3, seed=7)
    outputs, tail = run(chunks, DURATION, strategy)
    ranges, ours = concat(outputs, tail)
    data = np.stack([s for s, _ in chunks]).astype(np.float32)
    swf = SlidingWindowFeature(data, SlidingWindow(start=0.0, duration=DURATION, step=STEP))
    frames = SlidingWindow(start=0.0, duration=G.duration, step=G.step)
    theirs = Inference.aggregate(swf, frames, hamming=hamming).data
    first = ranges[0][0]  # -1: the frame centred just after 0, before pyannote's frame 0
    covered = ~np.isnan(theirs).any(axis=1)
    n = min(len(theirs), len(ours) + first)
    idx = np.flatnonzero(covered[:n])
    assert len(idx) > 0.95 * n
    np.testing.assert_allclose(ours[idx - first], theirs[idx], rtol=1e-5, atol=1e-6)


def test_decisions_at_reuses_local_or_rethresholds():
    p = np.array([[0.1, 0.45], [0.55, 0.9]], np.float32)
    local = (p >= 0.5).astype(np.float32)
    assert decisions_at(p, local, 0.5, 0.5) is local
    np.testing.assert_array_equal(decisions_at(p, local, 0.4, 0.5), [[0, 1], [1, 1]])
    np.testing.assert_array_equal(decisions_at(p, local, 0.6, 0.5), [[0, 0], [0, 1]])
    assert decisions_at(p, local, 0.4, 0.5).dtype == np.float32


def test_blend_decisions_mixes_probabilities_and_votes():
    p = np.array([[0.2, 0.6], [0.5, 0.9]], np.float32)
    d = (p >= 0.5).astype(np.float32)
    assert blend_decisions(p, d, 0.0) is p
    np.testing.assert_allclose(blend_decisions(p, d, 1.0), d)
    np.testing.assert_allclose(blend_decisions(p, d, 0.25), [[0.15, 0.7], [0.625, 0.925]])
    assert blend_decisions(p, d, 0.25).dtype == np.float32
    with pytest.raises(ValueError, match="weight must be in"):
        blend_decisions(p, d, 1.5)
    with pytest.raises(ValueError, match="differ in shape"):
        blend_decisions(p, d[:1], 0.5)


def test_blend_of_one_chunk_keeps_the_decisions_at_the_onset():
    """With one chunk (latency = step) any weight > 0 turns a frame on exactly where the local
    decision is 1, whatever the binarization threshold between 0.5 - w/2 and 0.5 + w/2."""
    rng = np.random.default_rng(3)
    p = rng.uniform(size=(F, 3))
    d = (p >= 0.5).astype(float)
    for w in (0.25, 0.5, 1.0):
        assert ((blend_decisions(p, d, w) >= 0.507) == d.astype(bool)).all()
