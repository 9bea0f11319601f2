"""Presets that travel with the bundle: manifest section, choice per latency, CLI precedence."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edged.diarize.params import PRESETS, ParamsError, PipelineParams
from edged.diarize.presets import nearest_latency, resolve
from edged.errors import BundleError
from edged.models.bundle import MANIFEST_NAME, load_bundle, parse_presets

REPO = Path(__file__).resolve().parents[1]
TUNED = {0.5: {"tau_active": 0.6, "delta_new": 0.9, "step": 0.5}, 1.0: {"tau_active": 0.55, "delta_new": 1.0},
         5.0: {"tau_active": 0.5, "delta_new": 1.2, "onset": 0.6, "offset": 0.4}}


def test_nearest_latency_prefers_the_one_at_or_below():
    offered = [0.5, 1.0, 2.0, 5.0]
    assert nearest_latency(offered, 1.0) == 1.0
    assert nearest_latency(offered, 1.5) == 1.0
    assert nearest_latency(offered, 9.0) == 5.0
    assert nearest_latency([1.0, 2.0], 0.5) == 1.0


def test_bundle_preset_for_the_latency_with_overrides_on_top():
    p = resolve(None, TUNED, {"latency": 5.0})
    assert (p.tau_active, p.delta_new, p.onset, p.offset, p.latency) == (0.5, 1.2, 0.6, 0.4, 5.0)
    p = resolve("bundle", TUNED, {"latency": 1.5, "delta_new": 0.7})
    assert (p.tau_active, p.delta_new, p.latency) == (0.55, 0.7, 1.5)
    assert resolve(None, TUNED, {}).latency == PipelineParams().latency == 5.0


def test_diart_presets_ignore_the_bundle(caplog):
    assert resolve("dihard3", TUNED, {"latency": 1.0}) == PRESETS["dihard3"].replace(latency=1.0)
    with caplog.at_level(logging.WARNING):
        assert resolve(None, None, {"latency": 2.0}) == PRESETS["ami"].replace(latency=2.0)
    assert "no tuned presets" in caplog.text


def test_bad_bundle_preset_and_bad_name_are_one_line_errors():
    with pytest.raises(ParamsError, match="bundle's preset for latency 5 s is not valid.*edged-tune --write-bundle"):
        resolve(None, {5.0: {"tau_active": 7.0}}, {})
    with pytest.raises(ParamsError, match="choose one of bundle, ami"):
        resolve("best", TUNED, {})


@pytest.mark.parametrize("section, match", [
    ({}, "non-empty 'latencies'"),
    ({"latencies": {"fast": {}}}, "latency 'fast'"),
    ({"latencies": {"-1": {}}}, "latency '-1'"),
    ({"latencies": {"5": [1, 2]}}, "latency '5'"),
])
def test_malformed_presets_section(section, match, tmp_path):
    with pytest.raises(BundleError, match=match):
        parse_presets(section, tmp_path / MANIFEST_NAME)


def bundle_with_presets(bundle: Path, folder: Path, presets: dict | None) -> Path:
    """A copy of ``bundle`` (model files hard-linked) whose manifest carries ``presets``."""
    out = folder / "bundle"
    out.mkdir()
    for item in bundle.iterdir():
        if item.name != MANIFEST_NAME and item.is_file():
            try:
                os.link(item, out / item.name)
            except OSError:
                shutil.copy2(item, out / item.name)
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    manifest.pop("presets", None)
    if presets is not None:
        manifest["presets"] = presets
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    return out


def test_loader_reads_the_section(bundle, tmp_path):
    out = bundle_with_presets(bundle, tmp_path, {"latencies": {"5": TUNED[5.0], "0.5": TUNED[0.5]}, "source": "t"})
    b = load_bundle(out, variants=("int8",))
    assert list(b.presets.by_latency) == [0.5, 5.0] and b.presets.by_latency[5.0]["onset"] == 0.6
    assert b.presets.source == "t"


def test_diarize_uses_the_bundle_preset_then_config_then_set(bundle, data_dir, tmp_path):
    out = bundle_with_presets(bundle, tmp_path, {"latencies": {"5": TUNED[5.0]}})
    wav = data_dir / "falcon" / "falcon.wav"
    code = ("import sys, json; from edged.cli import build_parser, diarize_params; "
            "from edged.models.bundle import load_bundle; a = build_parser().parse_args(sys.argv[1:]); "
            "b = load_bundle(a.models, variants=('int8',)); "
            "print(json.dumps(diarize_params(a, b.presets and b.presets.by_latency).to_dict()))")

    def params(*extra: str) -> dict:
        proc = subprocess.run([sys.executable, "-c", code, "diarize", str(wav), "--models", str(out), *extra],
                              capture_output=True, text=True, cwd=REPO, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    assert params()["onset"] == 0.6
    config = tmp_path / "c.yaml"
    config.write_text("pipeline:\n  onset: 0.7\n  delta_new: 0.8\n")
    got = params("--config", str(config), "--set", "pipeline.delta_new=0.95")
    assert (got["onset"], got["delta_new"], got["tau_active"]) == (0.7, 0.95, 0.5)
    assert params("--preset", "ami")["tau_active"] == PRESETS["ami"].tau_active
    proc = subprocess.run([sys.executable, "-m", "edged.cli", "diarize", str(wav), "--models", str(out),
                           "--set", "mqtt.port=1", "--output", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode != 0 and "pipeline.KEY=VALUE only" in proc.stderr


def test_write_presets_merges_latencies_atomically_and_validates(bundle, tmp_path):
    from edged_export.errors import ExportError
    from edged_export.presets import write_presets

    out = bundle_with_presets(bundle, tmp_path, {"latencies": {"5": TUNED[5.0]}, "source": "shipped"})
    section = write_presets(out, {1.0: TUNED[1.0]}, "tuned here")
    assert list(section["latencies"]) == ["1", "5"] and section["source"] == "shipped; tuned here"
    assert load_bundle(out, variants=()).presets.by_latency[1.0]["tau_active"] == 0.55
    before = (out / MANIFEST_NAME).read_text()
    with pytest.raises(ExportError, match="latency 2 s is not valid"):
        write_presets(out, {2.0: {"tau_active": 3.0}}, "bad")
    assert (out / MANIFEST_NAME).read_text() == before  # nothing written
    assert not list(out.glob(".manifest-*"))
