import numpy as np
import pytest

from edged.diarize.backend import Assignment, to_global
from edged.diarize.clustering import IncrementalClustering
from edged.dsp.frames import FBANK_FRAMES, SEGMENTATION_FRAMES
from edged.models.weights import overlap_aware_weights, resample_weights

DIM = 192
FRAMES = 293


def unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.fixture
def voices():
    """Ten well separated speaker directions on the sphere."""
    return unit(np.random.default_rng(0).standard_normal((10, DIM)))


def sample(rng, voice, noise=0.15):
    """An embedding of `voice`: cosine distance to it ~0.1, scaled arbitrarily."""
    return 3.0 * unit(voice + noise * rng.standard_normal(DIM) / np.sqrt(DIM) * 4)


def chunk(rng, voices, speakers, level=0.9, num_local=3):
    """Segmentation where local speaker i speaks `speakers[i]` (None = silent) half the time."""
    seg = np.zeros((FRAMES, num_local))
    emb = np.full((num_local, DIM), np.nan)
    for i, v in enumerate(speakers):
        if v is None:
            seg[:, i] = 0.02
            emb[i] = rng.standard_normal(DIM)
            continue
        seg[i * 40 : i * 40 + 150, i] = level
        emb[i] = sample(rng, voices[v])
    return seg, emb


def make(**kw):
    params = dict(tau_active=0.5, rho_update=0.1, delta_new=0.6, max_speakers=20)
    params.update(kw)
    return IncrementalClustering(**params)


def test_same_speaker_keeps_its_id_across_chunks(voices):
    rng = np.random.default_rng(1)
    clu = make()
    first = clu.identify(*chunk(rng, voices, [0, 1, None]))
    ids = {0: first.mapping[0], 1: first.mapping[1]}
    assert first.mapping[2] == -1 and ids[0] != ids[1]
    for _ in range(30):  # speakers appear in random local slots
        order = list(rng.permutation([0, 1, None]))
        a = clu.identify(*chunk(rng, voices, order))
        for slot, v in enumerate(order):
            assert a.mapping[slot] == (-1 if v is None else ids[v])
    assert clu.num_speakers == 2


def test_new_far_speaker_gets_new_id(voices):
    rng = np.random.default_rng(2)
    clu = make()
    clu.identify(*chunk(rng, voices, [0, None, None]))
    a = clu.identify(*chunk(rng, voices, [0, 3, None]))
    assert a.mapping[0] == 0 and a.mapping[1] == 1 and clu.num_speakers == 2
    b = clu.identify(*chunk(rng, voices, [None, 4, 3]))
    assert b.mapping.tolist() == [-1, 2, 1]


def test_cannot_link_within_a_chunk(voices):
    rng = np.random.default_rng(3)
    clu = make()
    clu.identify(*chunk(rng, voices, [0, None, None]))
    # two local speakers that both sound like voice 0: only one may take its id
    for _ in range(10):
        a = clu.identify(*chunk(rng, voices, [0, 0, 0]))
        assigned = a.mapping[a.mapping >= 0]
        assert len(set(assigned.tolist())) == len(assigned)
        assert 0 in assigned


def test_first_chunk_speakers_are_distinct(voices):
    rng = np.random.default_rng(4)
    a = make().identify(*chunk(rng, voices, [5, 5, 5]))
    assert sorted(a.mapping.tolist()) == [0, 1, 2]


def test_max_speakers_cap(voices):
    rng = np.random.default_rng(5)
    clu = make(max_speakers=3)
    seen = set()
    for group in ([0, 1, None], [2, 3, None], [4, 5, 6], [7, 8, 9]):
        a = clu.identify(*chunk(rng, voices, group))
        assert a.mapping.max() < 3
        assigned = a.mapping[a.mapping >= 0]
        assert len(set(assigned.tolist())) == len(assigned)  # still cannot-link
        seen.update(assigned.tolist())
        assert clu.num_speakers <= 3
    assert clu.num_speakers == 3 and seen == {0, 1, 2}
    # with every slot full, three new active speakers all go to the (three) existing centroids
    a = clu.identify(*chunk(rng, voices, [7, 8, 9]))
    assert sorted(a.mapping.tolist()) == [0, 1, 2]


def test_more_active_speakers_than_slots_leaves_some_unassigned(voices):
    rng = np.random.default_rng(6)
    clu = make(max_speakers=2)
    a = clu.identify(*chunk(rng, voices, [0, 1, 2]))
    assert a.mapping.tolist() == [0, 1, -1]
    b = clu.identify(*chunk(rng, voices, [3, 4, 5]))
    assert sorted(b.mapping.tolist()) == [-1, 0, 1]


def test_inactive_speakers_are_not_assigned(voices):
    rng = np.random.default_rng(7)
    clu = make(tau_active=0.95)
    a = clu.identify(*chunk(rng, voices, [0, 1, 2], level=0.9))
    assert a.mapping.tolist() == [-1, -1, -1] and clu.num_speakers == 0
    assert np.all(clu.centroids == 0)


def test_nan_embeddings_are_ignored(voices):
    rng = np.random.default_rng(8)
    clu = make()
    seg, emb = chunk(rng, voices, [0, 1, None])
    emb[1, 5] = np.nan
    a = clu.identify(seg, emb)
    assert a.mapping.tolist() == [0, -1, -1]
    seg, emb = chunk(rng, voices, [0, 1, None])
    emb[0] = np.nan
    b = clu.identify(seg, emb)
    assert b.mapping.tolist() == [-1, 1, -1]
    assert np.isfinite(clu.centroids).all()


def test_zero_embedding_is_ignored(voices):
    rng = np.random.default_rng(9)
    seg, emb = chunk(rng, voices, [0, 1, None])
    emb[0] = 0.0
    assert make().identify(seg, emb).mapping.tolist() == [-1, 0, -1]


def test_delta_new_threshold():
    e0 = np.zeros(4)
    e0[0] = 1
    near = unit(np.array([1.0, 0.5, 0, 0]))  # cosine distance 1 - 1/sqrt(1.25) ~ 0.106
    seg = np.full((10, 1), 0.9)
    for delta, expect in [(0.2, 0), (0.05, 1)]:
        clu = make(delta_new=delta)
        clu.identify(seg, e0[None])
        assert clu.identify(seg, near[None]).mapping.tolist() == [expect]


def test_short_unknown_speaker_goes_to_closest_free_centroid(voices):
    rng = np.random.default_rng(10)
    clu = make(rho_update=0.3)
    clu.identify(*chunk(rng, voices, [0, 1, None]))  # first chunk: seeds even if short
    assert clu.num_speakers == 2
    seg, emb = chunk(rng, voices, [None, None, None])
    seg[:20, 0] = 0.9  # active but short (mean ~0.06 < rho_update)
    emb[0] = unit(voices[1] + 0.9 * voices[6])  # unknown voice, a bit closer to voice 1
    before = clu.centroids.copy()
    a = clu.identify(seg, emb)
    assert a.mapping.tolist() == [1, -1, -1] and clu.num_speakers == 2
    np.testing.assert_array_equal(clu.centroids, before)  # forced assignments never update


def test_only_long_matched_speakers_update_centroids(voices):
    rng = np.random.default_rng(11)
    clu = make(rho_update=0.3)
    seg, emb = chunk(rng, voices, [0, 1, None])
    seg[:, :2] = 0.9  # both long
    clu.identify(seg, emb)
    c0 = clu.centroids.copy()
    seg, emb = chunk(rng, voices, [0, 1, None])
    seg[:, 0] = 0.9  # local 0: long
    seg[:, 1] = 0.0
    seg[:10, 1] = 0.9  # local 1: active but short (mean 0.03 < rho_update)
    a = clu.identify(seg, emb)
    assert a.mapping.tolist()[:2] == [0, 1]
    np.testing.assert_allclose(clu.centroids[0], c0[0] + unit(emb[0]))
    np.testing.assert_array_equal(clu.centroids[1], c0[1])
    assert np.all(clu.centroids[2:] == 0)


def test_to_global_and_call(voices):
    rng = np.random.default_rng(12)
    clu = make(max_speakers=5)
    clu.identify(*chunk(rng, voices, [0, 1, None]))
    seg, emb = chunk(rng, voices, [1, None, 0])
    out = clu(seg, emb)
    assert out.shape == (FRAMES, 5)
    np.testing.assert_array_equal(out[:, 1], seg[:, 0])
    np.testing.assert_array_equal(out[:, 0], seg[:, 2])
    assert not out[:, 2:].any()
    m = np.array([3, -1, 0])
    g = to_global(np.arange(6.0).reshape(2, 3), m, 4)
    np.testing.assert_array_equal(g, [[2, 0, 0, 0], [5, 0, 0, 3]])
    assert Assignment(m, 4).apply(np.ones((2, 3))).sum() == 4
    with pytest.raises(ValueError, match="segmentation"):
        to_global(np.ones((2, 2)), m, 4)


def test_reset_and_centroid_shape(voices):
    rng = np.random.default_rng(13)
    clu = make(max_speakers=7)
    assert clu.centroids is None
    clu.identify(*chunk(rng, voices, [0, 1, 2]))
    assert clu.centroids.shape == (7, DIM) and clu.num_speakers == 3
    assert clu.used.tolist() == [True] * 3 + [False] * 4
    with pytest.raises(ValueError):
        clu.centroids[0, 0] = 1.0  # read-only view
    clu.reset()
    assert clu.centroids is None and clu.num_speakers == 0
    a = clu.identify(*chunk(rng, voices, [None, 4, None]))
    assert a.mapping.tolist() == [-1, 0, -1]


def test_euclidean_metric(voices):
    rng = np.random.default_rng(14)
    clu = make(metric="euclidean", delta_new=0.8)
    clu.identify(*chunk(rng, voices, [0, 1, None]))
    a = clu.identify(*chunk(rng, voices, [1, 0, 2]))
    assert a.mapping.tolist() == [1, 0, 2]


def test_bad_inputs():
    with pytest.raises(ValueError, match="metric"):
        make(metric="manhattan")
    with pytest.raises(ValueError, match="max_speakers"):
        make(max_speakers=0)
    clu = make()
    with pytest.raises(ValueError, match="embeddings"):
        clu.identify(np.ones((10, 3)), np.ones((2, DIM)))
    clu.identify(np.ones((10, 3)), np.eye(3, DIM))
    with pytest.raises(ValueError, match="dim"):
        clu.identify(np.ones((10, 3)), np.eye(3, 8))


# ---- overlap-aware embedding weights (edged.models.weights) ----


def test_overlap_aware_weights_formula():
    seg = np.random.default_rng(0).uniform(size=(FRAMES, 3))
    w = overlap_aware_weights(seg, gamma=3, beta=10)
    soft = np.exp(10 * seg) / np.exp(10 * seg).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(w, np.maximum(seg**3 * soft**3, 1e-8))
    assert w.shape == seg.shape


def test_overlap_is_penalised_and_floor_applies():
    seg = np.array([[0.9, 0.0, 0.0], [0.9, 0.9, 0.0], [0.0, 0.0, 0.0]])
    w = overlap_aware_weights(seg)
    assert w[0, 0] > 5 * w[1, 0]  # same activation, overlapped -> much lower weight
    assert np.all(w[2] == 1e-8) and np.all(w >= 1e-8)
    assert np.all(overlap_aware_weights(seg, floor=0.1) >= 0.1)
    # large activations do not overflow the softmax
    assert np.isfinite(overlap_aware_weights(np.full((2, 3), 1e3))).all()


def test_resample_weights_onto_fbank_frames():
    assert FBANK_FRAMES.num_frames(5.0) == 498 and SEGMENTATION_FRAMES.num_frames(5.0) == FRAMES
    w = np.random.default_rng(1).uniform(size=(3, FRAMES))
    r = resample_weights(w, 498)
    assert r.shape == (3, 498)
    np.testing.assert_allclose(resample_weights(np.full((2, FRAMES), 0.3), 498), 0.3)
    # a weight linear in time is reproduced exactly between the first and last source centres
    t_in = SEGMENTATION_FRAMES.centers(FRAMES)
    t_out = FBANK_FRAMES.centers(498)
    lin = resample_weights(np.stack([t_in, 2 * t_in]), 498)
    inside = (t_out >= t_in[0]) & (t_out <= t_in[-1])
    np.testing.assert_allclose(lin[0, inside], t_out[inside])
    np.testing.assert_allclose(lin[1, inside], 2 * t_out[inside])
    assert lin[0, 0] == t_in[0] and lin[0, -1] == t_in[-1]  # edges held
    assert resample_weights(np.zeros((0, FRAMES)), 498).shape == (0, 498)
    with pytest.raises(ValueError):
        resample_weights(np.ones(FRAMES), 498)


def test_embedding_weights_is_penalty_then_resampling():
    from edged.models.weights import embedding_weights

    seg = np.random.default_rng(1).random((FRAMES, 3))
    expected = resample_weights(overlap_aware_weights(seg, gamma=2.0, beta=5.0).T, 498)
    np.testing.assert_allclose(embedding_weights(seg, 498, gamma=2.0, beta=5.0), expected)


def test_identify_without_update_maps_alike_and_leaves_the_centroids(voices):
    rng = np.random.default_rng(7)
    clu = make()
    clu.identify(*chunk(rng, voices, [0, 1, None]))
    before, used = clu.centroids.copy(), clu.used
    frozen = clu.identify(*chunk(rng, voices, [1, 5, 0]), update=False)  # 5 is new
    assert frozen.mapping[0] == 1 and frozen.mapping[2] == 0 and frozen.mapping[1] == 2  # the slot it would take
    np.testing.assert_array_equal(clu.centroids, before)
    np.testing.assert_array_equal(clu.used, used)
    assert clu.num_speakers == 2
    # with update the same chunk opens the new speaker
    assert clu.identify(*chunk(rng, voices, [1, 5, 0])).mapping.tolist() == frozen.mapping.tolist()
    assert clu.num_speakers == 3
