"""Dev set folds: grouped by voice, room, noise and recording; seeded."""

from __future__ import annotations

from edged_host.devset import _ami_groups, _noise_voices, make_folds


def test_folds_group_sources_and_are_seeded(data_dir):
    folds = make_folds(data_dir, k=4, seed=0)
    assert folds == make_folds(data_dir, k=4, seed=0)
    assert len(folds["voices"]) == 64 and set(folds["voices"].values()) == {0, 1, 2, 3}
    # voices inside babble / tv_like live in the noise's fold; tv_like takes its music along
    for noise, talkers in _noise_voices(data_dir / "rooms").items():
        assert talkers and all(folds["voices"][v] == folds["noises"][noise] for v in talkers)
    assert folds["noises"]["tv_like"] == folds["noises"]["music_jazz_vibe_ace"]
    # both positions of a simulated room in one fold
    assert folds["rirs"]["sim_kitchen_0"] == folds["rirs"]["sim_kitchen_1"]
    # AMI excerpts sharing a participant in one fold
    for group in _ami_groups(data_dir / "ami-debug"):
        assert len({folds["real"][uri] for uri in group}) == 1
    assert {"trn07", "trn08"} <= set(next(g for g in _ami_groups(data_dir / "ami-debug") if "trn07" in g))
