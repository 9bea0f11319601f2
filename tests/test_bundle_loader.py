"""The edge loader refuses corrupt, truncated, missing and mismatched bundles, naming the file."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from edged.models.blocks import load_models
from edged.models.bundle import MANIFEST_NAME, MANIFEST_VERSION, BundleError, load_bundle


@pytest.fixture
def bundle_copy(bundle, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(bundle, dst)
    return dst


def _file(bundle, role="embedding", variant="int8"):
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    return bundle / manifest["models"][role][variant]["path"]


def test_loads_and_verifies(bundle_copy):
    bundle = load_bundle(bundle_copy)
    assert bundle.variants == ("fp32", "int8")
    assert bundle.segmentation.num_speakers == 3 and bundle.embedding.dim == 192
    assert bundle.model("embedding", "int8").path == _file(bundle_copy).resolve()


def test_corrupted_byte(bundle_copy):
    path = _file(bundle_copy)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"embedding\.int8\.onnx: sha256 .* does not match the manifest .*corrupt"):
        load_bundle(bundle_copy)


def test_truncated_file(bundle_copy):
    path = _file(bundle_copy, "segmentation", "fp32")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(BundleError, match=r"segmentation\.fp32\.onnx: size 1000 bytes, manifest says \d+ \(truncated"):
        load_bundle(bundle_copy)


def test_missing_file(bundle_copy):
    _file(bundle_copy, "segmentation", "int8").unlink()
    with pytest.raises(BundleError, match=r"segmentation\.int8\.onnx: model file is missing"):
        load_bundle(bundle_copy)


def test_manifest_from_another_version(bundle_copy):
    mpath = bundle_copy / MANIFEST_NAME
    manifest = json.loads(mpath.read_text())
    manifest["version"] = MANIFEST_VERSION + 1
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=rf"manifest version {MANIFEST_VERSION + 1}, this edged reads version {MANIFEST_VERSION}"):
        load_bundle(bundle_copy)


def test_manifest_missing_or_not_json(bundle_copy, tmp_path):
    (bundle_copy / MANIFEST_NAME).write_text("{ not json")
    with pytest.raises(BundleError, match="manifest is not valid JSON"):
        load_bundle(bundle_copy)
    with pytest.raises(BundleError, match="model bundle folder not found"):
        load_bundle(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="manifest missing"):
        load_bundle(tmp_path / "empty")


def test_manifest_lacking_fields(bundle_copy):
    mpath = bundle_copy / MANIFEST_NAME
    manifest = json.loads(mpath.read_text())
    del manifest["segmentation"]["frame_step"]
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="segmentation lacks frame_step"):
        load_bundle(bundle_copy)


def test_only_requested_variant_is_hashed(bundle_copy):
    _file(bundle_copy, "embedding", "fp32").unlink()
    bundle = load_bundle(bundle_copy, variants=("int8",))
    assert bundle.variants == ("int8",)
    with pytest.raises(BundleError, match="no fp32 embedding model in this bundle"):
        bundle.model("embedding", "fp32")


# --- the ONNX files against the manifest and the runtime ------------------------------------------
sys.path.insert(0, str(Path(__file__).parent))
from wrong_models import replace_model, segmentation_with_speakers  # noqa: E402


def test_models_open_and_pass_the_io_checks(bundle_copy):
    models = load_models(bundle_copy, "int8")
    assert models.bundle.model("segmentation", "int8").input_specs[0].shape == ("batch", 1, "samples")


def test_another_model_with_a_matching_checksum_is_refused_naming_the_file(bundle_copy):
    """The embedding model copied over the segmentation file, the manifest's size and sha256 updated."""
    target = replace_model(bundle_copy, "segmentation", "int8", _file(bundle_copy, "embedding", "int8"))
    with pytest.raises(BundleError) as err:
        load_models(bundle_copy, "int8")
    message = str(err.value)
    assert message.startswith(f"{target.resolve()}: inputs fbank, weights differ from the manifest's waveform")
    assert "re-export the bundle" in message and "\n" not in message


@pytest.mark.parametrize("fixed", [True, False], ids=["declared", "symbolic"])
def test_a_segmentation_model_with_7_speakers_instead_of_3_is_refused(bundle_copy, tmp_path, fixed):
    """Right names, 7 speakers: caught from the declared shape, or (symbolic) from a probe call."""
    wrong = segmentation_with_speakers(tmp_path / "seg7.onnx", 7, fixed)
    target = replace_model(bundle_copy, "segmentation", "int8", wrong)
    with pytest.raises(BundleError) as err:
        load_models(bundle_copy, "int8")
    message = str(err.value)
    assert message.startswith(f"{target.resolve()}: output activations float32[")
    if fixed:
        assert "float32[1, ?, 7] differs from the manifest's activations float32[?, ?, 3]" in message
    else:
        assert "float32[1, 8000, 7] on a probe input, edged needs activations float32[?, ?, 3]" in message


def test_check_models_fails_on_a_wrong_model_naming_it(bundle_copy, tmp_path):
    from edged.service.check import check_models
    from edged.settings import load_config

    target = replace_model(bundle_copy, "segmentation", "int8",
                           segmentation_with_speakers(tmp_path / "seg7.onnx", 7, fixed=False))
    config = load_config(None, [f"models.path={bundle_copy}"], environ={})
    with pytest.raises(BundleError, match=rf"^{target.resolve()}: output activations"):
        check_models(config)
