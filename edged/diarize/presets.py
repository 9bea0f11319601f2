"""Which pipeline parameters a run starts from: the bundle's tuned preset for the latency, or diart's.

A bundle may carry presets tuned for its embedding model, one per output latency
(``edged.models.bundle.BundlePresets``). For a requested latency the preset of that latency is
used; between offered latencies, the nearest one below (else the lowest), with the requested
latency. ``preset="ami"`` (or ``dihard3``, ``voxconverse``) keeps diart's published values.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from edged.diarize.params import PRESETS, ParamsError, PipelineParams

log = logging.getLogger(__name__)

BUNDLE = "bundle"  # the preset name meaning "the bundle's own, for the latency"
CHOICES = (BUNDLE, *PRESETS)


def nearest_latency(offered: list[float], latency: float) -> float:
    """The offered latency at or below ``latency`` closest to it, else the lowest offered."""
    below = [x for x in offered if x <= latency + 1e-9]
    return max(below) if below else min(offered)


def resolve(preset: str | None, presets: Mapping[float, Mapping[str, Any]] | None,
            overrides: Mapping[str, Any] | None = None, warn: bool = True) -> PipelineParams:
    """Parameters for a run: ``preset`` (None or "bundle": the bundle's ``presets`` for the
    latency in ``overrides``, default 5 s) with ``overrides`` on top."""
    overrides = dict(overrides or {})
    name = preset or BUNDLE
    if name not in CHOICES:
        raise ParamsError(f"preset {name!r} is not known; choose one of {', '.join(CHOICES)}")
    if name != BUNDLE:
        return PipelineParams.preset(name, **overrides)
    if not presets:
        if warn:
            log.warning("the model bundle has no tuned presets; using diart's AMI preset (re-export the bundle, "
                        "or run edged-tune --write-bundle)")
        return PipelineParams.preset("ami", **overrides)
    latency = overrides.get("latency", PipelineParams().latency)
    try:
        chosen = nearest_latency(list(presets), float(latency))
    except (TypeError, ValueError):
        raise ParamsError(f"latency={latency!r} must be a number of seconds") from None
    try:
        base = PipelineParams.from_dict({**presets[chosen], "latency": chosen})
    except (ParamsError, ValueError, TypeError) as exc:
        raise ParamsError(f"the bundle's preset for latency {chosen:g} s is not valid ({exc}); "
                          "re-run edged-tune --write-bundle or pass --preset ami") from None
    return base.replace(**{"latency": latency, **overrides})
