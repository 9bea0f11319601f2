"""Pipeline hyper-parameters, their allowed ranges, and diart's published presets."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from edged.errors import ConfigError

Bound = Union[float, str]  # a number, or the name of another field


class ParamsError(ConfigError, ValueError):
    """A pipeline parameter is unknown, of the wrong type or out of range (one-line message)."""


def _p(default: float, lo: Bound, hi: Bound, tunable: bool, doc: str) -> Any:
    return field(default=default, metadata={"bounds": (lo, hi), "tunable": tunable, "doc": doc})


def _choice(default: str, choices: tuple[str, ...], doc: str) -> Any:
    return field(default=default, metadata={"choices": choices, "tunable": False, "doc": doc})


CLUSTERING_BACKENDS = ("incremental", "uisrnn")
AGGREGATION_WINDOWS = ("mean", "hamming")


@dataclass(frozen=True)
class PipelineParams:
    """Streaming diarization settings; defaults are diart's AMI preset.

    Each numeric field's metadata holds ``bounds`` (inclusive; a string names another field) and
    whether an optimizer may tune it; a text field holds its ``choices`` instead.  Diart binarizes at ``tau_active``, so the presets set
    ``onset = offset = tau_active``.
    """

    duration: float = _p(5.0, 1.0, 10.0, False, "chunk (window) duration, s")
    step: float = _p(0.5, 0.1, "duration", False, "time between chunks, s")
    latency: float = _p(5.0, "step", "duration", False, "output delay, s (whole number of steps)")
    tau_active: float = _p(0.507, 0.0, 1.0, True, "activation threshold for a local speaker")
    rho_update: float = _p(0.006, 0.0, 1.0, True, "mean activation needed to update a centroid")
    delta_new: float = _p(1.057, 0.0, 2.0, True, "distance beyond which a speaker is new")
    gamma: float = _p(3.0, 0.0, 10.0, True, "overlap penalty exponent")
    beta: float = _p(10.0, 0.0, 100.0, True, "overlap penalty softmax temperature")
    max_speakers: int = _p(20, 1, 100, False, "maximum number of global speakers")
    aggregation: Literal["mean", "hamming"] = _choice(
        "mean", AGGREGATION_WINDOWS, "weight of each overlapping chunk in a frame's score: mean (equal) or hamming"
    )
    decision_weight: float = _p(
        0.25, 0.0, 1.0, True, "share of the local 0/1 decisions (the rest: probabilities) in the aggregated scores"
    )
    decision_threshold: float = _p(
        0.5, 0.05, 0.95, True, "local probability at which a local speaker's decision is 1 in the aggregated scores"
    )
    onset: float = _p(0.507, 0.0, 1.0, True, "binarization onset threshold")
    offset: float = _p(0.507, 0.0, 1.0, True, "binarization offset threshold")
    min_duration_on: float = _p(0.0, 0.0, 2.0, True, "shortest turn kept, s")
    min_duration_off: float = _p(0.0, 0.0, 2.0, True, "longest gap filled, s")
    clustering: Literal["incremental", "uisrnn"] = _choice(
        "incremental", CLUSTERING_BACKENDS, "speaker clustering back-end; uisrnn needs a bundle with a UIS-RNN model"
    )
    uisrnn_lag: int = _p(0, 0, 100, False, "UIS-RNN fixed lag, steps: turns are delayed by latency + lag * step")
    uisrnn_beam: int = _p(10, 1, 64, False, "UIS-RNN beam size (hypotheses kept per observation)")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ParamsError (a ValueError) naming the first bad field, its value and allowed range."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if "choices" in f.metadata:
                if not isinstance(value, str) or value not in f.metadata["choices"]:
                    raise ParamsError(
                        f"{f.name}={value!r} is not allowed; choose one of {', '.join(f.metadata['choices'])}"
                    )
                continue
            want_int = f.type in (int, "int")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                want_int and not isinstance(value, int)
            ):
                kind = "an integer" if want_int else "a number"
                raise ParamsError(f"{f.name} must be {kind}, got {value!r}")
            lo, hi = (self._resolve(b) for b in f.metadata["bounds"])
            if not (math.isfinite(value) and lo <= value <= hi):
                raise ParamsError(f"{f.name}={value!r} is out of range; allowed [{lo}, {hi}]")
        ratio = self.latency / self.step
        if abs(ratio - round(ratio)) > 1e-6:
            raise ParamsError(
                f"latency={self.latency!r} must be a whole multiple of step={self.step!r}"
            )

    def _resolve(self, bound: Bound) -> float:
        return getattr(self, bound) if isinstance(bound, str) else bound

    @classmethod
    def tunable_bounds(cls) -> dict[str, tuple[float, float]]:
        """``{name: (lo, hi)}`` of the fields an optimizer may tune."""
        return {
            f.name: f.metadata["bounds"] for f in dataclasses.fields(cls) if f.metadata["tunable"]
        }

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> PipelineParams:
        """A named preset (see ``PRESETS``), optionally with some fields changed."""
        if name not in PRESETS:
            raise ParamsError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]

    def replace(self, **changes: Any) -> PipelineParams:
        """Copy with some fields changed (validated)."""
        return self.from_dict(changes, base=self)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of all fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: PipelineParams | None = None) -> PipelineParams:
        """Fields from ``data`` over ``base`` (default: the defaults); unknown keys are rejected."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ParamsError(
                f"unknown pipeline parameter(s) {', '.join(unknown)}; known: {', '.join(names)}"
            )
        values = (base or cls()).to_dict()
        values.update(data)
        return cls(**values)


PRESETS: dict[str, PipelineParams] = {}
for _name, (_tau, _rho, _delta) in {
    "ami": (0.507, 0.006, 1.057),
    "dihard3": (0.555, 0.422, 1.517),
    "voxconverse": (0.576, 0.915, 0.648),
}.items():
    PRESETS[_name] = PipelineParams(
        tau_active=_tau, rho_update=_rho, delta_new=_delta, onset=_tau, offset=_tau
    )
