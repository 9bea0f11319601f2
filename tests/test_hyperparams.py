import dataclasses

import pytest

from edged.diarize.params import PRESETS, PipelineParams


def test_defaults_are_the_ami_preset():
    p = PipelineParams()
    assert p == PRESETS["ami"] == PipelineParams.preset("ami")
    assert (p.duration, p.step, p.latency, p.gamma, p.beta, p.max_speakers) == (5.0, 0.5, 5.0, 3.0, 10.0, 20)
    assert (p.tau_active, p.rho_update, p.delta_new) == (0.507, 0.006, 1.057)


@pytest.mark.parametrize(
    "name, values",
    [
        ("ami", (0.507, 0.006, 1.057)),
        ("dihard3", (0.555, 0.422, 1.517)),
        ("voxconverse", (0.576, 0.915, 0.648)),
    ],
)
def test_presets(name, values):
    p = PipelineParams.preset(name)
    assert (p.tau_active, p.rho_update, p.delta_new) == values
    assert p.onset == p.offset == p.tau_active  # diart binarizes at tau_active
    assert PipelineParams.preset(name, latency=1.0).latency == 1.0


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'x'; choose one of ami, dihard3, voxconverse"):
        PipelineParams.preset("x")


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(tau_active=1.5), "tau_active=1.5 is out of range; allowed [0.0, 1.0]"),
        (dict(delta_new=-0.1), "delta_new=-0.1 is out of range; allowed [0.0, 2.0]"),
        (dict(latency=0.25), "latency=0.25 is out of range; allowed [0.5, 5.0]"),
        (dict(latency=6.0), "latency=6.0 is out of range; allowed [0.5, 5.0]"),
        (dict(step=6.0), "step=6.0 is out of range; allowed [0.1, 5.0]"),
        (dict(latency=1.25), "latency=1.25 must be a whole multiple of step=0.5"),
        (dict(max_speakers=0), "max_speakers=0 is out of range; allowed [1, 100]"),
        (dict(max_speakers=2.5), "max_speakers must be an integer, got 2.5"),
        (dict(onset="high"), "onset must be a number, got 'high'"),
        (dict(offset=True), "offset must be a number, got True"),
        (dict(min_duration_off=float("inf")), "min_duration_off=inf is out of range"),
        (dict(aggregation="median"), "aggregation='median' is not allowed; choose one of mean, hamming"),
        (dict(decision_weight=1.5), "decision_weight=1.5 is out of range; allowed [0.0, 1.0]"),
    ],
)
def test_validate_names_field_value_and_range(change, message):
    with pytest.raises(ValueError) as err:
        PipelineParams().replace(**change)
    assert message in str(err.value)
    with pytest.raises(ValueError):
        PipelineParams(**change)


def test_latency_bounds_follow_step_and_duration():
    p = PipelineParams(step=1.0, latency=1.0, duration=4.0)
    assert p.latency == 1.0
    PipelineParams(latency=0.5)
    with pytest.raises(ValueError, match=r"latency=5.0 is out of range; allowed \[1.0, 4.0\]"):
        PipelineParams(step=1.0, duration=4.0)


def test_tunable_bounds():
    bounds = PipelineParams.tunable_bounds()
    assert {"tau_active", "rho_update", "delta_new", "onset", "offset", "decision_weight"} <= bounds.keys()
    assert not {"duration", "step", "latency", "max_speakers"} & bounds.keys()
    assert bounds["tau_active"] == (0.0, 1.0) and bounds["delta_new"] == (0.0, 2.0)
    for name, (lo, hi) in bounds.items():
        assert isinstance(lo, float) and isinstance(hi, float) and lo < hi
        for preset in PRESETS.values():
            assert lo <= getattr(preset, name) <= hi
        PipelineParams().replace(**{name: lo})
        PipelineParams().replace(**{name: hi})


def test_from_dict_and_to_dict():
    p = PipelineParams.from_dict({"tau_active": 0.6, "latency": 2.0})
    assert p.tau_active == 0.6 and p.latency == 2.0 and p.rho_update == 0.006
    assert PipelineParams.from_dict(p.to_dict()) == p
    base = PipelineParams.preset("dihard3")
    assert PipelineParams.from_dict({"step": 0.25}, base=base).delta_new == 1.517


def test_from_dict_rejects_unknown_keys_in_one_line():
    with pytest.raises(ValueError) as err:
        PipelineParams.from_dict({"tau": 0.5, "latency": 1.0})
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("unknown pipeline parameter(s) tau; known: duration, step")


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PipelineParams().tau_active = 0.1


def test_errors_are_config_errors():
    from edged.errors import ConfigError, EdgedError

    with pytest.raises(ConfigError):
        PipelineParams(gamma=-1.0)
    with pytest.raises(EdgedError):
        PipelineParams.from_dict({"nope": 1})
