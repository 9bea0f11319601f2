"""edged-cvtune end to end on a small dev set of real AMI excerpts: extract, per-fold studies scored
on their held-out fold, the final preset, and presets a bundle accepts."""

from __future__ import annotations

import json

import pytest

from edged.diarize.params import AGGREGATION_WINDOWS, PipelineParams


@pytest.fixture(scope="module")
def devset(tmp_path_factory, data_dir):
    """Four AMI excerpts in two folds (dev00/dev01 apart from trn00/trn01)."""
    root = tmp_path_factory.mktemp("devset")
    ami = data_dir / "ami-debug"
    files = [{"uri": uri, "audio": str(ami / f"{uri}.wav"), "rttm": str(ami / "reference.rttm"),
              "uem": str(ami / "reference.uem"), "kind": "ami", "fold": fold}
             for uri, fold in (("dev00", 0), ("dev01", 0), ("trn00", 1), ("trn01", 1))]
    (root / "devset.json").write_text(json.dumps({"k": 2, "files": files}))
    return root


def test_cross_validation_tunes_the_aggregation_window_and_writes_usable_presets(devset, bundle, tmp_path):
    from edged_export.presets import _section
    from edged_host.cvtune import cross_validate, extract_all

    cache, out = tmp_path / "cache", tmp_path / "cv"
    extract_all(devset, bundle, "int8", cache, latencies=(1.0,), log=lambda line: None)
    results = cross_validate(devset, cache, out, "int8", latencies=(1.0,), trials=12, seed=0,
                             log=lambda line: None)

    block = results["latencies"]["1"]
    assert results["choices"]["1"] == [{"aggregation": w} for w in AGGREGATION_WINDOWS]
    for fold in block["folds"]:  # a study per window; the best on the fitting fold is scored on the other
        assert [c["aggregation"] for c in fold["choices"]] == list(AGGREGATION_WINDOWS)
        assert len(fold["trials"]) == 2 * 12
        best = min(fold["choices"], key=lambda c: c["fit_objective"])
        assert fold["search"]["aggregation"] == best["aggregation"] == fold["params"]["aggregation"]
        assert fold["fit_objective"] == best["fit_objective"]
        assert set(fold["validation"]["kinds"]) == {"ami"}
    assert set(block["validation"]["files"]) == {"dev00", "dev01", "trn00", "trn01"}

    presets = json.loads((out / "presets.json").read_text())
    assert presets["1"]["aggregation"] in AGGREGATION_WINDOWS
    assert presets["1"]["aggregation"] == block["preset"]["aggregation"]
    section = _section({1.0: {k: v for k, v in presets["1"].items() if k != "validation"}}, "test")
    assert PipelineParams.from_dict({**section["latencies"]["1"], "latency": 1.0}).aggregation == \
        presets["1"]["aggregation"]


def test_one_window_per_frame_searches_the_mean_only():
    """At latency == step every frame has one window: the aggregation windows give the same scores."""
    from edged_host.cvtune import choices

    assert choices(0.5, 0.5) == [{"aggregation": "mean"}]
    assert choices(1.0, 0.5) == [{"aggregation": "mean"}, {"aggregation": "hamming"}]
