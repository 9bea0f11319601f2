import numpy as np
import pytest

from edged.diarize.binarize import Activity, Binarizer
from edged.dsp.frames import FrameGrid

GRID = FrameGrid(start=0.0, step=0.1, duration=0.1)  # frame i owns [0.1 i, 0.1 i + 0.1)


def run(scores, binarizer, sizes=None, grid=GRID):
    """Feed `scores` in consecutive regions of `sizes` frames; return turns and activity."""
    scores = np.asarray(scores, dtype=float)
    if scores.ndim == 1:
        scores = scores[:, None]
    sizes = sizes or [len(scores)]
    turns, activity, pos, i = [], [], 0, 0
    while pos < len(scores):
        n = sizes[i % len(sizes)]
        out = binarizer.push(scores[pos : pos + n], grid.sub(pos))
        turns += out.turns
        activity += out.activity
        pos, i = pos + n, i + 1
    out = binarizer.flush()
    return turns + out.turns, activity + out.activity


def spans(turns):
    return [(t.speaker, round(t.start, 6), round(t.end, 6)) for t in turns]


def test_known_track_gives_expected_turns():
    y = [0, 0, 1, 1, 1, 0, 0, 0.8, 0, 0]
    turns, _ = run(y, Binarizer())
    assert spans(turns) == [(0, 0.2, 0.5), (0, 0.7, 0.8)]
    assert turns[0].confidence == pytest.approx(1.0) and turns[1].confidence == pytest.approx(0.8)
    assert turns[0].duration == pytest.approx(0.3)


def test_hysteresis():
    y = [0.5, 0.8, 0.5, 0.4, 0.2, 0.5, 0.6, 0.65, 0.1]
    turns, _ = run(y, Binarizer(onset=0.7, offset=0.3))
    assert spans(turns) == [(0, 0.1, 0.4)]  # on above 0.7, stays on down to 0.3
    assert turns[0].confidence == pytest.approx((0.8 + 0.5 + 0.4) / 3)
    turns, _ = run(y, Binarizer(onset=0.45, offset=0.45))
    assert spans(turns) == [(0, 0.0, 0.3), (0, 0.5, 0.8)]


def test_gap_filling():
    y = [1, 1, 0, 0, 1, 1, 0, 0, 0, 1, 0]
    turns, _ = run(y, Binarizer(min_duration_off=0.25))
    assert spans(turns) == [(0, 0.0, 0.6), (0, 0.9, 1.0)]  # 0.2 s gap filled, 0.3 s gap kept
    assert turns[0].confidence == pytest.approx(4 / 6)  # filled frames count in the mean
    turns, _ = run(y, Binarizer())
    assert spans(turns) == [(0, 0.0, 0.2), (0, 0.4, 0.6), (0, 0.9, 1.0)]


def test_short_turns_dropped_after_gap_filling():
    y = [1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 0]
    turns, _ = run(y, Binarizer(min_duration_on=0.25, min_duration_off=0.15))
    # [0, .1) + [.2, .3) merge into a 0.3 s turn (kept); the lone 0.1 s turn at .6 is dropped
    assert spans(turns) == [(0, 0.0, 0.3), (0, 1.0, 1.3)]


def test_flush_closes_open_turns():
    b = Binarizer()
    out = b.push(np.array([[0, 1], [1, 1], [1, 1]], float), GRID)
    assert out.turns == []
    out = b.flush()
    assert spans(out.turns) == [(0, 0.1, 0.3), (1, 0.0, 0.3)]  # by end, then speaker
    assert out.activity == [Activity(pytest.approx(0.3), frozenset())]
    assert b.flush().turns == []  # reset: nothing left


def test_flush_drops_short_open_turn():
    turns, _ = run([0, 0, 0, 1], Binarizer(min_duration_on=0.15))
    assert turns == []


def test_turn_is_emitted_as_soon_as_it_cannot_change():
    y = np.array([0, 0, 1, 1, 1, 0, 0, 0, 0, 0], float)[:, None]
    for min_off, expected_frame in [(0.0, 5), (0.25, 7)]:
        b = Binarizer(min_duration_off=min_off)
        emitted_at = [i for i in range(len(y)) if b.push(y[i : i + 1], GRID.sub(i)).turns]
        assert emitted_at == [expected_frame]


def test_activity_changes_at_region_ends():
    y = np.zeros((12, 2))
    y[1:5, 0] = 1  # speaker 0: [0.1, 0.5)
    y[3:9, 1] = 1  # speaker 1: [0.3, 0.9)
    _, activity = run(y, Binarizer(), sizes=[2])
    assert [(round(a.time, 6), set(a.speakers)) for a in activity] == [
        (0.2, {0}), (0.4, {0, 1}), (0.6, {1}), (1.0, set())
    ]
    # min_duration_on: a speaker shows up only once its turn has lasted that long.  Speaker 0
    # is confirmed at 0.45 and closed at 0.5, between two region ends: its turn is emitted but
    # no snapshot shows it.
    turns, activity = run(y, Binarizer(min_duration_on=0.35), sizes=[2])
    assert spans(turns) == [(0, 0.1, 0.5), (1, 0.3, 0.9)]
    assert [(round(a.time, 6), set(a.speakers)) for a in activity] == [(0.8, {1}), (1.0, set())]


@pytest.mark.parametrize("sizes", [[1], [2], [3], [7, 1, 13], [29, 30]])
def test_region_splits_do_not_change_turns(sizes):
    rng = np.random.default_rng(0)
    y = np.clip(np.cumsum(rng.normal(0, 0.15, size=(400, 3)), axis=0) % 2 - 0.5, 0, 1)
    params = dict(onset=0.6, offset=0.4, min_duration_on=0.35, min_duration_off=0.25)
    whole, _ = run(y, Binarizer(**params))
    split, _ = run(y, Binarizer(**params), sizes=sizes)
    assert len(whole) > 5
    assert sorted(whole, key=lambda t: (t.speaker, t.start)) == sorted(
        split, key=lambda t: (t.speaker, t.start)
    )


def test_regions_must_be_consecutive():
    b = Binarizer()
    b.push(np.zeros((3, 2)), GRID)
    with pytest.raises(ValueError, match="consecutive"):
        b.push(np.zeros((3, 2)), GRID.sub(4))
    with pytest.raises(ValueError, match="speakers"):
        b.push(np.zeros((3, 3)), GRID.sub(3))
    b.push(np.zeros((0, 2)), GRID.sub(3))  # empty region is fine
    b.push(np.zeros((1, 2)), GRID.sub(3))
    with pytest.raises(ValueError, match="min_duration"):
        Binarizer(min_duration_on=-1)


def test_state_is_bounded():
    b = Binarizer(min_duration_off=0.3)
    rng = np.random.default_rng(1)
    for k in range(500):
        b.push(rng.uniform(size=(30, 4)), GRID.sub(30 * k))
    assert len(b._tracks) == 4
    assert all(not isinstance(v, (list, dict)) for t in b._tracks for v in vars(t).values())


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("min_on, min_off", [(0.0, 0.0), (0.113, 0.0), (0.0, 0.207), (0.113, 0.207)])
def test_matches_pyannote_binarize(seed, min_on, min_off):
    pytest.importorskip("pyannote.audio")
    from pyannote.audio.utils.signal import Binarize
    from pyannote.core import SlidingWindow, SlidingWindowFeature

    rng = np.random.default_rng(seed)
    y = np.clip(np.cumsum(rng.normal(0, 0.12, size=(600, 3)), axis=0) % 2 - 0.5, 0, 1)
    y[-1] = 0  # end in silence: pyannote ends an open last turn at the last frame's centre
    grid = FrameGrid(0.0, 270 / 16000, 991 / 16000)
    params = dict(
        onset=rng.uniform(0.4, 0.7),
        offset=rng.uniform(0.2, 0.4),
        min_duration_on=min_on,
        min_duration_off=min_off,
    )
    ours, _ = run(y, Binarizer(**params), sizes=[29, 30], grid=grid)
    window = SlidingWindow(start=grid.start, duration=grid.duration, step=grid.step)
    theirs = Binarize(**params)(SlidingWindowFeature(y, window))
    half = grid.step / 2  # pyannote stamps boundaries at frame centres, we between frames
    expected = sorted(
        (int(label), round(seg.start - half, 6), round(seg.end - half, 6))
        for seg, _, label in theirs.itertracks(yield_label=True)
    )
    assert len(expected) > 3
    assert sorted(spans(ours)) == expected


# ---- all the pure blocks together, with fake models ----


@pytest.mark.parametrize("latency", [0.5, 2.0, 5.0])
def test_blocks_end_to_end_recover_synthetic_turns(latency):
    from edged.diarize.aggregation import DelayedAggregator
    from edged.dsp.buffer import RollingBuffer
    from edged.diarize.clustering import IncrementalClustering
    from edged.dsp.frames import SEGMENTATION_FRAMES as seg_frames
    from edged.diarize.params import PipelineParams

    truth = [(0, 0.3, 4.1), (1, 4.6, 9.0), (0, 8.5, 12.2), (2, 13.0, 19.5), (1, 20.0, 21.4)]
    sr, total = 16000, 22.3
    rng = np.random.default_rng(0)
    voices = rng.standard_normal((3, 192))
    p = PipelineParams(latency=latency)
    buf = RollingBuffer(sr, p.duration, p.step)
    clustering = IncrementalClustering(p.tau_active, p.rho_update, p.delta_new, p.max_speakers)
    aggregator = DelayedAggregator(p.step, p.latency, p.duration)
    binarizer = Binarizer(p.onset, p.offset, min_duration_on=0.1, min_duration_off=0.1)

    def fake_models(chunk):
        """Segmentation from the truth (speakers in random local slots) and noisy embeddings."""
        t = seg_frames.at(chunk.start).centers(293)
        seg, emb = rng.uniform(0, 0.05, (293, 3)), np.full((3, 192), np.nan)
        slots, slot_of = rng.permutation(3), {}
        for spk, s, e in truth:
            if e > chunk.start and s < chunk.end:
                k = slot_of.setdefault(spk, slots[len(slot_of)])
                seg[(t >= s) & (t < e) & (t < chunk.real_end), k] = 0.95
                emb[k] = voices[spk] + 0.3 * rng.standard_normal(192)
        return seg, emb

    audio = np.zeros(int(total * sr), np.float32)
    chunks = [c for i in range(0, len(audio), 1234) for c in buf.push(audio[i : i + 1234])]
    chunks += buf.flush()
    turns = []
    for c in chunks:
        scores = clustering(*fake_models(c))
        end = c.real_end if c.num_real < buf.window else None
        turns += binarizer.push(*aggregator.push(scores, seg_frames.at(c.start), end=end)).turns
    turns += binarizer.push(*aggregator.flush()).turns + binarizer.flush().turns

    assert len(turns) == len(truth)
    label_of = {}
    for turn, (spk, s, e) in zip(sorted(turns, key=lambda t: t.start), truth):
        assert label_of.setdefault(spk, turn.speaker) == turn.speaker  # one id per speaker
        assert abs(turn.start - s) < 2 * seg_frames.step and abs(turn.end - e) < 2 * seg_frames.step
    assert len(set(label_of.values())) == 3 and clustering.num_speakers == 3
